"""Table readers: CSV, JSONL and Parquet stream the same rows; bad rows become errors or notes."""

from __future__ import annotations

import csv
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.tables import (
    TableError, count_rows, iter_listings, parse_price, read_authorized, read_catalog, table_columns,
)

HEADER = "listing_id,seller_id,title,price,currency,image\n"


def write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


def test_csv_jsonl_and_parquet_give_the_same_rows(tmp_path):
    rows = [
        {"listing_id": "A", "seller_id": "s1", "title": "Bag", "price": "10.5", "currency": "usd", "image": "a.jpg"},
        {"listing_id": "B", "seller_id": "s2", "title": "Shoe", "price": "20", "currency": "EUR", "image": "b.jpg"},
    ]
    write(tmp_path / "l.csv", HEADER + "".join(",".join(r.values()) + "\n" for r in rows))
    write(tmp_path / "l.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "l.parquet")
    seen = {}
    for name in ("l.csv", "l.jsonl", "l.parquet"):
        seen[name] = [(r.listing_id, r.seller_id, r.price, r.currency, r.image) for r in iter_listings(tmp_path / name)]
    assert seen["l.csv"] == seen["l.jsonl"] == seen["l.parquet"] == [
        ("A", "s1", 10.5, "USD", "a.jpg"),
        ("B", "s2", 20.0, "EUR", "b.jpg"),
    ]


def test_bom_and_semicolon_csv_are_read(tmp_path):
    path = write(tmp_path / "l.csv", "\ufefflisting_id;seller_id;title;price;currency;image\nA;s;t;12,50;USD;a.jpg\n")
    (row,) = iter_listings(path)
    assert row.listing_id == "A" and row.price == 12.5 and row.error is None


@pytest.mark.parametrize(
    "value, price, why",
    [
        ("12.5", 12.5, None),
        ("1,234.50", 1234.5, None),
        ("", None, None),
        ("abc", None, "not a number"),
        ("nan", None, "not a finite number"),
        ("-3", None, "negative"),
        ("1e15", None, "implausibly large"),
        (float("nan"), None, None),
    ],
)
def test_parse_price(value, price, why):
    got, reason = parse_price(value)
    assert got == price
    assert (reason is None) if why is None else (why in reason)


def test_bad_rows_become_errors_or_notes_not_exceptions(tmp_path):
    path = write(
        tmp_path / "l.csv",
        HEADER
        + "A,s1,ok,10,USD,a.jpg\n"
        + ",s2,no id,10,USD,b.jpg\n"
        + "C,,no seller,10,USD,c.jpg\n"
        + "D,s4,bad price,abc,USD,d.jpg\n"
        + "E,s5,no image,10,USD,\n"
        + "F,s6,extra,10,USD,f.jpg,surplus\n"
        + "G,s7,\u202eevil\u202c \u05e9\u05dc\u05d5\u05dd,10,USD,g.jpg\n",
    )
    rows = {r.listing_id: r for r in iter_listings(path)}
    assert rows["A"].error is None and rows["A"].notes == []
    assert rows["(line 3)"].error == "line 3: missing listing_id"
    assert rows["C"].seller_id is None and [code for code, _ in rows["C"].notes] == ["seller_missing"]
    assert rows["D"].price is None and [code for code, _ in rows["D"].notes] == ["price_unreadable"]
    assert rows["E"].error == "line 6: no image path given"
    assert [code for code, _ in rows["F"].notes] == ["extra_values"]
    assert "\u05e9\u05dc\u05d5\u05dd" in rows["G"].title
    assert [r.row for r in iter_listings(path)] == list(range(7))


def test_invalid_json_lines_are_row_errors(tmp_path):
    path = write(tmp_path / "l.jsonl", '{"listing_id": "A", "image": "a.jpg"}\n{not json\n[1, 2]\n')
    rows = list(iter_listings(path))
    assert rows[0].error is None
    assert "invalid JSON" in rows[1].error and rows[1].line == 2
    assert "not an object" in rows[2].error


def test_file_level_problems_are_clear_errors(tmp_path):
    with pytest.raises(TableError, match="is empty"):
        list(iter_listings(write(tmp_path / "empty.csv", "")))
    with pytest.raises(TableError, match="missing column"):
        list(iter_listings(write(tmp_path / "cols.csv", "id,picture\n1,a.jpg\n")))
    with pytest.raises(TableError, match="unknown table format"):
        list(iter_listings(write(tmp_path / "l.xlsx", "x")))
    with pytest.raises(TableError, match="not UTF-8"):
        list(iter_listings(write(tmp_path / "latin.csv", HEADER + "A,s,caf\xe9,1,USD,a.jpg\n", encoding="latin-1")))
    with pytest.raises(TableError, match="not a readable Parquet"):
        list(iter_listings(write(tmp_path / "bad.parquet", "nope")))
    with pytest.raises(TableError, match="not found"):
        list(iter_listings(tmp_path / "absent.csv"))
    assert list(iter_listings(write(tmp_path / "header.csv", HEADER))) == []


def test_image_folder_listing_ids_are_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jpg", "a.png", "sub/c.webp", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    rows = list(iter_listings(tmp_path))
    assert [r.listing_id for r in rows] == ["a.png", "b.jpg", "sub/c.webp"]
    assert all(r.image == r.listing_id and r.price is None for r in rows)


def test_catalog_collects_every_bad_row(tmp_path):
    path = write(
        tmp_path / "cat.csv",
        "brand,product_id,image,price,currency,title\n"
        "B,P1,a.jpg,10,usd,Bag\n"
        "B,,b.jpg,10,USD,\n"
        "B,P3,c.jpg,free,USD,\n"
        "B,P4,d.jpg,0,USD,\n",
    )
    rows, errors = read_catalog(path)
    assert [(r.product_id, r.currency) for r in rows] == [("P1", "USD")]
    assert errors == [
        "cat.csv line 3: empty product_id",
        "cat.csv line 4: price 'free' is not a number",
        "cat.csv line 5: price must be above zero",
    ]


def test_catalog_title_is_optional(tmp_path):
    path = write(tmp_path / "cat.csv", "brand,product_id,image,price,currency\nB,P1,a.jpg,10,USD\n")
    rows, errors = read_catalog(path)
    assert errors == [] and rows[0].title == ""


def test_authorized_sellers(tmp_path):
    path = write(tmp_path / "a.csv", "brand,seller_id\nB,s1\nB,s2\nC,s1\n")
    assert read_authorized(path) == {"B": {"s1", "s2"}, "C": {"s1"}}
    with pytest.raises(TableError, match="line 2"):
        read_authorized(write(tmp_path / "b.csv", "brand,seller_id\nB,\n"))


# --- fuzzing: any file gives rows or one clean TableError, never another exception ------------
# A TableError refuses the whole table, so it is accepted only for what is wrong with the whole
# file (no header, a missing column, not UTF-8, not Parquet): a bad cell is one row's business.

COLUMNS = ["listing_id", "seller_id", "title", "price", "currency", "image"]
CELL = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "nan", "-1", "1e400", "1,234.5", "=1+1", '"', "\r\n", "\u202e", "\x00", "﻿"]),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


