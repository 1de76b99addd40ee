"""Brand marks: a logo is found on a product at another size, angle, colour and polarity, with
its box; photos without it find nothing."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from detector.demo import draw_product
from detector.marks import POLARITY, find_marks, prepare_mark
from detector.verify import extract, fit_layout


def logo(seed: int, colour=(200, 30, 40)) -> Image.Image:
    """A mark drawn in one colour on white: a few polygons and a ring, like a simple logo."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (400, 400), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        points = [tuple(p) for p in rng.uniform(60, 340, (int(rng.integers(3, 6)), 2))]
        draw.polygon(points, fill=colour)
    draw.ellipse((120, 120, 280, 280), outline=colour, width=18)
    return image


def on_product(mark: Image.Image, *, width: float, at=(0.3, 0.35), angle=0.0, invert=False,
               ink=(250, 250, 250), seed=5) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """A product photo with the mark printed on it, and the box (fractions) of the drawing."""
    scene = draw_product(seed, size=600).convert("RGB")
    shape = ImageOps.invert(mark.convert("L")).point(lambda v: 255 if v > 40 else 0)
    side = round(width * scene.width)
    shape = shape.resize((side, side)).rotate(angle, expand=True)
    colour = Image.new("RGB", shape.size, ink if invert else (30, 60, 160))
    x, y = round(at[0] * scene.width), round(at[1] * scene.height)
    if invert:  # a white mark on a dark patch of the product
        scene.paste((20, 20, 30), (x, y, x + shape.width, y + shape.height))
    scene.paste(colour, (x, y), shape)
    left, top, right, bottom = shape.getbbox()  # where the drawing itself went
    return scene, ((x + left) / 600, (y + top) / 600, (x + right) / 600, (y + bottom) / 600)


def overlap(a, b) -> float:
    """Intersection over union of two boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def search(photo: Image.Image, marks):
    return find_marks(extract(photo), photo.size, marks)


def test_the_polarity_permutation_is_the_negative_photo():
    drawn = logo(1)
    plain, negative = extract(drawn), extract(ImageOps.invert(drawn))
    permuted = type(plain)(plain.points, plain.descriptors[:, POLARITY], plain.thumbnail)
    assert fit_layout(negative, plain)[0] < 4 <= fit_layout(negative, permuted)[0]


def test_a_mark_is_found_in_another_colour_size_and_angle_with_its_box():
    marks = [prepare_mark(logo(1), "Acme", "acme.png"), prepare_mark(logo(2), "Borel", "borel.png")]
    for kwargs in ({"width": 0.3}, {"width": 0.2, "angle": 25, "at": (0.5, 0.5)}):
        photo, where = on_product(logo(1), **kwargs)
        found = search(photo, marks)
        assert [s.brand for s in found] == ["Acme"], kwargs
        assert found[0].inliers >= 4 and not found[0].inverted
        assert overlap(found[0].box, where) > 0.5, (found[0].box, where)


def test_a_white_mark_on_a_dark_product_is_found_inverted():
    marks = [prepare_mark(logo(1), "Acme", "acme.png")]
    photo, where = on_product(logo(1), width=0.3, invert=True)
    found = search(photo, marks)
    assert found and found[0].brand == "Acme" and found[0].inverted
    assert overlap(found[0].box, where) > 0.5


def test_photos_without_the_mark_find_nothing():
    marks = [prepare_mark(logo(1), "Acme", "acme.png")]
    assert search(draw_product(5, size=600), marks) == []
    other, _ = on_product(logo(3), width=0.3)
    assert search(other, marks) == []
    assert search(Image.new("RGB", (300, 300), "white"), marks) == []


def test_transparent_marks_are_flattened_on_white():
    drawn = logo(1)
    alpha = ImageOps.invert(drawn.convert("L")).point(lambda v: 255 if v > 40 else 0)
    transparent = drawn.convert("RGBA")
    transparent.putalpha(alpha)
    marks = [prepare_mark(transparent, "Acme", "acme.png")]
    photo, _ = on_product(logo(1), width=0.3)
    assert [s.brand for s in search(photo, marks)] == ["Acme"]
