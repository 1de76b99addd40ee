#!/usr/bin/env python3
"""Build a labelled brand-mark benchmark in public-logo's format from logo files, product drawings
and background photos: a held-out check of the mark search on other logos and other products.

    python scripts/make_logo_bench.py --logos ICONS_DIR --products P1.png,P2.png,... \\
        --backgrounds DIR --protect apple,ubuntu,... --others audi,bmw,... OUT_DIR [--seed 0]

ICONS_DIR holds one logo per brand, ``<slug>.svg`` drawn as a single shape, or ``<slug>.png`` (its
dark opaque pixels are the drawing). The simple-icons npm package's ``icons/`` folder is such a
folder, and its ``data/simple-icons.json``, found beside it, gives each brand's colour. Products are drawings with transparency (Debian's openclipart-png
has many). Without internet, beyond the package registries:

    npm pack simple-icons && tar xzf simple-icons-*.tgz          # package/icons, package/data
    apt-get download openclipart-png && dpkg-deb -x openclipart-png*.deb debs
    pip install cairosvg                                           # renders the SVGs

Each protected brand registers its mark (``marks/<slug>.png``, the brand colour on white) and
sells three of the product types, its catalogue photo showing the mark. Listings, 24 of each kind
(the kinds and their truth are public-logo's): a new photo of one of the brand's product types in
another colourway, the mark in another colour (white on dark, black, the brand's or a random
colour), resized, moved, rotated and seen at a slight angle, on a background photo, sold cheap or
at full price by a seller the brand does not authorise (should flag), or at full price by one it
does (should not); and the same product types carrying another company's logo, or none (should
not flag).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

KINDS = (("newphoto_cheap_rogue", 1), ("newphoto_fullprice_rogue", 1), ("authorized_fullprice", 0),
         ("other_logo_same_product", 0), ("no_logo_same_product", 0))
PER_KIND = 24
SIDE = 512


def logo_file(folder: Path, slug: str) -> Path | None:
    """``<slug>.svg``, else ``<slug>.png``, in ``folder``."""
    return next((folder / f"{slug}{ext}" for ext in (".svg", ".png") if (folder / f"{slug}{ext}").is_file()), None)


def render(path: Path, colour: str, width: int) -> Image.Image:
    """The logo as an RGBA picture ``width`` pixels wide, filled with ``colour`` (#rrggbb): an SVG
    drawn as one shape (rendered by cairosvg), or a PNG whose drawing is its opaque, dark pixels."""
    if path.suffix == ".svg":
        import cairosvg

        text = path.read_text(encoding="utf-8").replace("<svg ", f'<svg fill="{colour}" ', 1)
        return Image.open(io.BytesIO(cairosvg.svg2png(bytestring=text.encode(), output_width=width))).convert("RGBA")
    with Image.open(path) as picture:
        picture = picture.convert("RGBA")
    grey = np.asarray(picture.convert("L"), np.float32)
    shape = np.where((np.asarray(picture.getchannel("A")) > 127) & (grey < 200), 255, 0).astype(np.uint8)
    drawn = Image.new("RGBA", picture.size, colour)
    drawn.putalpha(Image.fromarray(shape))
    return drawn.resize((width, max(1, round(picture.height * width / picture.width))), Image.LANCZOS)


def colours(icons: Path) -> dict[str, str]:
    """Each brand's colour from simple-icons' data file beside ``icons``, by slug."""
    data = icons.parent / "data" / "simple-icons.json"
    if not data.is_file():
        return {}
    entries = json.loads(data.read_text(encoding="utf-8"))
    entries = entries if isinstance(entries, list) else entries.get("icons", [])
    return {e.get("slug", ""): "#" + e["hex"] for e in entries if "hex" in e}


def legible(colour: str) -> str:
    """The brand colour, or black where it is too light to draw on white (Sony's is #FFFFFF)."""
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 220 else colour


def recolour(product: Image.Image, rng: random.Random) -> Image.Image:
    """Another colourway: the drawing's hues turned and its saturation scaled, alpha kept."""
    import cv2

    array = np.asarray(product.convert("RGBA"))
    hsv = cv2.cvtColor(np.ascontiguousarray(array[..., :3]), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.random() * 180) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.4), 0, 255)
    rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return Image.fromarray(np.dstack([rgb, array[..., 3]]), "RGBA")


