"""Listing views: the whole photo and five windows; a pasted product is found through them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from detector.demo import draw_product
from detector.matches import search_views
from detector.views import LISTING_VIEWS, WINDOW, listing_views
from index.search import Hit
from index.store import BrandEntry, load_index, write_index


def test_six_views_whole_then_windows():
    image = Image.new("RGB", (200, 100))
    views = listing_views(image)
    assert len(views) == LISTING_VIEWS and views[0] is image
    assert all(v.size == (round(200 * WINDOW), round(100 * WINDOW)) for v in views[1:])
    assert listing_views(Image.new("RGB", (1, 1)))[1].size == (1, 1)


def test_a_staged_product_scores_higher_through_its_views(embedder):
    product = draw_product(21)
    scene = draw_product(900, size=600)
    scene.paste(product.resize((300, 300)), (0, 0))  # the product fills the top-left corner window
    reference = embedder.embed([product])[0]
    views = embedder.embed(listing_views(scene))
    assert (views @ reference).max() > views[0] @ reference + 0.05


def test_search_views_keeps_each_reference_once_at_its_best_view(tmp_path):
    rng = np.random.default_rng(0)
    refs = rng.standard_normal((4, 8)).astype(np.float32)
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    products = [{"product_id": f"P{i}", "image": "", "image_path": "", "image_sha256": str(i), "price": 1.0,
                 "currency": "USD", "title": ""} for i in range(4)]
    fp = {"name": "toy", "dim": 8}
    write_index(tmp_path, [BrandEntry("B", refs, products)], fp, "x")
    index = load_index(tmp_path)
    views = np.stack([refs[1] * 0.6 + refs[2] * 0.4, refs[2]])
    views /= np.linalg.norm(views, axis=1, keepdims=True)
    (hits,) = search_views(index, [views], k=3)
    assert [h.row for h in hits][0] == 2 and hits[0].similarity > 0.999
    assert len({h.row for h in hits}) == len(hits) == 3
    single = search_views(index, [refs[3]], k=1)
    assert single == [[Hit("B", 3, single[0][0].similarity)]]
    assert search_views(index, [], k=3) == []
