"""The ``counterfeit`` command line: thin wrappers that parse options, call the library, and print.

Every error a user can cause is printed as one line (``error: …``) with exit status 2; no
traceback. Set COUNTERFEIT_DEBUG=1 to see tracebacks of unexpected failures.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from detector.embedders import available_embedders
from detector.errors import UserError
from detector.settings import BACKENDS, DEVICES, ENGINES, INDEX_TYPES, LIMITS, SCAN_BATCH, SCREEN, TOP_K, choices

app = typer.Typer(
    help=(
        "Find counterfeit listings by photo similarity to brands' authentic reference photos.\n\n"
        "Typical night: `counterfeit index build catalog.csv --out idx --authorized sellers.csv` once,"
        " then `counterfeit scan listings.csv --index idx --out scan-2026-11-23` for each dump."
        " Try `counterfeit demo` for a self-contained run."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
index_app = typer.Typer(help="Build and inspect per-brand reference indexes.", no_args_is_help=True)
app.add_typer(index_app, name="index")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


Device = choices(DEVICES, "Device")
Backend = choices(BACKENDS, "Backend")
Engine = choices(ENGINES, "Engine")
IndexKind = choices(INDEX_TYPES, "IndexKind")
BACKEND_HELP = "How the network runs: auto = ONNX Runtime on CPU when it matches torch to 1e-4, else torch."


def bounds(name: str) -> dict:
    """The ``min`` and ``max`` of a whole-number option, from detector.settings.LIMITS."""
    low, high = LIMITS[name]
    return {"min": low, "max": high}


def friendly_errors(command):
    """Print user errors as one line and exit 2; never show a traceback for them."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from index.store import IndexStoreError

        try:
            return command(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException):  # an inner command has already reported
            raise
        except (UserError, IndexStoreError) as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - last line of defence: a bug must still read clearly
            if os.environ.get("COUNTERFEIT_DEBUG"):
                raise
            err.print(
                f"[bold red]internal error:[/] {escape(type(exc).__name__)}: {escape(str(exc))}\n"
                "This is a bug; rerun with COUNTERFEIT_DEBUG=1 for a traceback and report it."
            )
            raise typer.Exit(3) from None

    return wrapper


def progress_bar() -> Progress:
    """A progress bar on stderr with rate and ETA."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def _rate(task) -> str:
    """Photos per second since the task started: work arrives a batch at a time, so rich's
    recent-window speed read tens of thousands of photos per second at each batch's end."""
    elapsed = task.elapsed
    return f"{task.completed / elapsed:,.1f} img/s" if elapsed and task.completed else ""


# --- index ------------------------------------------------------------------------------------


EMBEDDER_HELP = "Embedder: " + "; ".join(f"{name}: {summary}" for name, summary in available_embedders().items()) + "."
EMBEDDER_OVERRIDE_HELP = f"Embedder, one of {', '.join(available_embedders())}; defaults to the one that built the index."


STEP_NAMES = {"editing": "editing reference photos (first-stage levels)", "reading": "reading product words"}
"""How ``index build`` names its steps beside the progress bars."""


