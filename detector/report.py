"""report.html: a page a reviewer can work from, with thumbnails beside the matched references.

Every string is escaped by Jinja2's autoescape (titles, seller ids and file names are written by
attackers), control characters are shown as U+FFFD, and a Content-Security-Policy forbids scripts. Thumbnails are small JPEGs in
``thumbs/`` beside the page, so the whole folder can be zipped and mailed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from detector.images import decode_image, read_image_bytes
from detector.outputs import printable
from index.files import atomic_write, replacing

THUMB_SIZE = 240
REPORT_LIMIT = 2000


def make_thumbnail(source: str | None, out_dir: Path, size: int = THUMB_SIZE, folder: str = "thumbs") -> str | None:
    """A JPEG of ``source`` at most ``size`` pixels wide and high, in ``out_dir/folder``; returns
    its path relative to ``out_dir``, or None."""
    if not source:
        return None
    path = Path(source)
    try:
        stat = path.stat()
        name = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}:{size}".encode()).hexdigest()[:24] + ".jpg"
        target = out_dir / folder / name
        if not target.exists():
            image = decode_image(read_image_bytes(path), draft=size)
            image.thumbnail((size, size))
            target.parent.mkdir(parents=True, exist_ok=True)
            with replacing(target) as tmp:
                image.save(tmp, "JPEG", quality=80)
        return f"{folder}/{name}"
    except Exception:  # noqa: BLE001 - a missing preview must never stop the report
        return None


def trend_chart(trend: list[dict], width: int = 640, height: int = 200) -> dict | None:
    """Coordinates of a line chart of flagged listings per 10,000 by night (an inline SVG in the
    template; at most 12 night labels)."""
    if not trend:
        return None
    left, right, top, bottom = 48, width - 16, 12, height - 24
    peak = max(t["flagged_per_10000"] for t in trend) or 1.0
    step = (right - left) / max(1, len(trend) - 1)
    every = max(1, -(-len(trend) // 12))
    marks = [{"x": round(left + i * step if len(trend) > 1 else (left + right) / 2, 1),
              "y": round(bottom - (bottom - top) * t["flagged_per_10000"] / peak, 1),
              "night": t["night"], "value": t["flagged_per_10000"], "label": i % every == 0 or i == len(trend) - 1}
             for i, t in enumerate(trend)]
    return {"width": width, "height": height, "left": left, "right": right, "top": top, "bottom": bottom,
            "peak": peak, "marks": marks, "points": " ".join(f"{m['x']},{m['y']}" for m in marks)}


def write_report(out_dir: Path, summary: dict, flagged: list[dict]) -> Path:
    """Render report.html for the flagged records (highest score first, at most REPORT_LIMIT)."""
    ranked = sorted(flagged, key=lambda r: (-r["score"], r["listing_id"]))
    shown = ranked[:REPORT_LIMIT]
    rows = [
        {**r, "thumb": make_thumbnail(r.get("image_path"), out_dir), "ref_thumb": make_thumbnail(r.get("reference_path"), out_dir)}
        for r in shown
    ]
    env = Environment(loader=PackageLoader("detector", "templates"), autoescape=select_autoescape(["html"]),
                      finalize=lambda value: printable(value) if type(value) is str else value)
    chart = trend_chart(summary["history"]["trend"]) if summary.get("history") else None
    html = env.get_template("report.html").render(summary=summary, rows=rows, shown=len(shown), total=len(ranked),
                                                  chart=chart)
    atomic_write(out_dir / "report.html", html)
    return out_dir / "report.html"
