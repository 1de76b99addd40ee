#!/usr/bin/env python3
"""Build a labelled benchmark folder, in eval-public's format, from any folder of product pictures
and any folder of background photos, with harsher seller edits than eval-public has.

    python scripts/make_bench.py PRODUCTS_DIR BACKGROUNDS_DIR OUT_DIR [--brands 8] [--per-brand 8] [--seed 0]

It is how the matcher is checked on images it was not developed on. For example, with Debian's
Oxygen icons as products and GNOME's wallpapers as backgrounds (no internet needed beyond the
Debian archive):

    apt-get download oxygen-icon-theme gnome-backgrounds
    for f in *.deb; do dpkg-deb -x "$f" debs; done
    python scripts/make_bench.py debs/usr/share/icons/oxygen/base/256x256 debs/usr/share/backgrounds held-out
    python scripts/evaluate.py held-out

Catalogue products, and the look-alike "other products" that are not in the catalogue, are drawn
from the same folder, so the other products share the products' style. Edits of copies: taken at
an angle (perspective), meme captions, emoji stickers, inside a phone screenshot, staged small on a
photo, and mixes of these with crops, recolouring, blur and JPEG. `truth.csv` says which listings
should be flagged, by eval-public's rule (derived from a catalogue photo, and cheap or sold by a
seller the brand does not authorise).
"""

from __future__ import annotations

import argparse
import csv
import io
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

PICTURES = (".png", ".jpg", ".jpeg", ".webp")
CAPTIONS = ("WHEN THE PRICE IS RIGHT", "ORIGINAL 100%", "FREE SHIPPING", "BEST QUALITY", "LIMITED STOCK",
            "NEW 2026", "SALE -70%", "DM FOR PRICE")


def pictures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in PICTURES and p.is_file())


def distinct(paths: list[Path]) -> list[Path]:
    """One picture per design: icon themes and photo sets hold the same picture under several
    names, and a benchmark whose "other product" is a catalogue photo's twin scores nothing."""
    kept, seen = [], []
    for path in paths:
        sketch = np.asarray(load(path).convert("L").resize((16, 16), Image.BILINEAR), np.float32)
        if all(np.abs(sketch - other).mean() > 8 for other in seen):
            kept.append(path)
            seen.append(sketch)
    return kept


def load(path: Path) -> Image.Image:
    """Decode a picture; transparency goes onto white, as catalogue photos are shown."""
    image = Image.open(path)
    image.load()
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        canvas = Image.new("RGB", image.size, "white")
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def perspective(rng: random.Random, image: Image.Image) -> Image.Image:
    import cv2

    pixels = np.asarray(image)
    h, w = pixels.shape[:2]
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    moved = corners + np.float32([[rng.uniform(-0.18, 0.18) * w, rng.uniform(-0.18, 0.18) * h] for _ in range(4)])
    moved -= moved.min(axis=0)
    size = (int(moved[:, 0].max()) + 1, int(moved[:, 1].max()) + 1)
    matrix = cv2.getPerspectiveTransform(corners, moved)
    return Image.fromarray(cv2.warpPerspective(pixels, matrix, size, borderValue=(255, 255, 255)))


