"""A self-contained demo data set: procedurally drawn "product photos" for three brands, and a
listing dump of seller edits of them (crops, captions, recolouring, re-compression), look-alike
other products and unrelated pictures, with prices and sellers that make some listings fakes.

Everything is drawn from a fixed seed, so the demo needs no download and gives the same data on
every machine.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

BRANDS = ("Aurora", "Bellmont", "Corvane")
PRODUCTS_PER_BRAND = 4
SIZE = 320


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def draw_surface(seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A photo of something no brand protects: a tinted surface (grass, sand, fabric) of noise at
    five scales, like most of a nightly dump and unlike any product shot."""
    rng = np.random.default_rng(seed)
    w, h = size
    field = np.zeros((h, w, 3))
    for cells in (4, 8, 16, 32, 64):
        small = rng.normal(0, 1, (max(2, h * cells // w), cells, 3))
        grey = ((small - small.min()) / (np.ptp(small) + 1e-9) * 255).astype(np.uint8)
        field += np.asarray(Image.fromarray(grey).resize((w, h), Image.BICUBIC), float) / cells ** 0.5
    field = (field - field.min()) / np.ptp(field) - 0.5
    pixels = rng.integers(40, 200, 3) + rng.integers(-60, 60, 3) * field * 2 + field * 120
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_product(seed: int, size: int = SIZE) -> Image.Image:
    """A distinctive synthetic product shot: a patterned object on a soft studio backdrop."""
    rng = np.random.default_rng(seed)
    top, bottom = np.array(_colour(rng)), np.array(_colour(rng))
    ramp = np.linspace(0, 1, size)[:, None, None]
    backdrop = (top * (1 - ramp) + bottom * ramp) * 0.35 + 150
    image = Image.fromarray(np.broadcast_to(backdrop, (size, size, 3)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    cx, cy = size / 2 + rng.uniform(-20, 20), size / 2 + rng.uniform(-20, 20)
    body = []
    for k in range(int(rng.integers(5, 10))):
        angle = 2 * math.pi * k / 9 + rng.uniform(-0.3, 0.3)
        radius = rng.uniform(0.22, 0.42) * size
        body.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    draw.polygon(body, fill=_colour(rng), outline=(20, 20, 20), width=3)
    for _ in range(int(rng.integers(6, 14))):
        x, y = rng.uniform(0.2, 0.8, 2) * size
        r = rng.uniform(0.03, 0.12) * size
        shape = rng.integers(0, 3)
        box = (x - r, y - r, x + r, y + r)
        if shape == 0:
            draw.ellipse(box, fill=_colour(rng))
        elif shape == 1:
            draw.rectangle(box, fill=_colour(rng), outline=_colour(rng), width=2)
        else:
            draw.line((x - r, y - r, x + r, y + r), fill=_colour(rng), width=int(rng.integers(3, 9)))
    stripe = _colour(rng)
    for k in range(int(rng.integers(3, 7))):
        y = cy - 40 + k * 14
        draw.line((cx - 60, y, cx + 60, y + rng.uniform(-10, 10)), fill=stripe, width=4)
    return image.filter(ImageFilter.SMOOTH)


def _caption(image: Image.Image, text: str) -> Image.Image:
    out = image.copy()
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, out.height - 40, out.width, out.height), fill=(0, 0, 0))
    draw.text((10, out.height - 32), text, fill=(255, 255, 0))
    return out


EDITS = {
    "crop": lambda im: im.crop((30, 25, im.width - 20, im.height - 35)).resize((300, 300)),
    "caption": lambda im: _caption(im, "BEST PRICE - FREE SHIPPING"),
    "recolour": lambda im: ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.15)).enhance(0.6),
    "flip": lambda im: ImageOps.mirror(im),
    "pad": lambda im: ImageOps.expand(im.resize((260, 260)), border=40, fill=(255, 255, 255)),
    "small": lambda im: im.resize((150, 150)),
}


@dataclass
class DemoData:
    """Paths of the generated demo tables."""

    folder: Path
    catalog: Path
    authorized: Path
    listings: Path
    truth: Path


def make_demo_dataset(folder: Path) -> DemoData:
    """Write the demo catalogue, authorised sellers, listings and truth under ``folder``."""
    folder = Path(folder)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "listings").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    catalog, products = [], []
    for b, brand in enumerate(BRANDS):
        for p in range(PRODUCTS_PER_BRAND):
            product_id = f"{brand[:3].upper()}-{p:03d}"
            image = draw_product(1000 + 10 * b + p)
            rel = f"refs/{product_id}.jpg"
            image.save(folder / rel, "JPEG", quality=92)
            price = float(round(rng.uniform(80, 900), 2))
            catalog.append([brand, product_id, rel, price, "USD", f"{brand} {product_id} original"])
            products.append((brand, product_id, image, price))
    authorized = [[brand, f"{brand.lower()}-official"] for brand in BRANDS]

    listings, truth = [], []

    def add(kind: str, image: Image.Image, seller: str, title: str, price: float, flag: int, brand="", pid=""):
        listing_id = f"D{len(listings):03d}"
        rel = f"listings/{listing_id}.jpg"
        image.convert("RGB").save(folder / rel, "JPEG", quality=int(rng.integers(45, 90)))
        listings.append([listing_id, seller, title, f"{price:.2f}", "USD", rel])
        truth.append([listing_id, flag, kind, brand, pid])

    edits = list(EDITS.values())
    for i, (brand, product_id, image, price) in enumerate(products):
        edit = edits[i % len(edits)]
        add("copy_cheap_rogue", edit(image), f"shop-{i:03d}", f"{brand} look {product_id} replica AAA",
            price * rng.uniform(0.1, 0.3), 1, brand, product_id)
        add("authorized_fullprice", edits[(i + 1) % len(edits)](image), f"{brand.lower()}-official",
            f"{brand} {product_id}", price * rng.uniform(0.9, 1.1), 0, brand, product_id)
        if i % 2 == 0:
            add("copy_fullprice_rogue", edits[(i + 2) % len(edits)](image), f"outlet-{i:03d}",
                f"{brand} {product_id} genuine", price * rng.uniform(0.8, 1.0), 1, brand, product_id)
    for j in range(8):  # half of them drawn like products, half the surfaces most of a night's photos are like
        picture = draw_product(5000 + j) if j < 4 else draw_surface(5000 + j)
        add("unrelated_cheap", picture, f"seller-{j:03d}", "handmade item", rng.uniform(5, 40), 0)
    with open(folder / "catalog.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["brand", "product_id", "image", "price", "currency", "title"], *catalog])
    with open(folder / "authorized.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["brand", "seller_id"], *authorized])
    with open(folder / "listings.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["listing_id", "seller_id", "title", "price", "currency", "image"], *listings])
    with open(folder / "truth.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["listing_id", "should_flag", "kind", "brand", "product_id"], *truth])
    return DemoData(folder, folder / "catalog.csv", folder / "authorized.csv", folder / "listings.csv",
                    folder / "truth.csv")
