"""What a stage is, what it works on, and what it is told.

A **stage** is one kind of evidence about a listing photo (its whole view's vector, the screen's
verdict, the geometric verification, the marks found in it, …). Each has a ``name``, a
``version`` that is part of every cache and state key its output is filed under, the inputs
and earlier fields it ``needs``, the named fields it ``adds`` (those it ``records`` are stored
with the photo's evidence; those it ``reports`` also appear in the decision), and a ``gate`` that
decides whether it runs for a photo. Its output depends on its inputs and version only, so a
cached output is the same as a fresh one, and decisions do not depend on what a cache holds.

A **photo** (:class:`Photo`) carries the fields the stages have added so far, and makes its
**inputs** when a stage first asks for them: the decoded ``pixels`` (at the embedder's decode
size), its SIFT ``keypoints``, and its ``shape_pixels`` (the frame the mark-shape search reads).
A photo whose later stages all come from the cache is never decoded.

The **context** (:class:`Context`) is what every stage of one scan is told: the index, the
embedder, the cache, the scan's options, and what is derived from the index once (reference
features, registered marks, the shape search, the word reader).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from detector.images import ImageError, decode_image, read_image_bytes
from detector.profile import StageClock, timed
from detector.records import jsonable

if TYPE_CHECKING:

    from detector.cache import EmbeddingCache
    from detector.embedders import Embedder
    from detector.tables import ListingRow
    from index.store import ReferenceIndex

INPUTS = ("pixels", "keypoints", "shape_pixels")
"""What a photo makes on demand, for any stage that needs it."""


@dataclass
class Options:
    """The scan options stages read (each changes what runs, so each is part of a scan's identity)."""

    verify: bool = True
    screen: bool = False
    top_k: int = 5
    read_words: bool = True
    product_words: bool = True
    keep_vectors: bool = False
    allow_outside: bool = False


class Context:
    """What the stages of one scan (or one lookup) share."""

    def __init__(self, index: ReferenceIndex, embedder: Embedder, root: Path, options: Options, *,
                 cache: EmbeddingCache | None = None, clock: StageClock | None = None):
        self.index, self.embedder, self.root, self.options = index, embedder, Path(root), options
        self.cache, self.clock = cache, clock
        self.recent: dict[str, Any] = {}  # vectors of recently embedded photos, by content hash

    @cached_property
    def references(self):
        """The reference photos' local features, per brand on first use."""
        from detector.matches import ReferenceFeatures

        return ReferenceFeatures(self.index)

    @cached_property
    def gate_levels(self) -> dict[str, float] | None:
        """Each brand's first-stage level (``None``: some brand has none, every photo goes on)."""
        from detector.screening import gate_levels

        return gate_levels(self.index)

    @cached_property
    def screen_levels(self):
        """Each brand's first-stage level, what the whole view's search ranks against."""
        from detector.screening import screen_levels

        return screen_levels(self.index, self.gate_levels)

    @cached_property
    def marks(self) -> list:
        """Every brand's registered marks, ready to search for."""
        from detector.matches import index_marks

        return index_marks(self.index)

    @cached_property
    def marks_key(self) -> str:
        """A digest of the registered marks and their levels: what mark searches are cached under."""
        from detector.matches import marks_key

        return marks_key(self.index)

    @cached_property
    def shapes(self):
        """The shape search over the simple marks the brands put on their products."""
        from detector.mark_shapes import ShapeSearch
        from detector.matches import shape_levels

        return ShapeSearch(self.marks, shape_levels(self.index), shape_levels(self.index, "hull_level"))

    @cached_property
    def text(self):
        """The reader of text in photos, shared by the stages that read words."""
        from detector.text_reading import TextReader

        return TextReader()

    @cached_property
    def reader(self):
        """The reader of brand names in photos, where brands registered marks (``None`` otherwise)."""
        from detector.brand_words import WordReader

        brands = sorted({m.brand for m in self.marks})
        reader = WordReader(brands, self.text) if self.options.read_words and brands else None
        return reader if reader else None


@dataclass
class Photo:
    """One listing photo going through the stages: its row, the fields added so far, which stages
    ran for it, and its error (a photo with an error goes no further)."""

    row: ListingRow
    fields: dict[str, Any] = field(default_factory=dict)
    ran: dict[str, bool] = field(default_factory=dict)
    error: ImageError | None = None
    computed: bool = False  # whether the network ran for it (not all its views came from a cache)
    data: bytes | None = field(default=None, repr=False)  # the file's bytes, until decoded
    inputs: dict[str, Any] = field(default_factory=dict, repr=False)
    scratch: dict[str, Any] = field(default_factory=dict, repr=False)  # stages' working data within a batch

    @property
    def ok(self) -> bool:
        return self.error is None

    def decoded(self) -> bool:
        return "pixels" in self.inputs

    def input(self, name: str, ctx: Context) -> Any:
        """An input (one of :data:`INPUTS`), made on first use; :class:`ImageError` when the photo
        cannot be decoded."""
        if name not in self.inputs:
            if name == "pixels":
                data = self.data if self.data is not None else read_image_bytes(Path(self.fields["path"]))
                with timed(ctx.clock, "decode"):
                    self.inputs[name] = decode_image(data, draft=ctx.embedder.decode_size)
                self.data = None
            elif name == "keypoints":
                from detector.verify import extract_query

                image = self.input("pixels", ctx)
                with timed(ctx.clock, "keypoints"):
                    self.inputs[name] = extract_query(image)
            elif name == "shape_pixels":
                from detector.mark_shapes import photo_pixels

                self.inputs[name] = photo_pixels(self.input("pixels", ctx))
            else:
                raise KeyError(f"no input named {name!r}; inputs are {', '.join(INPUTS)}")
        return self.inputs[name]

    def release(self) -> None:
        """Drop the bytes, inputs and working data (a batch's photos are kept only while it runs)."""
        self.data = None
        self.inputs.clear()
        self.scratch.clear()


class Stage:
    """One kind of evidence. Subclasses set the class attributes and implement :meth:`run` (a
    stage run per photo, in the worker threads) or, with ``batched``, :meth:`run_batch` (once per
    batch on the calling thread: the network, the index search), with an optional per-photo
    :meth:`prepare` run in the worker threads first."""

    name: ClassVar[str]
    version: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()  # inputs (INPUTS) and fields of earlier stages
    adds: ClassVar[tuple[str, ...]] = ()  # the fields it adds
    records: ClassVar[tuple[str, ...]] = ()  # of those, the ones stored with the photo's evidence
    reports: ClassVar[tuple[str, ...]] = ()  # of those, the ones the decision carries (decision.evidence)
    batched: ClassVar[bool] = False
    stops: ClassVar[bool] = False  # it can end a photo's later stages (then no input is made ahead)

    def enabled(self, ctx: Context) -> bool:
        """Whether the stage runs at all in this scan (its options, what the index holds)."""
        return True

    def gate(self, photo: Photo, ctx: Context) -> bool:
        """Whether the stage runs for this photo (it can read the fields of earlier stages)."""
        return True

    def cache_key(self, photo: Photo, ctx: Context) -> str | None:
        """What the output is cached under beside the photo's content hash and the stage's name and
        version (every input other than the photo); ``None``: not cached."""
        return None

    def run(self, photo: Photo, ctx: Context) -> dict[str, Any]:
        """The fields this stage adds for one photo."""
        raise NotImplementedError

    def prepare(self, photo: Photo, ctx: Context) -> None:
        """Per-photo work for a batched stage, in a worker thread, before :meth:`run_batch`."""

    def run_batch(self, photos: list[Photo], ctx: Context) -> list[dict[str, Any]]:
        """The fields this stage adds for each photo of a batch, in order."""
        raise NotImplementedError

    def finish(self, photos: list[Photo], ctx: Context) -> None:
        """Once per batch, after every stage ran (keep what the batch computed)."""

    def load(self, cached: dict[str, Any]) -> dict[str, Any]:
        """The fields from their cached JSON values (a stage whose fields are typed rebuilds them)."""
        return cached

    def record(self, photo: Photo, ctx: Context) -> dict[str, Any]:
        """The recorded fields as JSON values."""
        return {name: jsonable(photo.fields.get(name)) for name in self.records}

    @property
    def key(self) -> str:
        """What the stage's cached outputs are filed under."""
        return f"{self.name}|{self.version}"

    def __repr__(self) -> str:
        return f"<stage {self.name} {self.version}>"


def run_cached(stage: Stage, photo: Photo, ctx: Context) -> dict[str, Any]:
    """The fields ``stage`` adds for ``photo``: from the cache where it holds them under the
    stage's name, version and :meth:`Stage.cache_key`, else run (and cached)."""
    key = stage.cache_key(photo, ctx) if ctx.cache is not None else None
    if key is not None:
        found, stored = ctx.cache.get_json(stage.key, photo.fields["digest"], key)
        if found and isinstance(stored, dict):
            return stage.load(stored)
    with timed(ctx.clock, stage.name):
        out = stage.run(photo, ctx)
    if key is not None:
        ctx.cache.put_json(stage.key, {(photo.fields["digest"], key): jsonable(out)})
    return out