def with_logo(product: Image.Image, logo: Image.Image | None, share: float, angle: float, rng: random.Random,
              centred: bool = False) -> Image.Image:
    """The product with ``logo`` printed on it: ``share`` of its width (less where the product is
    too narrow), at a random place the whole mark fits on the product (its widest place when
    ``centred``), turned by ``angle`` and slanted a little; nothing is drawn outside the product."""
    import cv2

    product = product.copy()
    if logo is None:
        return product
    alpha = np.asarray(product.getchannel("A")) > 127
    room = cv2.distanceTransform(alpha.astype(np.uint8), cv2.DIST_L2, 5)
    width = max(8, min(round(share * product.width), round(1.6 * room.max())))
    mark = logo.resize((width, max(1, round(logo.height * width / logo.width))), Image.LANCZOS)
    mark = mark.rotate(angle, expand=True, resample=Image.BICUBIC)
    slant = rng.uniform(-0.15, 0.15)
    mark = mark.transform(mark.size, Image.AFFINE, (1, slant, -slant * mark.height / 2, 0, 1, 0), Image.BICUBIC)
    fits = np.argwhere(room >= 0.8 * room.max() if centred else room >= 0.5 * max(mark.size) * 0.8)
    if not len(fits):
        fits = np.argwhere(room >= room.max())
    y, x = fits[rng.randrange(len(fits))]
    layer = Image.new("RGBA", product.size, (0, 0, 0, 0))
    layer.paste(mark, (int(x) - mark.width // 2, int(y) - mark.height // 2), mark)
    inside = np.minimum(np.asarray(layer.getchannel("A")), np.asarray(product.getchannel("A")))
    layer.putalpha(Image.fromarray(inside))
    product.alpha_composite(layer)
    return product


def scene(product: Image.Image, background: Image.Image | None, rng: random.Random, fill: float) -> Image.Image:
    """The product on a SIDE x SIDE backdrop (a crop of ``background``, or white), ``fill`` of it."""
    if background is None:
        canvas = Image.new("RGB", (SIDE, SIDE), "white")
    else:
        canvas = ImageOps.fit(background.convert("RGB"), (SIDE, SIDE), centering=(rng.random(), rng.random()))
    scale = fill * SIDE / max(product.size)
    shown = product.resize((max(1, round(product.width * scale)), max(1, round(product.height * scale))), Image.LANCZOS)
    x = rng.randint(0, SIDE - shown.width) if background is not None else (SIDE - shown.width) // 2
    y = rng.randint(0, SIDE - shown.height) if background is not None else (SIDE - shown.height) // 2
    canvas.paste(shown, (x, y), shown)
    return canvas


def ink(rng: random.Random, brand_colour: str) -> str:
    """The colour a listing prints the mark in."""
    choice = rng.random()
    if choice < 0.3:
        return brand_colour
    if choice < 0.5:
        return "#ffffff"
    if choice < 0.7:
        return "#111111"
    return "#%02x%02x%02x" % tuple(rng.randrange(256) for _ in range(3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--logos", type=Path, required=True, help="folder of <slug>.svg or <slug>.png logo drawings")
    parser.add_argument("--products", required=True, help="comma-separated product drawings (PNG with transparency)")
    parser.add_argument("--backgrounds", type=Path, required=True, help="folder of background photos")
    parser.add_argument("--protect", required=True, help="comma-separated slugs of the protected brands")
    parser.add_argument("--others", required=True, help="comma-separated slugs of unprotected companies' logos")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    protect, others = args.protect.split(","), args.others.split(",")
    palette = colours(args.logos)
    logos = {slug: logo_file(args.logos, slug) for slug in protect + others}
    for slug, path in logos.items():
        if path is None:
            parser.error(f"no logo {args.logos / slug}.svg or .png")
    products = []
    for path in args.products.split(","):
        try:
            with Image.open(path) as opened:
                drawing = opened.convert("RGBA")
        except OSError as exc:
            parser.error(f"cannot read product drawing {path}: {exc}")
        if drawing.getchannel("A").getbbox() is None:
            parser.error(f"product drawing {path} is fully transparent")
        products.append((Path(path).stem.split("_")[0], drawing.crop(drawing.getchannel("A").getbbox())))
    backgrounds = [p for p in sorted(args.backgrounds.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")]
    for folder in ("refs", "marks", "listings"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)

    catalog, authorized, marks, sold = [], [], [], {}
    for slug in protect:
        brand = slug.capitalize()
        colour = legible(palette.get(slug, "#202020"))
        mark = Image.new("RGB", (480, 480), "white")
        drawn = render(logos[slug], colour, 400)
        mark.paste(drawn, ((480 - drawn.width) // 2, (480 - drawn.height) // 2), drawn)
        mark.save(args.out / "marks" / f"{slug}.png")
        marks.append([brand, f"marks/{slug}.png"])
        authorized += [[brand, f"auth-{slug}-{i}"] for i in range(2)]
        sold[brand] = rng.sample(range(len(products)), 3)
        for j, p in enumerate(sold[brand]):
            name, drawing = products[p]
            pid = f"{slug[:3].upper()}-{j}"
            photo = scene(with_logo(drawing, render(logos[slug], colour, 400), 0.3, 0, rng, centred=True),
                          None, rng, 0.85)
            photo.save(args.out / "refs" / f"{pid}.jpg", quality=92)
            catalog.append([brand, pid, f"refs/{pid}.jpg", f"{rng.uniform(40, 300):.2f}", "USD", f"{brand} {name}"])

    listings, truth = [], []
    number = 0
    for kind, flag in KINDS:
        for i in range(PER_KIND):
            b = i % len(protect)
            slug, brand = protect[b], protect[b].capitalize()
            j = rng.randrange(3)
            product_row = catalog[3 * b + j]
            name, drawing = products[sold[brand][j]]
            logo_slug = slug if kind.startswith(("newphoto", "authorized")) else (
                rng.choice(others) if kind == "other_logo_same_product" else None)
            logo = None if logo_slug is None else render(logos[logo_slug],
                                                          ink(rng, palette.get(logo_slug, "#202020")), 400)
            look = recolour(drawing, rng) if rng.random() < 0.8 else drawing
            printed = with_logo(look, logo, rng.uniform(0.15, 0.4), rng.uniform(-25, 25), rng)
            background = Image.open(rng.choice(backgrounds)) if backgrounds and rng.random() < 0.85 else None
            photo = scene(printed, background, rng, rng.uniform(0.5, 0.9))
            lid = f"L{number:05d}"
            number += 1
            photo.save(args.out / "listings" / f"{lid}.jpg", quality=rng.randint(75, 92))
            price = float(product_row[3]) * (rng.uniform(0.9, 1.1) if "fullprice" in kind else rng.uniform(0.1, 0.4))
            seller = f"auth-{slug}-{rng.randrange(2)}" if kind == "authorized_fullprice" else f"seller-{rng.randrange(10**5)}"
            listings.append([lid, seller, f"{name} item", f"{price:.2f}", "USD", f"listings/{lid}.jpg"])
            truth.append([lid, flag, kind, brand if flag or kind == "authorized_fullprice" else "",
                          product_row[1] if flag or kind == "authorized_fullprice" else ""])
    order = list(range(len(listings)))
    rng.shuffle(order)
    tables = {"catalog.csv": (["brand", "product_id", "image", "price", "currency", "title"], catalog),
              "authorized.csv": (["brand", "seller_id"], authorized), "marks.csv": (["brand", "image"], marks),
              "listings.csv": (["listing_id", "seller_id", "title", "price", "currency", "image"], [listings[k] for k in order]),
              "truth.csv": (["listing_id", "should_flag", "kind", "brand", "product_id"], [truth[k] for k in order])}
    for name, (header, rows) in tables.items():
        with open(args.out / name, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([header, *rows])
    print(f"{args.out}: {len(protect)} brands, {len(catalog)} products, {len(listings)} listings")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
