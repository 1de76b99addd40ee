"""The records the evidence side hands on, read by name: what a mark sighting, a candidate
reference and a photo's evidence hold, and the packing of a photo's vector for the scan state
and the history. The stages make them (detector/stages/), the scan state stores them, and the
policy and the history read them; none of those defines its own copy."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np

from detector.verify import Outcome
from index.search import Hit


class Sighting(NamedTuple):
    """A mark found in a photo: keypoints in its layout, whether it was found in the other
    polarity, its box (x0, y0, x1, y1) as fractions of the photo's width and height, and, for a
    mark found by its shape (:mod:`detector.mark_shapes`; ``inliers`` 0), the correlation. A brand's
    name read in the photo (:mod:`detector.brand_words`) is a sighting too: ``found_by`` ``word``,
    ``name`` the text read, ``score`` the reader's confidence."""

    brand: str
    name: str
    inliers: int
    inverted: bool
    box: tuple[float, float, float, float]
    score: float | None = None
    found_by: str | None = None  # "word" for a brand word; otherwise keypoints (score None) or shape

    @property
    def how(self) -> str:
        """``keypoints``, ``shape`` or ``word``."""
        return self.found_by or ("keypoints" if self.score is None else "shape")

    @classmethod
    def from_record(cls, record: dict) -> Sighting:
        """A sighting from its JSON values (the box comes back as a list)."""
        return cls(**{**record, "box": tuple(record["box"])})


@dataclass
class Candidate:
    """A reference product the listing photo resembles, with the brand's calibrated threshold."""

    brand: str
    product_id: str
    similarity: float
    calibrated_threshold: float
    product_inliers: int | None = None  # the brand's calibrated keypoints for a new photo (index build)
    reference_image: str | None = None
    reference_path: str | None = None
    price: float | None = None
    currency: str | None = None
    title: str = ""
    inliers: int | None = None  # matching keypoints from geometric verification; None if not verified
    alignment: float | None = None  # share of the reference's edges found in the photo once aligned
    unique: int | None = None  # of those keypoints, the ones that favour this reference over the other candidates
    colour: float | None = None  # colour agreement once aligned, 0..1 (see detector.verify.Outcome)
    region: list | None = None  # where the reference lands in the photo: four [x, y] corners as fractions
    sharpness: float | None = None  # share of the reference's edges on the photo's to the pixel, once aligned
    residual: float | None = None  # median pixels between matched keypoints and where the rigid fit puts them
    words: list[str] | None = None  # the words printed on the reference photo (index build); None: not read


# --- a photo's vector, packed -------------------------------------------------------------------


def pack_vector(vector: np.ndarray) -> str:
    """A unit vector as compact text: float16, base64 (3.4 KB for 1280-d)."""
    return base64.b64encode(np.asarray(vector, np.float16).tobytes()).decode("ascii")


def packed_bytes(text: str) -> bytes:
    """The float16 bytes inside a :func:`pack_vector` text."""
    return base64.b64decode(text)


def unit_vector(raw: bytes) -> np.ndarray:
    """A float32 unit vector from float16 bytes."""
    vector = np.frombuffer(raw, np.float16).astype(np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def unpack_vector(text: str) -> np.ndarray:
    """The float32 unit vector :func:`pack_vector` wrote."""
    return unit_vector(packed_bytes(text))


# --- a photo's evidence ---------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """A stage's field as JSON values: named tuples and dataclasses become objects by field name,
    tuples become lists, numpy scalars plain numbers."""
    if hasattr(value, "_asdict"):
        return {key: jsonable(item) for key, item in value._asdict().items()}
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class Evidence:
    """One listing row and what the stages found for its photo. ``stages`` holds, by stage name,
    each registered stage's ``version``, whether it ``ran`` for this photo, and the fields it
    records (:data:`detector.stages.STAGES`); ``error`` says why a row has no evidence
    (``error_code`` names it); ``notes`` are the table reader's remarks as ``[code, text]``."""

    row: int
    listing_id: str
    line: int
    seller_id: str | None
    title: str
    price: float | None
    currency: str | None
    image: str
    notes: list[list[str]] = field(default_factory=list)
    error: str | None = None
    error_code: str | None = None
    stages: dict[str, dict] = field(default_factory=dict)

    def as_record(self) -> dict:
        """The record as JSON values (what the scan state and the Ray engine carry)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_record(cls, record: dict) -> Evidence:
        return cls(**record)

    def get(self, name: str, default: Any = None) -> Any:
        """A recorded field by name, from whichever stage ran and recorded it."""
        for outputs in self.stages.values():
            if outputs.get("ran") and name in outputs:
                return outputs[name]
        return default

    def ran(self, stage: str) -> bool:
        """Whether the stage named ``stage`` ran for this photo."""
        return bool(self.stages.get(stage, {}).get("ran"))

    def versions(self) -> dict[str, str]:
        """Each stage's version as recorded with this row."""
        return {name: outputs["version"] for name, outputs in self.stages.items()}

    @property
    def digest(self) -> str | None:
        return self.get("digest")

    @property
    def path(self) -> str | None:
        return self.get("path")

    @property
    def vector(self) -> str | None:
        """The whole view's packed vector (:func:`pack_vector`), kept when the scan has a history."""
        return self.get("vector")

    def hits(self) -> list[Hit]:
        """The nearest references found, then those of brands whose mark is in the photo."""
        return [Hit(**hit) for hit in [*self.get("hits", []), *self.get("mark_hits", [])]]

    def outcomes(self) -> dict[tuple[str, int], Outcome]:
        """The geometric evidence of each verified hit, by (brand, row)."""
        return {(o["brand"], o["row"]): Outcome(**{k: v for k, v in o.items() if k not in ("brand", "row")})
                for o in self.get("outcomes", [])}

    def words_read(self) -> list[str] | None:
        """The words read in the photo where siblings were in play (``None``: not read)."""
        return self.get("words_read")

    def sightings(self) -> list[Sighting]:
        """The registered marks (and brand names) found in the photo."""
        found = [*self.get("mark_sightings", []), *self.get("shape_sightings", []), *self.get("word_sightings", [])]
        return [Sighting.from_record(s) for s in found]

    @property
    def screened_out(self) -> bool:
        """Whether the first stage stopped this photo."""
        return self.ran("screen") and self.get("go_on") is False

    def reported(self) -> dict[str, dict]:
        """The fields stages report into the decision, by stage name (see ``Stage.reports``)."""
        return {name: {key: outputs.get(key) for key in outputs["reports"]} for name, outputs in self.stages.items()
                if outputs.get("ran") and outputs.get("reports")}
