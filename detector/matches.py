"""Where the image side meets the vector side: open an index with the embedder that built it,
and turn index hits into the candidates the policy judges."""

from __future__ import annotations

from pathlib import Path

from detector.embedders import Embedder, create_embedder
from detector.policy import Candidate
from index.search import Hit
from index.store import ReferenceIndex, load_index, read_manifest


def open_index(
    index_dir: Path, *, embedder: str | None = None, device: str = "auto", weights: str | None = None
) -> tuple[ReferenceIndex, Embedder]:
    """Load INDEX_DIR and the embedder it was built with (or ``embedder``, which must match)."""
    manifest = read_manifest(Path(index_dir))
    model = create_embedder(embedder or manifest["embedder"]["name"], device=device, weights=weights)
    index = load_index(Path(index_dir), fingerprint=model.fingerprint, fingerprint_id=model.fingerprint_id)
    return index, model


def candidates(index: ReferenceIndex, hits: list[Hit]) -> list[Candidate]:
    """One policy candidate per hit, carrying the product's catalogue facts and brand threshold."""
    found = []
    for hit in hits:
        product = index.product(hit)
        found.append(
            Candidate(
                brand=hit.brand,
                product_id=product["product_id"],
                similarity=hit.similarity,
                reference_image=product["image"],
                reference_path=product["image_path"],
                price=product.get("price"),
                currency=product.get("currency"),
                title=product.get("title", ""),
                calibrated_threshold=index.brands[hit.brand].threshold,
            )
        )
    return found


def authorized_sellers(index: ReferenceIndex, override: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """Authorised sellers per brand: the index's lists, replaced brand by brand by ``override``."""
    sellers = {brand: set(entry.authorized) for brand, entry in index.brands.items()}
    if override:
        sellers.update(override)
    return sellers
