"""The first stage: find the photo's file within the table's folder, read it, and hash its bytes
(the content hash every cache entry is filed under). A photo that came in memory
(``ListingRow.data``: an upload to ``counterfeit serve``) is hashed as it is, and has no path."""

from __future__ import annotations

import hashlib

from detector.images import ImageError, read_image_bytes, resolve_image_path
from detector.stages.base import Context, Photo, Stage


class Read(Stage):
    name = "read"
    version = "sha256-v1"
    adds = records = ("digest", "path")

    def run(self, photo: Photo, ctx: Context) -> dict:
        if photo.row.error:
            raise ImageError("bad_row", photo.row.error)
        if photo.row.data is not None:
            photo.data = photo.row.data
            return {"digest": hashlib.sha256(photo.data).hexdigest(), "path": ""}
        path = resolve_image_path(photo.row.image, ctx.root, allow_outside=ctx.options.allow_outside)
        photo.data = read_image_bytes(path)
        return {"digest": hashlib.sha256(photo.data).hexdigest(), "path": str(path)}