def meme(rng: random.Random, image: Image.Image) -> Image.Image:
    w, h = image.size
    bar = max(24, h // 5)
    canvas = Image.new("RGB", (w, h + 2 * bar), "black" if rng.random() < 0.5 else "white")
    canvas.paste(image, (0, bar))
    draw = ImageDraw.Draw(canvas)
    ink = "white" if canvas.getpixel((0, 0)) == (0, 0, 0) else "black"
    for y, text in ((bar // 4, rng.choice(CAPTIONS)), (h + bar + bar // 4, rng.choice(CAPTIONS))):
        draw.text((w // 20, y), text, fill=ink, font=font(max(12, bar // 2)))
    return canvas


def stickers(rng: random.Random, image: Image.Image) -> Image.Image:
    """Two or three emoji-like faces stuck over the photo."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for _ in range(rng.randint(2, 3)):
        r = int(min(w, h) * rng.uniform(0.08, 0.15))
        x, y = rng.randint(r, w - r), rng.randint(r, h - r)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 204, 0), outline="black", width=max(1, r // 10))
        e = max(1, r // 5)
        draw.ellipse((x - r // 2 - e, y - r // 3 - e, x - r // 2 + e, y - r // 3 + e), fill="black")
        draw.ellipse((x + r // 2 - e, y - r // 3 - e, x + r // 2 + e, y - r // 3 + e), fill="black")
        draw.arc((x - r // 2, y - r // 4, x + r // 2, y + r // 2), 20, 160, fill="black", width=max(1, r // 8))
    return image


def screenshot(rng: random.Random, image: Image.Image) -> Image.Image:
    """The photo inside a phone shop app: status bar, header, price and buttons around it."""
    w = 360
    photo = image.resize((w - 40, int((w - 40) * image.height / image.width)))
    h = photo.height + 260
    screen = Image.new("RGB", (w, h), (245, 245, 245))
    draw = ImageDraw.Draw(screen)
    draw.rectangle((0, 0, w, 24), fill=(30, 30, 30))
    draw.text((10, 5), f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}", fill="white", font=font(13))
    draw.rectangle((0, 24, w, 70), fill=(rng.randint(0, 200), rng.randint(0, 200), rng.randint(0, 200)))
    draw.text((14, 36), "ShopNow", fill="white", font=font(20))
    screen.paste(photo, (20, 90))
    y = 100 + photo.height
    draw.text((20, y), f"$ {rng.randint(5, 99)}.99", fill=(200, 0, 0), font=font(24))
    for row in range(3):
        draw.rectangle((20, y + 40 + 18 * row, 20 + rng.randint(150, 320), y + 50 + 18 * row), fill=(190, 190, 190))
    draw.rounded_rectangle((20, h - 60, w - 20, h - 20), radius=12, fill=(255, 140, 0))
    draw.text((w // 2 - 40, h - 52), "BUY NOW", fill="white", font=font(18))
    return screen


def staged(rng: random.Random, image: Image.Image, backgrounds: list[Path]) -> Image.Image:
    """Small on a photo, slightly turned."""
    scene = load(rng.choice(backgrounds))
    scene = ImageOps.fit(scene, (640, 480))
    side = int(480 * rng.uniform(0.3, 0.55))
    product = image.resize((side, int(side * image.height / image.width))).convert("RGBA")
    product = product.rotate(rng.uniform(-20, 20), expand=True, resample=Image.BICUBIC)
    scene.paste(product, (rng.randint(0, 640 - product.width), rng.randint(0, max(0, 480 - product.height))), product)
    return scene


def mild(rng: random.Random, image: Image.Image) -> Image.Image:
    """What a shop does to its own photo: a resize, sometimes a crop or a border."""
    w, h = image.size
    if rng.random() < 0.5:
        m = rng.uniform(0.0, 0.1)
        image = image.crop((int(m * w), int(m * h), int((1 - m) * w), int((1 - m) * h)))
    if rng.random() < 0.3:
        image = ImageOps.expand(image, border=int(0.1 * w), fill="white")
    return image.resize((rng.choice((300, 400, 512)),) * 2)


def finish(rng: random.Random, image: Image.Image) -> Image.Image:
    """Colour, blur and crop changes that come on top of the main edit."""
    if rng.random() < 0.3:
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.0, 0.5))
    if rng.random() < 0.3:
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 1.8)))
    if rng.random() < 0.3:
        image = ImageOps.mirror(image)
    return image


def harsh(rng: random.Random, image: Image.Image, backgrounds: list[Path]) -> Image.Image:
    kind = rng.choice(("perspective", "meme", "stickers", "screenshot", "staged", "staged+meme",
                       "perspective+stickers", "screenshot+perspective"))
    edits = {"perspective": lambda im: perspective(rng, im), "meme": lambda im: meme(rng, im),
             "stickers": lambda im: stickers(rng, im), "screenshot": lambda im: screenshot(rng, im),
             "staged": lambda im: staged(rng, im, backgrounds)}
    for step in kind.split("+"):
        image = edits[step](image)
    return finish(rng, image)


def jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("products", type=Path, help="folder of product pictures (searched recursively)")
    parser.add_argument("backgrounds", type=Path, help="folder of photos to stage products on and to list as unrelated")
    parser.add_argument("out", type=Path)
    parser.add_argument("--brands", type=int, default=8)
    parser.add_argument("--per-brand", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    products, backgrounds = distinct(pictures(args.products)), pictures(args.backgrounds)
    catalogued = args.brands * args.per_brand
    if len(products) < 2 * catalogued or not backgrounds:
        parser.error(f"need at least {2 * catalogued} product pictures and one background")
    rng.shuffle(products)
    chosen, others = products[:catalogued], products[catalogued : 2 * catalogued]
    for folder in ("refs", "listings"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)

    brands = [f"Brand{chr(65 + b)}" for b in range(args.brands)]
    catalog, authorized, listings, truth = [], [], [], []
    for b, brand in enumerate(brands):
        authorized += [{"brand": brand, "seller_id": f"auth-{brand.lower()}-{k}"} for k in range(2)]
        for j, path in enumerate(chosen[b * args.per_brand : (b + 1) * args.per_brand]):
            pid = f"{brand[-1]}{j:03d}"
            ref = f"refs/{pid}.png"
            load(path).save(args.out / ref)
            catalog.append({"brand": brand, "product_id": pid, "image": ref, "price": round(rng.uniform(50, 2000), 2),
                            "currency": "USD", "title": f"{brand} {path.stem.replace('-', ' ')}"})

    def listing(image: Image.Image, seller: str, price: float, title: str, flag: int, kind: str, brand="", pid=""):
        lid = f"H{len(listings):05d}"
        name = f"listings/{lid}.jpg"
        (args.out / name).write_bytes(jpeg(image.convert("RGB"), rng.randint(45, 90)))
        listings.append({"listing_id": lid, "seller_id": seller, "title": title, "price": round(price, 2),
                         "currency": "USD", "image": name})
        truth.append({"listing_id": lid, "should_flag": flag, "kind": kind, "brand": brand, "product_id": pid})

    rogue = lambda: f"seller-{rng.randint(10000, 99999)}"  # noqa: E731
    for row in catalog:
        image = load(args.out / row["image"])
        price, brand, pid = row["price"], row["brand"], row["product_id"]
        seller = f"auth-{brand.lower()}-{rng.randint(0, 1)}"
        cheap = harsh(rng, image, backgrounds)
        listing(cheap, rogue(), price * rng.uniform(0.1, 0.4), rng.choice([row["title"], "great deal"]), 1,
                "copy_cheap_rogue", brand, pid)
        full = harsh(rng, image, backgrounds)
        listing(full, rogue(), price * rng.uniform(0.9, 1.1), row["title"], 1, "copy_fullprice_rogue", brand, pid)
        listing(mild(rng, image), seller, price * rng.uniform(0.95, 1.05), row["title"], 0, "authorized_fullprice",
                brand, pid)
        if rng.random() < 0.3:
            listing(mild(rng, image), seller, price * rng.uniform(0.2, 0.4), row["title"], 1, "authorized_cheap",
                    brand, pid)
    for path in others:
        for _ in range(2):
            image = harsh(rng, load(path), backgrounds) if rng.random() < 0.5 else mild(rng, load(path))
            listing(image, rogue(), rng.uniform(5, 60), f"like {rng.choice(brands)} {path.stem}", 0,
                    "other_product_cheap")
    for _ in range(catalogued):
        scene = load(rng.choice(backgrounds))
        side = int(min(scene.size) * rng.uniform(0.3, 0.8))
        x, y = rng.randint(0, scene.width - side), rng.randint(0, scene.height - side)
        listing(scene.crop((x, y, x + side, y + side)).resize((400, 400)), rogue(), rng.uniform(5, 60),
                "home decor print", 0, "unrelated_cheap")

    order = list(range(len(listings)))
    rng.shuffle(order)
    for name, rows in (("catalog.csv", catalog), ("authorized.csv", authorized),
                       ("listings.csv", [listings[i] for i in order]), ("truth.csv", [truth[i] for i in order])):
        with open(args.out / name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    kinds = {}
    for t in truth:
        kinds[t["kind"]] = kinds.get(t["kind"], 0) + 1
    print(f"{args.out}: {len(catalog)} catalogue photos of {len(brands)} brands, {len(listings)} listings "
          + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))


if __name__ == "__main__":
    main()
