"""Read catalogue, authorised-seller and listing tables (CSV, JSONL, Parquet) as a stream.

File-level problems (unreadable file, missing columns) raise :class:`TableError`. Row-level
problems never raise: a listing row carries an ``error`` and the scanner records it.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from detector.errors import UserError

CATALOG_COLUMNS = ("brand", "product_id", "image", "price", "currency")
AUTHORIZED_COLUMNS = ("brand", "seller_id")
MARK_COLUMNS = ("brand", "image")
LISTING_COLUMNS = ("listing_id", "seller_id", "title", "price", "currency", "image")
LISTING_REQUIRED = ("listing_id", "image")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
MAX_PRICE = 1e9
MAX_FIELD = 10_000

csv.field_size_limit(1 << 20)


class TableError(UserError):
    """A table that cannot be read at all: the message names the file (and line where there is one)."""


def table_format(path: Path) -> str:
    """``csv``, ``jsonl`` or ``parquet``, from the file name."""
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv", ".txt"}:
        return "csv"
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    raise TableError(f"{path}: unknown table format {suffix!r}; use .csv, .jsonl or .parquet")


def _csv_dialect(path: Path, header_line: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    counts = {sep: header_line.count(sep) for sep in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _open_text(path: Path):
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise TableError(f"cannot open {path}: {exc.strerror or exc}") from None


def table_columns(path: Path) -> list[str] | None:
    """The header of a CSV or Parquet file; ``None`` for JSONL, whose rows name their own keys."""
    fmt = table_format(path)
    if fmt == "parquet":
        return list(_parquet_file(path).schema_arrow.names)
    if fmt == "jsonl":
        return None
    with _open_text(path) as fh:
        try:
            header = fh.readline()
        except UnicodeDecodeError:
            raise TableError(f"{path}: not UTF-8 text") from None
    if not header.strip():
        raise TableError(f"{path} is empty: expected a header line with the columns {', '.join(LISTING_COLUMNS)}")
    return [name.strip() for name in next(csv.reader([header], delimiter=_csv_dialect(path, header)))]


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several unrelated types for bad files
        raise TableError(f"{path}: not a readable Parquet file ({exc})") from None


def iter_records(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line, record)`` for every data row; ``line`` is what a user sees in an editor.

    A record that cannot be parsed (bad JSON line) is yielded as ``{"__error__": reason}``.
    """
    path = Path(path)
    fmt = table_format(path)
    if fmt == "parquet":
        rownum = 1
        for batch in _parquet_file(path).iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                rownum += 1
                yield rownum, record
        return
    with _open_text(path) as fh:
        try:
            if fmt == "jsonl":
                for lineno, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        yield lineno, {"__error__": f"invalid JSON ({exc.msg})"}
                        continue
                    if not isinstance(record, dict):
                        yield lineno, {"__error__": "JSON line is not an object"}
                        continue
                    yield lineno, record
                return
            header = fh.readline()
            if not header.strip():
                return
            delimiter = _csv_dialect(path, header)
            names = [name.strip() for name in next(csv.reader([header], delimiter=delimiter))]
            reader = csv.reader(fh, delimiter=delimiter)
            while True:
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:  # the reader goes on at the next line
                    yield reader.line_num + 1, {"__error__": f"malformed CSV row ({exc})"}
                    continue
                if not any(value.strip() for value in values):
                    continue
                record = dict(zip(names, values))
                if len(values) > len(names):
                    record["__extra__"] = values[len(names) :]
                yield reader.line_num + 1, record
        except UnicodeDecodeError as exc:
            raise TableError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def count_rows(path: Path) -> int | None:
    """A quick row count for progress bars (CSV lines with embedded newlines make it approximate)."""
    path = Path(path)
    try:
        fmt = table_format(path)
        if fmt == "parquet":
            return _parquet_file(path).metadata.num_rows
        with open(path, "rb") as fh:
            lines = sum(1 for line in fh if line.strip())
        return max(0, lines - (1 if fmt == "csv" else 0))
    except (OSError, TableError):
        return None


