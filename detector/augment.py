"""Seller edits of a catalogue photo, generated at ``index build`` from the catalogue alone.

The first stage (:mod:`detector.stages.gate`) stops a photo whose whole view is far from every
reference. How far is too far differs per catalogue, so each brand's level is read off its own
reference photos edited the ways a listing edits them: cropped into, pasted small onto a
backdrop, turned, recoloured, blurred, recompressed. Nothing here reads a listing or any image
but the reference; the backdrops are generated. Each edit is drawn from a generator seeded by
the photo's content hash, so a rebuild makes the same edits.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

EDITS = 8
"""Edits made of each reference photo."""
EDITS_ID = f"edits-{EDITS}-v1"
"""What a set of edits is recorded under in the manifest (a change rebuilds the levels)."""


def _backdrop(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A generated backdrop: a flat colour, a two-colour gradient, or coloured noise, blurred."""
    w, h = size
    kind = rng.integers(3)
    if kind == 0:
        return Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    if kind == 1:
        a, b = rng.integers(0, 256, (2, 3)).astype(np.float32)
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        return Image.fromarray((a * (1 - t) + b * t).repeat(w, axis=1).astype(np.uint8))
    noise = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3)).astype(np.uint8)
    return Image.fromarray(noise).resize(size, Image.BILINEAR).filter(ImageFilter.GaussianBlur(3))


def _crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    keep = rng.uniform(0.45, 0.9)
    cw, ch = max(8, int(w * np.sqrt(keep))), max(8, int(h * np.sqrt(keep)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch))


def _paste(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    side = max(w, h)
    canvas = _backdrop(rng, (side, side))
    scale = rng.uniform(0.35, 0.75)
    small = image.resize((max(8, int(w * scale)), max(8, int(h * scale))), Image.BILINEAR)
    x = int(rng.integers(0, side - small.width + 1))
    y = int(rng.integers(0, side - small.height + 1))
    canvas.paste(small, (x, y))
    return canvas


def _turn(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    fill = tuple(int(c) for c in rng.integers(0, 256, 3))
    return image.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR, expand=True, fillcolor=fill)


def _finish(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Colour, light, blur, a mirror and JPEG recompression, each drawn independently."""
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.75, 1.25))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.75, 1.25))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    if rng.random() < 0.3:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=int(rng.integers(45, 90)))
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def seller_edits(image: Image.Image, digest: str, count: int = EDITS) -> list[Image.Image]:
    """``count`` edits of a reference photo, the same for the same photo (``digest``: its content
    hash): in turn a crop, a paste onto a backdrop, a turn, and a crop pasted and turned."""
    rng = np.random.default_rng(int(digest[:16], 16))
    image = image.convert("RGB")
    makers = (
        lambda im: _crop(im, rng),
        lambda im: _paste(im, rng),
        lambda im: _turn(im, rng),
        lambda im: _turn(_paste(_crop(im, rng), rng), rng),
    )
    return [_finish(makers[i % len(makers)](image), rng) for i in range(count)]
