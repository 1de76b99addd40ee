"""The one decode path: odd formats are converted, hostile files are refused with a clear reason."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from detector.images import (
    ImageError,
    decode_image,
    load_image,
    read_image_bytes,
    resolve_image_path,
)
from tests.conftest import png_with_declared_size


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    upright = Image.new("RGB", (40, 20), (255, 0, 0))
    upright.paste((0, 0, 255), (0, 0, 20, 20))  # blue on the left
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes: 20x40
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    decoded = decode_image(encode(stored, "JPEG", exif=exif, quality=95))
    assert decoded.size == (40, 20)
    left, right = np.asarray(decoded)[10, 5], np.asarray(decoded)[10, 35]
    assert left[2] > 200 and left[0] < 60  # blue is back on the left
    assert right[0] > 200 and right[2] < 60


def test_palette_with_transparency_is_flattened_on_white():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0] * 256)
    data = encode(image, "PNG", transparency=0)
    decoded = decode_image(data)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((3, 3)) == (255, 255, 255)


def test_rgba_is_flattened_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    decoded = decode_image(encode(image, "PNG"))
    assert decoded.getpixel((1, 1)) == (255, 255, 255)
    assert decoded.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_greyscale_and_cmyk_become_rgb(mode):
    image = Image.new(mode, (16, 16), 128 if mode == "L" else (0, 255, 255, 0))
    decoded = decode_image(encode(image, "JPEG"))
    assert decoded.mode == "RGB" and decoded.size == (16, 16)
    if mode == "CMYK":
        r, g, b = decoded.getpixel((8, 8))
        assert r > 200 and g < 60 and b < 60  # magenta + yellow ink = red


def test_sixteen_bit_png_keeps_its_brightness():
    values = np.full((8, 8), 40000, dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(values), "PNG"))
    assert decoded.mode == "RGB"
    assert abs(decoded.getpixel((2, 2))[0] - round(40000 * 255 / 65535)) <= 1


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    r, g, b = decode_image(buffer.getvalue()).getpixel((5, 5))
    assert r > 200 and g < 50


def test_webp_decodes():
    decoded = decode_image(encode(Image.new("RGB", (12, 12), (0, 128, 0)), "WEBP"))
    assert decoded.size == (12, 12)


@pytest.mark.parametrize("size", [(1, 1), (20000, 20)])
def test_extreme_shapes_decode(size):
    decoded = decode_image(encode(Image.new("RGB", size, (9, 9, 9)), "PNG"))
    assert decoded.size == size


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageError) as caught:
        decode_image(png_with_declared_size(100_000, 100_000))
    assert caught.value.code == "too_many_pixels"
    assert "decompression-bomb" in str(caught.value)


def test_pixel_limit_is_configurable():
    with pytest.raises(ImageError, match="over the 100 limit"):
        decode_image(encode(Image.new("RGB", (20, 20)), "PNG"), max_pixels=100)


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"", "empty_file"),
        (b"this is a text file, not a picture\n", "not_an_image"),
    ],
)
def test_non_images_are_refused(payload, code):
    with pytest.raises(ImageError) as caught:
        decode_image(payload)
    assert caught.value.code == code


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_refused(fmt):
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), fmt)
    with pytest.raises(ImageError) as caught:
        decode_image(data[: len(data) // 2])
    assert caught.value.code == "corrupt"


def test_corrupt_jpeg_body_is_refused():
    data = bytearray(encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG"))
    data[200:] = b"\x00" * (len(data) - 200)
    with pytest.raises(ImageError):
        decode_image(bytes(data))


def test_jpeg_draft_decodes_large_photos_smaller_but_not_below_the_request():
    data = encode(Image.new("RGB", (2000, 1600), (50, 60, 70)), "JPEG")
    decoded = decode_image(data, draft=448)
    assert decoded.size[0] >= 448 and decoded.size[1] >= 448 and decoded.size[0] < 2000


def test_path_trust_boundary(tmp_path):
    root = tmp_path / "dump"
    root.mkdir()
    Image.new("RGB", (4, 4)).save(root / "ok.png")
    outside = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    (root / "escape.png").symlink_to(outside)
    (root / "loop.png").symlink_to(root / "loop.png")

    assert resolve_image_path("ok.png", root) == (root / "ok.png").resolve()
    for ref, code in [
        ("../secret.png", "path_outside"),
        ("../../etc/passwd", "path_outside"),
        (str(outside), "path_outside"),
        ("escape.png", "path_outside"),
        ("loop.png", "symlink_loop"),
        ("missing.png", "missing_file"),
        ("", "missing_image"),
    ]:
        with pytest.raises(ImageError) as caught:
            resolve_image_path(ref, root)
        assert caught.value.code == code, ref
    assert resolve_image_path(str(outside), root, allow_outside=True) == outside.resolve()
    assert resolve_image_path("escape.png", root, allow_outside=True) == outside.resolve()


def test_directories_and_oversized_files_are_refused(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageError) as caught:
        resolve_image_path("folder.jpg", tmp_path)
    assert caught.value.code == "not_a_file"
    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 2000)
    with pytest.raises(ImageError) as caught:
        read_image_bytes(big, max_bytes=1000)
    assert caught.value.code == "file_too_large"


def test_load_image_reads_a_real_file(tmp_path):
    Image.new("RGB", (30, 20), (10, 200, 30)).save(tmp_path / "a.png")
    assert load_image("a.png", tmp_path).size == (30, 20)
    assert os.path.exists(tmp_path / "a.png")