def require_columns(path: Path, required: tuple[str, ...], columns: list[str] | None) -> None:
    """Raise a clear error when a header lacks required columns."""
    if columns is None:
        return
    missing = [name for name in required if name not in columns]
    if missing:
        raise TableError(
            f"{path} is missing column(s) {', '.join(missing)}; it has: {', '.join(columns) or '(none)'}"
        )


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).strip()[:MAX_FIELD]


def parse_price(value) -> tuple[float | None, str | None]:
    """Parse a price. Returns ``(price, None)``, ``(None, None)`` when absent, or ``(None, why)``."""
    text = _text(value)
    if not text:
        return None, None
    try:
        price = float(text.replace(",", "") if text.count(",") and text.count(".") else text.replace(",", "."))
    except ValueError:
        return None, f"price {text[:40]!r} is not a number"
    if math.isnan(price) or math.isinf(price):
        return None, f"price {text[:40]!r} is not a finite number"
    if price < 0:
        return None, f"price {price:g} is negative"
    if price > MAX_PRICE:
        return None, f"price {price:g} is implausibly large"
    return price, None


# --- listings -------------------------------------------------------------------------------


@dataclass
class ListingRow:
    """One listing photo row. ``error`` makes the row unusable; ``notes`` are data-quality remarks,
    as ``(finding code, text)`` pairs (codes in :data:`detector.decisions.FINDINGS`)."""

    row: int
    line: int
    listing_id: str
    seller_id: str | None
    title: str
    price: float | None
    currency: str | None
    image: str
    error: str | None = None
    notes: list[tuple[str, str]] = field(default_factory=list)
    data: bytes | None = field(default=None, repr=False)  # the photo itself, when it comes in memory (no file)


def listing_from_record(row: int, line: int, record: dict) -> ListingRow:
    """Validate one raw record into a :class:`ListingRow`; problems become ``error`` or ``notes``.
    A listing_id longer than MAX_FIELD is refused (the row is an error named by its line), never
    cut: two long ids that differ only beyond the cut would merge into one listing."""
    raw_id = "" if record.get("listing_id") is None else str(record.get("listing_id")).strip()
    too_long = len(raw_id) > MAX_FIELD
    listing_id = "" if too_long else _text(record.get("listing_id"))
    listing = ListingRow(
        row=row,
        line=line,
        listing_id=listing_id or f"(line {line})",
        seller_id=_text(record.get("seller_id")) or None,
        title=_text(record.get("title")),
        price=None,
        currency=_text(record.get("currency")).upper() or None,
        image=_text(record.get("image")),
    )
    if "__error__" in record:
        listing.error = f"line {line}: {record['__error__']}"
        return listing
    if not listing_id and not too_long:
        listing.error = f"line {line}: missing listing_id"
        return listing
    if not listing.image:
        listing.error = f"line {line}: no image path given"
    price, why = parse_price(record.get("price"))
    listing.price = price
    if why:
        listing.notes.append(("price_unreadable", f"{why}; price not compared"))
    if too_long:
        listing.error = f"line {line}: listing_id is {len(raw_id):,} characters long, over the {MAX_FIELD:,} limit"
    if listing.seller_id is None:
        listing.notes.append(("seller_missing", "no seller id given; seller not checked"))
    if "__extra__" in record:
        listing.notes.append(("extra_values", f"line {line} has {len(record['__extra__'])} value(s) beyond the header; ignored"))
    return listing