def read_everything(path):
    """What a scan does with a table before it embeds anything."""
    columns = table_columns(path)
    count_rows(path)
    rows = list(iter_listings(path))
    assert [r.row for r in rows] == list(range(len(rows)))
    for r in rows:
        assert isinstance(r.listing_id, str) and r.listing_id
        assert r.price is None or (0 <= r.price and r.price == r.price)
        assert r.error is None or isinstance(r.error, str)
    return columns, rows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.lists(st.sampled_from([*COLUMNS, "extra", "", "listing_id "]), max_size=8),
    body=st.lists(st.lists(CELL, max_size=8), max_size=6),
    delimiter=st.sampled_from([",", ";", "\t"]),
    bom=st.booleans(),
)
def test_fuzzed_csv_gives_rows_or_a_clean_error(tmp_path, header, body, delimiter, bom):
    path = tmp_path / "fuzz.csv"
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(body)
    names = {name.strip() for name in header}
    if {"listing_id", "image"} <= names:  # a usable header: whatever the cells hold, the table is read
        _, rows = read_everything(path)
        assert len(rows) == sum(any(cell.strip() for cell in row) for row in body)  # one per record, blank ones skipped
        return
    with pytest.raises(TableError, match="is empty|is missing column"):
        read_everything(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".jsonl", ".parquet"]))
def test_fuzzed_bytes_give_rows_or_a_clean_error(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    headed = suffix == ".csv" and data[:1] != b"\x00"
    path.write_bytes(HEADER.encode() + data if headed else data)
    try:
        read_everything(path)
    except TableError as exc:
        whole_file = {".csv": "not UTF-8" if headed else "not UTF-8|is empty|is missing column",
                      ".jsonl": "not UTF-8", ".parquet": "not a readable Parquet"}[suffix]
        assert re.search(whole_file, str(exc)), str(exc)


JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.one_of(JSON_VALUE, st.dictionaries(st.sampled_from(COLUMNS), JSON_VALUE)), max_size=6))
def test_fuzzed_json_lines_give_one_row_each(tmp_path, records):
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    _, rows = read_everything(path)
    assert len(rows) == len(records)


def test_a_giant_field_is_one_bad_row_not_a_failed_table(tmp_path):
    long_title, giant_title = "x" * 300_000, "y" * 2_000_000
    path = write(tmp_path / "l.csv", HEADER + f"A,s,{long_title},1,USD,a.jpg\nB,s,{giant_title},1,USD,b.jpg\n"
                 "C,s,ok,1,USD,c.jpg\n")
    rows = list(iter_listings(path))
    assert [r.listing_id for r in rows] == ["A", "(line 3)", "C"]
    assert rows[0].error is None and len(rows[0].title) == 10_000  # long text is cut, not refused
    assert "malformed CSV row (field larger than field limit" in rows[1].error
    assert rows[2].error is None
