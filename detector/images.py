"""The one decode path for every image: path trust boundary, size limits, EXIF, modes, frames."""

from __future__ import annotations

import errno
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detector.errors import UserError

DEFAULT_MAX_PIXELS = 40_000_000
"""Images declaring more pixels than this are refused before decoding (decompression-bomb guard)."""

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Files larger than this are refused before they are read."""

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


ERROR_CODES = {
    "bad_row": "the listing's row is unusable (no listing_id, no image path, invalid JSON, …)",
    "missing_image": "the row names no image",
    "path_outside": "the image path is absolute or leads outside the table's folder (see --allow-outside-paths)",
    "missing_file": "the image file does not exist",
    "symlink_loop": "the image path is a symlink loop",
    "not_a_file": "the image path is not a regular file",
    "unreadable": "the image file cannot be opened or read",
    "file_too_large": "the image file is over the size limit (64 MiB)",
    "empty_file": "the image file is empty",
    "not_an_image": "the file is not a recognised image format",
    "corrupt": "the image is corrupt or truncated",
    "too_many_pixels": "the image declares too many pixels (decompression-bomb guard)",
    "out_of_memory": "decoding the image ran out of memory",
    "decode_failed": "processing the image failed unexpectedly",
    "analysis_failed": "comparing the decoded image with the references or marks failed unexpectedly",
}
"""Every ``error_code`` a decision can carry, and what it means."""


class ImageError(UserError):
    """An image that cannot be used; ``code`` (one of :data:`ERROR_CODES`) is a stable short
    reason, the message says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def resolve_image_path(ref: str | None, root: Path, *, allow_outside: bool = False) -> Path:
    """Resolve an image path from a table against the table's folder, enforcing the trust boundary.

    Relative paths are taken from ``root``. Absolute paths, and paths that resolve (symlinks
    included) outside ``root``, are refused unless ``allow_outside`` is set.
    """
    if ref is None or not str(ref).strip():
        raise ImageError("missing_image", "no image path given")
    ref = str(ref).strip()
    candidate = Path(ref)
    if candidate.is_absolute() and not allow_outside:
        raise ImageError(
            "path_outside",
            f"absolute image path {ref!r} refused (pass --allow-outside-paths to trust it)",
        )
    root = root.resolve()
    if not allow_outside and not Path(os.path.normpath(root / candidate)).is_relative_to(root):
        raise ImageError(
            "path_outside",
            f"image path {ref!r} leads outside {root} (pass --allow-outside-paths to trust it)",
        )
    try:
        resolved = (root / candidate).resolve(strict=True)
    except FileNotFoundError:
        raise ImageError("missing_file", f"image file not found: {ref}") from None
    except RuntimeError:  # Python < 3.13 reports symlink loops this way
        raise ImageError("symlink_loop", f"image path {ref!r} is a symlink loop") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError("symlink_loop", f"image path {ref!r} is a symlink loop") from None
        raise ImageError("unreadable", f"cannot open image {ref!r}: {exc.strerror or exc}") from None
    if not allow_outside and not resolved.is_relative_to(root):
        raise ImageError(
            "path_outside",
            f"image path {ref!r} points outside {root} (pass --allow-outside-paths to trust it)",
        )
    if not resolved.is_file():
        raise ImageError("not_a_file", f"image path {ref!r} is not a regular file")
    return resolved


def read_image_bytes(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read an image file whole, refusing empty and oversized files."""
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            raise ImageError("file_too_large", f"image file is {size:,} bytes, over the {max_bytes:,} limit")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError("unreadable", f"cannot read image: {exc.strerror or exc}") from None
    if not data:
        raise ImageError("empty_file", "image file is empty (0 bytes)")
    return data


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None) -> Image.Image:
    """Decode image bytes into an upright 8-bit RGB picture.

    EXIF orientation is applied; palette and alpha images are flattened on white; greyscale,
    CMYK and 16-bit images are converted; animated images give their first frame. ``draft``
    lets JPEG decode at a reduced scale that is still at least ``draft`` pixels on each side.
    Raises :class:`ImageError` with a specific code for anything unusable.
    """
    if not data:
        raise ImageError("empty_file", "image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("too_many_pixels", "image declares too many pixels (decompression-bomb guard)") from None
    except UnidentifiedImageError:
        raise ImageError("not_an_image", "file is not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("corrupt", f"image header is corrupt: {exc}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError("corrupt", f"image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            "too_many_pixels",
            f"image declares {width}x{height} = {width * height:,} pixels, over the {max_pixels:,} limit"
            " (decompression-bomb guard)",
        )
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        if draft and image.format == "JPEG":
            image.draft("RGB", (draft, draft))
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError("corrupt", f"image data is corrupt or truncated: {exc}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, flattening transparency on white."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max()) if values.size else 0.0
        if image.mode == "F":
            scale = 255.0 if peak <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0 if peak > 255 else 1.0
        image = Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "L" and "transparency" in image.info:
        image = image.convert("LA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def load_image(ref: str, root: Path, *, allow_outside: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Resolve, read and decode one image path from a table (the lookup and build convenience)."""
    path = resolve_image_path(ref, root, allow_outside=allow_outside)
    return decode_image(read_image_bytes(path), max_pixels=max_pixels)