def iter_listings(path: Path) -> Iterator[ListingRow]:
    """Stream a listing table (or a bare folder of images) as validated rows, in file order."""
    path = Path(path)
    if path.is_dir():
        yield from _iter_folder(path)
        return
    if not path.exists():
        raise TableError(f"listings not found: {path}")
    require_columns(path, LISTING_REQUIRED, table_columns(path))
    for row, (line, record) in enumerate(iter_records(path)):
        yield listing_from_record(row, line, record)


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (by suffix), following links to folders, sorted."""
    return sorted(Path(root) / name for root, _, names in os.walk(folder, followlinks=True)
                  for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES)


def _iter_folder(folder: Path) -> Iterator[ListingRow]:
    row = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if full.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = full.relative_to(folder).as_posix()
            yield ListingRow(row=row, line=row + 1, listing_id=rel, seller_id=None, title="", price=None,
                             currency=None, image=rel)
            row += 1


# --- catalogue and authorised sellers ----------------------------------------------------------


@dataclass(frozen=True)
class CatalogRow:
    """One authentic reference photo of a product."""

    line: int
    brand: str
    product_id: str
    image: str
    price: float
    currency: str
    title: str


def _reference_table(path: Path, what: str, columns: tuple[str, ...]) -> Iterator[tuple[int, str, dict]]:
    """Each record of a brand-side table (catalogue, marks) with its line and where it is, once
    the file is found and has the ``columns``."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{what} not found: {path}")
    require_columns(path, columns, table_columns(path))
    for line, record in iter_records(path):
        yield line, f"{path.name} line {line}", record


def read_catalog(path: Path) -> tuple[list[CatalogRow], list[str]]:
    """Read a catalogue. Returns the good rows and one message per bad row (file and line named)."""
    rows, errors = [], []
    for line, where, record in _reference_table(path, "catalogue", CATALOG_COLUMNS):
        if "__error__" in record:
            errors.append(f"{where}: {record['__error__']}")
            continue
        missing = [name for name in CATALOG_COLUMNS if not _text(record.get(name))]
        if missing:
            errors.append(f"{where}: empty {', '.join(missing)}")
            continue
        price, why = parse_price(record.get("price"))
        if why or price is None or price == 0:
            errors.append(f"{where}: {why or 'price must be above zero'}")
            continue
        rows.append(
            CatalogRow(
                line=line,
                brand=_text(record["brand"]),
                product_id=_text(record["product_id"]),
                image=_text(record["image"]),
                price=price,
                currency=_text(record["currency"]).upper(),
                title=_text(record.get("title")),
            )
        )
    if not rows and not errors:
        errors.append(f"{Path(path).name}: no data rows under the header")
    return rows, errors


@dataclass(frozen=True)
class MarkRow:
    """One registered brand mark: a logo file."""

    line: int
    brand: str
    image: str


def read_marks(path: Path) -> tuple[list[MarkRow], list[str]]:
    """Read a marks table (``brand, image``). Returns the good rows and one message per bad row."""
    rows, errors = [], []
    for line, where, record in _reference_table(path, "marks table", MARK_COLUMNS):
        brand, image = _text(record.get("brand")), _text(record.get("image"))
        if "__error__" in record or not brand or not image:
            errors.append(f"{where}: {record.get('__error__') or 'needs both brand and image'}")
            continue
        rows.append(MarkRow(line, brand, image))
    if not rows and not errors:
        errors.append(f"{Path(path).name}: no data rows under the header")
    return rows, errors


def read_authorized(path: Path) -> dict[str, set[str]]:
    """Read ``brand, seller_id`` rows into ``{brand: {seller, ...}}``; any bad row is an error."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"authorised-seller table not found: {path}")
    require_columns(path, AUTHORIZED_COLUMNS, table_columns(path))
    sellers: dict[str, set[str]] = {}
    for line, record in iter_records(path):
        brand, seller = _text(record.get("brand")), _text(record.get("seller_id"))
        if "__error__" in record or not brand or not seller:
            raise TableError(f"{path.name} line {line}: {record.get('__error__') or 'needs both brand and seller_id'}")
        sellers.setdefault(brand, set()).add(seller)
    return sellers