@index_app.command("build")
@friendly_errors
def index_build(
    catalog: Path = typer.Argument(..., help="Catalogue table (CSV, JSONL or Parquet): brand, product_id, image, price, currency[, title]. Image paths are relative to its folder."),
    out_dir: Path = typer.Option(..., "--out", help="INDEX_DIR to create or update. The previous index stays usable until the new one is complete."),
    authorized: Optional[Path] = typer.Option(None, "--authorized", help="Table of brand, seller_id: the sellers each brand authorises. Without it, the previous build's lists are kept."),
    marks: Optional[Path] = typer.Option(None, "--marks", help="Table of brand, image: each brand's registered marks (logo files: PNG with or without transparency, JPEG), relative to its folder. A photo showing a brand's mark, or its name (read by OCR; policy `[marks] words`), is that brand's product. Without it, the previous build's marks are kept."),
    background: Optional[Path] = typer.Option(None, "--background", help="Folder of unrelated photos, used only to calibrate match thresholds (more impostors, better thresholds)."),
    embedder: str = typer.Option("lite0", "--embedder", help=EMBEDDER_HELP),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weights file for the embedder (resnet50: or 'torchvision' to download when online)."),
    device: Device = typer.Option(Device("auto"), "--device", help="Where the model runs."),
    backend: Backend = typer.Option(Backend("auto"), "--backend", help=BACKEND_HELP),
    index_type: IndexKind = typer.Option(IndexKind("auto"), "--index-type", help="FAISS index per brand; auto = exact Flat up to 20,000 vectors, HNSW up to 1,000,000, IVF above, IVF-PQ over --memory-budget; ivfdisk = IVF whose vectors stay in a memory-mapped file, for brands bigger than memory (docs/index.md, docs/scaling.md)."),
    memory_budget: Optional[float] = typer.Option(None, "--memory-budget", min=0.001, help="MB of vectors a brand's index may hold; a brand whose full vectors exceed it is compressed (IVF-PQ, about 50x smaller, lower recall)."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help="Build from the good rows when some rows are bad (they are listed)."),
    allow_outside_paths: bool = typer.Option(False, "--allow-outside-paths", help="Trust image paths that are absolute or lead outside the catalogue's folder."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", **bounds("batch_size"), show_default=False, help=f"Images per model batch. Default: {SCAN_BATCH['cuda']} on CUDA, {SCAN_BATCH['cpu']} on the CPU."),
    workers: Optional[int] = typer.Option(None, "--workers", **bounds("workers"), show_default=False, help="Threads reading, decoding and taking keypoints while the model runs. Default: one per CPU core."),
) -> None:
    """Embed a brand catalogue's reference photos into per-brand FAISS indexes.

    Re-running on an updated catalogue embeds only photos the index does not hold yet;
    products removed from the catalogue disappear from the index.
    """
    from detector.api import build_index

    with progress_bar() as bar:
        task = bar.add_task("embedding catalogue", total=None, rate="")

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            bar.update(task, rate=_rate(bar.tasks[task]))

        checks = None

        def calibrate(done: int, total: int) -> None:
            nonlocal checks
            if checks is None:
                checks = bar.add_task("calibrating (impostor checks)", total=total, rate="")
            bar.update(checks, completed=done)

        steps: dict[str, int] = {}

        def step(name: str, done: int, total: int) -> None:
            if name not in steps:
                steps[name] = bar.add_task(STEP_NAMES.get(name, name), total=total, rate="")
            bar.update(steps[name], completed=done)

        info = build_index(catalog, out_dir, authorized=authorized, marks=marks, background=background, embedder=embedder,
                           weights=weights, device=device.value, backend=backend.value, index_type=index_type.value,
                           memory_budget_mb=memory_budget, skip_bad_rows=skip_bad_rows,
                           allow_outside_paths=allow_outside_paths, batch_size=batch_size, workers=workers,
                           on_progress=advance, on_calibration=calibrate, on_step=step)
    _print_build(info)


def _print_build(info) -> None:
    for note in info.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    for skipped in info.skipped:
        err.print(f"[yellow]skipped:[/] {escape(skipped)}")
    out.print(
        f"Index written to {escape(str(info.path))}: {info.brands} brand(s), {info.products} product(s),"
        f" {info.photos} photo(s); embedded {info.embedded}, reused {info.reused}."
    )


@index_app.command("info")
@friendly_errors
def index_info(
    index_dir: Path = typer.Argument(..., help="INDEX_DIR made by `counterfeit index build`."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Show what an index holds: embedder, brands, counts, thresholds, first-stage levels, and when it was built."""
    from index.store import load_index, verify_files

    files = verify_files(index_dir)  # every data file, the FAISS indexes included
    index = load_index(index_dir, load_indexes=False)
    manifest = index.manifest
    if as_json:
        out.print_json(json.dumps(manifest))
        return
    fp = manifest["embedder"]
    out.print(f"[bold]{escape(str(index_dir))}[/]  format v{manifest['format_version']}")
    out.print(f"embedder   {escape(fp['name'])} ({escape(fp['arch'])}, {fp['dim']}-d, fingerprint {manifest['embedder_id']})")
    out.print(f"built      {manifest['created']}   updated {manifest['updated']}")
    c = manifest["counts"]
    out.print(f"holds      {c['brands']} brands, {c['products']} products, {c['vectors']} photos, {c['authorized_sellers']} authorised sellers")
    table = Table("brand", "products", "photos", "sellers", "index", "threshold", "calibrated from",
                  "new photos need", "from", "first stage level")
    for brand, entry in manifest["brands"].items():
        cal = entry.get("calibration", {})
        source = f"{cal.get('impostors', 0)} impostors ({cal.get('source', '?')})"
        needs = cal.get("product_inliers")
        table.add_row(
            escape(brand), str(entry["products"]), str(entry["vectors"]), str(entry["authorized_sellers"]),
            entry["index_kind"], f"{entry['threshold']:.3f}", source,
            "-" if needs is None else f"{needs} keypoints",
            f"{cal.get('product_impostors', 0)} impostors ({cal.get('product_source', '?')})" if needs else "",
            "- (rebuild to fit)" if cal.get("gate_level") is None
            else f"{cal['gate_level']:.3f} ({cal.get('gate_edits', 0)} edits, {cal.get('gate_source', '?')})",
        )
    out.print(table)
    marks = [(brand, mark) for brand, entry in index.brands.items() for mark in entry.marks]
    if marks:
        listed = Table("brand", "mark", "keypoints", "in the brand's photos", "name read in them",
                       "shape level (outline / inside)", title="registered marks")
        for brand, mark in marks:
            level, hull = mark.get("shape_level"), mark.get("hull_level")
            photos = index.brands[brand].vectors.shape[0]
            listed.add_row(escape(brand), escape(mark["image"]), str(mark["keypoints"]),
                           f"{mark.get('in_references', 0)} of {photos}",
                           f"{mark.get('words_in_references', 0)} of {photos}",
                           "-" if level is None else f"{level:.3f}" + ("" if hull is None else f" / {hull:.3f}"))
        out.print(listed)
    else:
        out.print("marks      none registered (index build --marks MARKS.csv)")
    out.print(f"checksums  all {files} data files verified against the manifest")


# --- lookup -----------------------------------------------------------------------------------


@app.command("lookup")
@friendly_errors
def lookup(
    photo: Path = typer.Argument(..., help="The suspicious photo."),
    index_dir: Path = typer.Option(..., "--index", help="INDEX_DIR made by `counterfeit index build`."),
    price: Optional[float] = typer.Option(None, "--price", help="The listing's price; compared with the catalogue price."),
    currency: Optional[str] = typer.Option(None, "--currency", help="Currency of --price (required with it), e.g. USD."),
    seller: Optional[str] = typer.Option(None, "--seller", help="The listing's seller id; checked against the brand's authorised sellers."),
    title: Optional[str] = typer.Option(None, "--title", help="The listing's title; searched for counterfeit cues."),
    top_k: int = typer.Option(TOP_K, "--top-k", **bounds("top_k"), help="How many matches to show."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Policy TOML overriding the defaults (see detector/default_policy.toml)."),
    embedder: Optional[str] = typer.Option(None, "--embedder", help=EMBEDDER_OVERRIDE_HELP),
    device: Device = typer.Option(Device("auto"), "--device", help="Where the model runs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (verdict, visual_state, findings with codes, matches) instead of a table."),
) -> None:
    """Is this photo one of ours? Show the closest protected products, and a verdict when listing
    facts (--price with --currency, --seller, --title) are given."""
    from detector.api import Detector

    if price is not None and not currency:
        raise UserError("--price needs --currency (for example --currency USD)")
    with Detector.open(index_dir, policy=policy_file, device=device.value, embedder=embedder) as detector:
        result = detector.lookup(photo, price=price, currency=currency, seller=seller, title=title, top_k=top_k)
    if as_json:
        sys.stdout.write(json.dumps(result.as_json(), ensure_ascii=False) + "\n")
        return
    table = Table("#", "brand", "product", "similarity", "threshold", "keypoints", "outline", "price", "reference photo",
                  title=f"Closest protected products to {escape(str(photo))}")
    for rank, match in enumerate(result.matches, start=1):
        style = "bold" if match.similarity >= match.threshold else "dim"
        price_text = "" if match.price is None else f"{match.price:,.2f} {escape(match.currency or '')}"
        table.add_row(
            str(rank), escape(match.brand), escape(match.product_id), f"[{style}]{match.similarity:.3f}[/]",
            f"{match.threshold:.3f}", "" if match.inliers is None else str(match.inliers),
            "" if match.alignment is None else f"{match.alignment:.0%}", price_text, escape(match.reference_image or ""),
        )
    out.print(table)
    if result.judged:
        colour = {"flagged": "bold red", "clear": "bold green"}.get(result.verdict, "bold yellow")
        out.print(f"Verdict: [{colour}]{result.verdict.upper()}[/] (risk score {result.score:.2f})")
    for reason in result.reasons:
        out.print(f"  - {escape(reason)}")


# --- scan -------------------------------------------------------------------------------------


@app.command("scan")
@friendly_errors
def scan(
    listings: Path = typer.Argument(..., help="Listing dump: CSV, JSONL or Parquet with listing_id, seller_id, title, price, currency, image (paths relative to its folder; several rows per listing for several photos), or a bare folder of images (visual evidence only)."),
    index_dir: Path = typer.Option(..., "--index", help="INDEX_DIR made by `counterfeit index build`."),
    out_dir: Path = typer.Option(..., "--out", help="OUT_DIR for decisions.jsonl, flagged.csv, summary.json and report.html. Rerunning into it resumes."),
    authorized: Optional[Path] = typer.Option(None, "--authorized", help="brand, seller_id table; replaces the index's authorised sellers for the brands it names."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Policy TOML overriding the defaults (see detector/default_policy.toml)."),
    device: Device = typer.Option(Device("auto"), "--device", help="Where the model runs."),
    backend: Backend = typer.Option(Backend("auto"), "--backend", help=BACKEND_HELP),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", **bounds("batch_size"), show_default=False, help=f"Photos per batch; each is a checkpoint and holds up to six views per photo. Default: {SCAN_BATCH['cpu']} when the model runs on the CPU, {SCAN_BATCH['cuda']} on CUDA (docs/performance.md#gpu-path)."),
    workers: Optional[int] = typer.Option(None, "--workers", **bounds("workers"), show_default=False, help="Threads decoding, taking keypoints and verifying while the model runs. Default: one per CPU core (with --engine ray, 2 per actor)."),
    top_k: int = typer.Option(TOP_K, "--top-k", **bounds("top_k"), help="Nearest references kept per photo."),
    embedder: Optional[str] = typer.Option(None, "--embedder", help=EMBEDDER_OVERRIDE_HELP),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Embedding cache file (default: $COUNTERFEIT_CACHE_DIR or ~/.cache/counterfeit-detector/embeddings.sqlite)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Embed every photo; read and write no cache."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip geometric verification (similarity alone decides the visual match)."),
    screen: bool = typer.Option(SCREEN, "--screen/--no-screen", help="The first stage: each photo's whole view is searched, and a photo below every brand's gate level (fitted at index build on the catalogue's own photos, edited as sellers edit them) and showing no registered mark ends there: no keypoints, window views or verification; its decision says `screened_out`. On a night of mostly unprotected photos it stops most of them; --no-screen runs every stage on every photo (docs/performance.md#screening)."),
    allow_outside_paths: bool = typer.Option(False, "--allow-outside-paths", help="Trust image paths that are absolute or lead outside the listing table's folder."),
    restart: bool = typer.Option(False, "--restart", help="Discard OUT_DIR's earlier progress instead of resuming it."),
    engine: Engine = typer.Option(Engine("local"), "--engine", help="local: this process. ray: a Ray Data actor pool (pip install -e '.[ray]'); same decisions, same outputs; no embedding cache."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (e.g. ray://head:10001 or auto); default: start Ray on this machine."),
    ray_actors: Optional[int] = typer.Option(None, "--ray-actors", **bounds("ray_actors"), help="Ray actors embedding in parallel; default: one per GPU, else one per two CPUs."),
    history: Optional[Path] = typer.Option(None, "--history", help="Scan history file (SQLite, created when missing): earlier nights' flags raise the risk of repeat offenders and reveal comebacks (new seller ids re-using flagged photos); this night is appended. See `counterfeit history --help`."),
    night: Optional[str] = typer.Option(None, "--night", help="The night this dump belongs to, as YYYY-MM-DD (default: today, UTC); used with --history."),
) -> None:
    """Scan a night's listings: flag those whose photo matches a protected product and whose
    price, seller or title is inconsistent with it. Every listing gets exactly one decision.

    A killed scan resumes when the same command is run again. With --engine ray the
    reading, decoding, embedding and search run on a Ray cluster; deciding and writing stay here.
    """
    from detector.api import Detector

    if engine == Engine("ray") and cache is not None:
        err.print("[yellow]note:[/] --engine ray does not use the embedding cache; --cache is ignored")
    with Detector.open(index_dir, policy=policy_file, device=device.value, backend=backend.value,
                       cache=False if no_cache else (cache or True), embedder=embedder) as detector:
        _run_scan(detector, listings, out_dir, authorized=authorized, batch_size=batch_size, workers=workers,
                  top_k=top_k, verify=not no_verify, screen=screen, allow_outside_paths=allow_outside_paths, restart=restart,
                  engine=engine.value, address=address, ray_actors=ray_actors, history=history, night=night)


def _run_scan(detector, listings: Path, out_dir: Path, **options) -> None:
    """Scan with a progress bar, then print what the scan did and where its outputs are."""
    with progress_bar() as bar:
        task = bar.add_task("scanning", total=None, rate="")

        def advance(done: int, total: int | None) -> None:
            if bar.tasks[task].total is None and total:
                bar.update(task, total=total)
            bar.update(task, completed=done)
            bar.update(task, rate=_rate(bar.tasks[task]))

        s = detector.scan(listings, out_dir, on_progress=advance, **options)
    lo, hi = s.flagged_per_10000_ci95
    out.print(
        f"{s.listings:,} listings: [bold red]{s.flagged:,} flagged[/], {s.clear:,} clear, "
        f"[yellow]{s.errors:,} errors[/]  ({s.flagged_per_10000:.1f} flagged per 10,000, 95% CI {lo:.1f}–{hi:.1f})"
    )
    out.print(
        f"{s.photos_this_run:,} photos this run: {s.embedded:,} embedded, {s.from_cache:,} from cache,"
        f" {s.images_per_second or 0:.1f} img/s; {s.elapsed_seconds:.1f} s in all" + (" (resumed)" if s.resumed else "")
    )
    if s.screened_out:
        out.print(f"{s.screened_out:,} {'photo' if s.screened_out == 1 else 'photos'} matched nothing at the first stage"
                  " (screened_out); --no-screen runs every stage")
    if s.cache_damaged:
        path = detector.cache_path
        err.print(
            f"[yellow]warning:[/] the embedding cache {escape(str(path))} is damaged"
            f" ({escape(s.cache_damaged)}); this run stopped using it and embedded afresh."
            f" Delete it (it is rebuilt automatically): rm -f {escape(' '.join(shlex.quote(f'{path}{x}') for x in ('', '-wal', '-shm')))}"
        )
    h = s.summary["history"]
    if h:
        out.print(f"history {escape(h['file'])}, night {h['night']}: {h['repeat_offenders']} repeat offender(s),"
                  f" {h['comeback_sellers']} probable comeback seller(s), {h['cleared_by_review']} listing(s) cleared by review")
    for name in ("decisions.jsonl", "flagged.csv", "summary.json"):
        out.print(f"  {escape(str(out_dir / name))}")
    out.print(f"Report: {escape(str(s.report))}")


# --- history ----------------------------------------------------------------------------------


history_app = typer.Typer(help="Read the scan history that `scan --history FILE` appends to: sellers' records and brands' trends.",
                          no_args_is_help=True)
app.add_typer(history_app, name="history")


def _open_history(path: Path):
    from detector.history import ScanHistory

    if not path.is_file():
        raise UserError(f"no scan history at {path}; scans write one with --history {path}")
    return ScanHistory(path)


@history_app.command("seller")
@friendly_errors
def history_seller(
    history: Path = typer.Argument(..., help="The history file given to `scan --history`."),
    seller_id: str = typer.Argument(..., help="The seller to show."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Policy TOML; its [history] link_similarity decides which photos are the same."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """A seller's record: listings and flags per night, comebacks, and the other sellers it
    shares photos with (same file, or near-duplicate), with one evidence pair each."""
    from detector.policy import load_policy

    store = _open_history(history)
    try:
        record = store.seller(seller_id, load_policy(policy_file).history.link_similarity)
    finally:
        store.close()
    if as_json:
        out.print_json(json.dumps(record))
        return
    if not record["nights"]:
        out.print(f"seller {escape(seller_id)!r} has no listings in {escape(str(history))}")
        return
    table = Table("night", "listings", "flagged", "flagged brands")
    for n in record["nights"]:
        table.add_row(n["night"], str(n["listings"]), str(n["flagged"]), escape(", ".join(n["brands"])))
    out.print(table)
    for c in record["comeback_of"]:
        out.print(f"probable comeback of {escape(c['comeback_of'])!r}: listing {escape(c['listing_id'])} on {c['night']}")
    if record["linked_sellers"]:
        linked = Table("linked seller", "shared photos", "evidence pair", "similarity")
        for item in record["linked_sellers"]:
            e = item["evidence"]
            linked.add_row(escape(item["seller_id"]), str(item["shared_photos"]),
                           escape(f"{e['listing_id']} ({e['night']}) ~ {e['other_listing_id']} ({e['other_night']})"),
                           "same file" if e["same_file"] else f"{e['similarity']:.3f}")
        out.print(linked)
    else:
        out.print("shares no photos with other sellers")


@history_app.command("brand")
@friendly_errors
def history_brand(
    history: Path = typer.Argument(..., help="The history file given to `scan --history`."),
    brand: Optional[str] = typer.Argument(None, help="A brand; leave out for all listings."),
    as_json: bool = typer.Option(False, "--json", help="Print the trend as JSON."),
) -> None:
    """A brand's trend across nights: listings whose photo matched it, how many were flagged,
    and flags per 10,000 (without a brand: every decided listing)."""
    store = _open_history(history)
    try:
        trend = store.trend(brand)
    finally:
        store.close()
    if as_json:
        out.print_json(json.dumps(trend))
        return
    if not trend:
        out.print(f"no recorded nights{' for ' + escape(brand) if brand else ''} in {escape(str(history))}")
        return
    table = Table("night", "listings" if brand is None else f"matched {escape(brand)}", "flagged", "per 10,000")
    for t in trend:
        table.add_row(t["night"], f"{t['listings']:,}", f"{t['flagged']:,}", f"{t['flagged_per_10000']:.1f}")
    out.print(table)


# --- review sampling and prevalence -----------------------------------------------------------


@app.command("sample")
@friendly_errors
def sample(
    out_dir: Path = typer.Argument(..., help="OUT_DIR of a finished `counterfeit scan`."),
    n: int = typer.Option(400, "--n", min=1, max=1_000_000, help="Listings to review in all."),
    flagged_share: float = typer.Option(0.25, "--flagged-share", min=0.0, max=1.0, help="Share of the sample drawn from flagged listings (the rest from cleared ones, where the misses are)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same scan and seed give the same sample."),
) -> None:
    """Draw a stratified random sample of a scan's decisions for human review.

    Strata are (verdict, closest brand). Writes OUT_DIR/review/sample.csv: reviewers fill its
    `label` column with counterfeit or genuine (blank: not reviewed), then run
    `counterfeit prevalence OUT_DIR --labels REVIEWED.csv`. See docs/metrics.md.
    """
    from detector.sampling import SAMPLE_FILE, REVIEW_DIR, draw_sample

    design = draw_sample(out_dir, n, seed, flagged_share)
    table = Table("stratum", "listings", "sampled")
    for key, stratum in design["strata"].items():
        table.add_row(escape(key.replace("|", ", ")), f"{stratum['population']:,}", str(stratum["sampled"]))
    out.print(table)
    excluded = sum(design["excluded"].values())
    if excluded:
        out.print(f"not sampled: {excluded:,} decision(s) with verdict {', '.join(sorted(design['excluded']))} (nothing to judge)")
    out.print(f"{design['sampled']} listings to review: {escape(str(Path(out_dir) / REVIEW_DIR / SAMPLE_FILE))}")


@app.command("prevalence")
@friendly_errors
def prevalence(
    out_dir: Path = typer.Argument(..., help="OUT_DIR of the scan the sample was drawn from."),
    labels: Path = typer.Option(..., "--labels", help="The reviewed sample: a CSV with review_id and label (counterfeit/genuine; blank = not reviewed)."),
    as_json: bool = typer.Option(False, "--json", help="Print the estimates as JSON."),
) -> None:
    """Turn reviewers' labels into counterfeit rates with 95% intervals.

    Prints the counterfeit rate per 10,000 listings, the rate the scanner missed, and the
    scanner's precision and recall, each weighted for the stratified sample (docs/metrics.md).
    Also writes OUT_DIR/review/prevalence.json.
    """
    from detector.prevalence import prevalence as estimate

    result = estimate(out_dir, labels)
    if as_json:
        out.print_json(json.dumps(result))
        return
    out.print(f"{result['labels']} labelled of {result['sampled']} sampled; {result['listings']:,} listings decided,"
              f" {result['flagged']:,} flagged")
    table = Table("metric", "estimate", "95% interval")
    for key, name, unit in (("counterfeit_per_10000", "counterfeits per 10,000 listings", ""),
                            ("missed_per_10000", "missed counterfeits per 10,000 listings", ""),
                            ("precision", "precision of flags", "%"), ("recall", "recall (counterfeits flagged)", "%")):
        got = result[key]
        if got is None:
            table.add_row(name, "n/a", "")
        elif unit:
            table.add_row(name, f"{100 * got['value']:.1f}%", f"{100 * got['low']:.1f}% – {100 * got['high']:.1f}%")
        else:
            table.add_row(name, f"{got['value']:.1f}", f"{got['low']:.1f} – {got['high']:.1f}")
    out.print(table)


# --- review workbench -------------------------------------------------------------------------

review_app = typer.Typer(
    help="Review a finished scan's flags in a browser, and export the labels (docs/review.md).",
    no_args_is_help=True,
)
app.add_typer(review_app, name="review")


@review_app.command("serve")
@friendly_errors
def review_serve(
    out_dir: Path = typer.Argument(..., help="OUT_DIR of a finished `counterfeit scan` (and of `counterfeit sample`, if run)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; the default is this machine only."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port to listen on (0: any free port)."),
    token: Optional[str] = typer.Option(None, "--token", help="The access token; a random one when not given.", envvar="COUNTERFEIT_REVIEW_TOKEN"),
) -> None:
    """Serve the review workbench on a finished scan and print the address to open.

    The page shows the flagged listings, highest risk first, then the review sample: the listing
    photo beside the matched reference, the facts and the findings. Label with the keyboard
    (c counterfeit, g genuine, u unsure; j/k or arrows move). Every label is saved in
    OUT_DIR/review/labels.sqlite before the page hears back. Scripts may use the JSON API with
    `Authorization: Bearer TOKEN`. Stop with Ctrl+C; then `counterfeit review export`.
    """
    from detector.review_server import Workbench, create_app, new_token
    from detector.web import LOOPBACK, base_url, bind, serve

    secret = token if token is not None else new_token()
    bench = Workbench(out_dir, secret)
    sock = bind(host, port)
    out.print(f"Reviewing {escape(str(out_dir))}: {len(bench.queue.items):,} listing(s) in the queue.")
    if host not in LOOPBACK:
        err.print(f"[yellow]warning:[/] listening on {escape(host)}: anyone who can reach this machine and holds the token can label")
    out.print(f"Open: {base_url(sock)}/?token={secret}", soft_wrap=True)
    out.print("Press Ctrl+C to stop.")
    sys.stdout.flush()
    try:
        serve(create_app(bench), sock)
    except KeyboardInterrupt:
        pass
    saved = len(bench.store.latest())
    out.print(f"Stopped. {saved:,} listing(s) labelled in {escape(str(bench.store.path))};"
              f" next: counterfeit review export {escape(str(out_dir))} --out labels.csv")


@review_app.command("export")
@friendly_errors
def review_export(
    out_dir: Path = typer.Argument(..., help="OUT_DIR of the reviewed scan."),
    target: Path = typer.Option(..., "--out", help="CSV file to write: one row per labelled listing, its latest label."),
) -> None:
    """Write the reviewers' labels as a CSV that `counterfeit prevalence OUT_DIR --labels` reads.

    Columns: review_id (filled for listings of the review sample, which the estimate weighs),
    listing_id, label, reviewer, labelled_at (UTC), changes (how many times it was labelled).
    """
    from detector.labels import export

    count = export(out_dir, target)
    out.print(f"{count:,} labelled listing(s) written to {escape(str(target))}")
    out.print(f"Next: counterfeit prevalence {escape(str(out_dir))} --labels {escape(str(target))}")


# --- serve ------------------------------------------------------------------------------------


@app.command("serve")
@friendly_errors
def serve_checks(
    index_dir: Path = typer.Argument(..., help="INDEX_DIR made by `counterfeit index build`; a rebuild is picked up while serving."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; the default is this machine only."),
    port: int = typer.Option(8780, "--port", min=0, max=65535, help="Port to listen on (0: any free port)."),
    token: Optional[str] = typer.Option(None, "--token", help="The Bearer token clients must send; a random one (printed) when not given.",
                                        envvar="COUNTERFEIT_SERVICE_TOKEN"),
    history: Path = typer.Option(Path("history.sqlite"), "--history",
                                 help="The check log: every answered check is committed here before its answer is sent."
                                      " Give the nightly `counterfeit scan` the same --history so checks count as prior flags."),
    workers: Optional[int] = typer.Option(None, "--workers", **bounds("workers"), help="Threads decoding and verifying each of the two batches in flight (default: half the CPU cores)."),
    batch_size: int = typer.Option(SCAN_BATCH["cpu"], "--batch-size", **bounds("batch_size"), help="Most photos checked in one batch: requests waiting together share one."),
    queue: int = typer.Option(256, "--queue", min=1, max=100_000, help="Most photos waiting; beyond it requests are answered 503 with Retry-After."),
    timeout: float = typer.Option(30.0, "--timeout", min=1.0, max=3600.0, help="Seconds a request may wait for its answer."),
    screen: bool = typer.Option(SCREEN, "--screen/--no-screen", help="Let the first stage end photos far from every protected product, as a scan does."),
    top_k: int = typer.Option(TOP_K, "--top-k", **bounds("top_k"), help="Nearest references kept per photo."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Policy TOML overriding the defaults (see detector/default_policy.toml)."),
    device: Device = typer.Option(Device("auto"), "--device", help="Where the model runs."),
) -> None:
    """Check listings as they are posted: an HTTP service over one warm detector (docs/service.md).

    `POST /v1/check` takes a multipart photo and optional facts (listing_id, seller, price,
    currency, title) and answers the decision `counterfeit lookup --json` gives, as JSON;
    `POST /v1/check-batch` takes up to 64; `GET /v1/index`, `GET /openapi.json`, `GET /healthz`.
    Every request needs `Authorization: Bearer TOKEN`. Example:
    `curl -H "Authorization: Bearer $TOKEN" -F photo=@photo.jpg -F price=19 -F currency=USD http://127.0.0.1:8780/v1/check`.
    Stop with Ctrl+C.
    """
    from detector.api import Detector
    from detector.check_queue import CheckQueue
    from detector.service import Service, create_app, new_token
    from detector.settings import service_workers
    from detector.web import LOOPBACK, base_url, bind, serve

    workers = service_workers() if workers is None else workers
    if history.exists() and not history.is_file() or not history.parent.is_dir():
        raise UserError(f"cannot keep the check log at {history}: its folder must exist and it must be a file")
    secret = token if token is not None else new_token()
    if not secret:
        raise UserError("--token must not be empty")

    def open_detector():
        return Detector.open(index_dir, policy=policy_file, device=device.value, cache=False, workers=workers)

    sock = bind(host, port)
    with CheckQueue(open_detector, index_dir, history, batch_size=batch_size, max_waiting=queue, screen=screen,
                    top_k=top_k) as checks:
        counts = checks.detector.index.manifest["counts"]
        out.print(f"Serving {escape(str(index_dir))}: {counts['brands']:,} brand(s), {counts['products']:,} product(s);"
                  f" checks logged in {escape(str(history))}.")
        if host not in LOOPBACK:
            err.print(f"[yellow]warning:[/] listening on {escape(host)}: anyone who can reach this machine and holds the token can check photos")
        out.print(f"Listening on {base_url(sock)} (POST /v1/check).", soft_wrap=True)
        if token is None:
            out.print(f"Token: {secret}", soft_wrap=True)
        out.print("Press Ctrl+C to stop.")
        sys.stdout.flush()
        try:
            serve(create_app(Service(checks, secret, timeout_s=timeout)), sock)
        except KeyboardInterrupt:
            pass
    out.print("Stopped.")


# --- demo -------------------------------------------------------------------------------------


@app.command("demo")
@friendly_errors
def demo(
    out_dir: Path = typer.Option(Path("counterfeit-demo"), "--out", help="Folder for the demo data, index and scan."),
    device: Device = typer.Option(Device("auto"), "--device", help="Where the model runs."),
) -> None:
    """Run the whole job on a built-in demo data set: draw a small brand catalogue and a listing
    dump, build the index, scan the dump, and print where the report is."""
    from detector.api import Detector, build_index
    from detector.demo import make_demo_dataset

    data = make_demo_dataset(out_dir / "data")
    out.print(f"Demo data: {escape(str(data.catalog))}, {escape(str(data.listings))}")
    index_dir, scan_dir = out_dir / "index", out_dir / "scan"
    _print_build(build_index(data.catalog, index_dir, authorized=data.authorized, device=device.value))
    with Detector.open(index_dir, device=device.value, cache=out_dir / "cache.sqlite") as detector:
        _run_scan(detector, data.listings, scan_dir, restart=True)
    out.print(
        "\nNext: open the report in a browser, or try one photo:\n"
        f"  counterfeit lookup {escape(str(data.folder / 'listings' / 'D000.jpg'))} --index {escape(str(index_dir))}"
        " --price 20 --currency USD --seller shop-000"
    )


def main() -> None:
    """Console-script entry point."""
    app()
