"""Which parts of a photo get embedded.

A reference photo is embedded whole. A listing photo is embedded whole and through five
windows at 60% of its width and height (the centre and the four corners), because sellers paste
and stage products in part of the frame, or crop around them; its similarity to a reference is
the best over its views. Calibration scores impostors through the same views, so thresholds
match what the scanner measures.
"""

from __future__ import annotations

from PIL import Image

WINDOW = 0.6
VIEWS_ID = "whole+centre+4corners@0.6-v1"
REFERENCE_VIEW_ID = "whole-v1"  # how reference photos are embedded; recorded in the index manifest
LISTING_VIEWS = 6


def listing_views(image: Image.Image) -> list[Image.Image]:
    """The whole picture, then the centre and the four corner windows."""
    width, height = image.size
    w, h = max(1, round(width * WINDOW)), max(1, round(height * WINDOW))
    corners = [((width - w) // 2, (height - h) // 2), (0, 0), (width - w, 0), (0, height - h), (width - w, height - h)]
    return [image, *(image.crop((x, y, x + w, y + h)) for x, y in corners)]


def reference_view(image: Image.Image) -> Image.Image:
    """What a reference photo is embedded as: the whole picture."""
    return image
