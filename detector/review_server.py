"""The review workbench: a local web app on a finished scan (`counterfeit review serve OUT_DIR`).

Starlette serves one page (``templates/review.html`` with ``static/review.js``) and the JSON API it
uses, which scripts may use too:

* ``GET /api/queue`` — the queue (:mod:`detector.review_queue`) with each item's current label;
  ``?brand=``, ``?state=`` (visual state), ``?section=flagged`` (the flags) or ``sample`` (every
  listing of the review sample, flagged or not), ``?offset=``, ``?limit=`` narrow it;
* ``POST /api/labels`` — ``{"listing_id", "label": "counterfeit"|"genuine"|"unsure", "reviewer"}``,
  answered only once the label is on disk (:mod:`detector.labels`);
* ``GET /api/labels`` — every listing's latest label; ``GET /api/labels/{listing_id}`` its history;
* ``GET /img/{listing_id}/photo|reference`` — a resized copy of a file the decision names.

Every request needs the token: ``Authorization: Bearer TOKEN``, or the cookie a browser gets
when it first opens ``/?token=TOKEN``. A change made with the cookie must also carry the page's
CSRF token in ``X-CSRF-Token`` and, where the browser sends one, a same-origin ``Origin``. Every
response carries a Content-Security-Policy that allows only this server's own script, style and
images; the page builds its content with ``textContent``, so no listing text is ever markup.
A body over ``MAX_BODY`` is refused before it is read (413), a body that is not JSON the parser can
take (nesting too deep included) is a 400, and a body left silent for ``web.IDLE_S`` is a 408
(:mod:`detector.web`).
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import secrets
import threading
from hashlib import sha256
from pathlib import Path
from typing import Iterator

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from detector import web
from detector.errors import UserError
from detector.labels import LABELS, LabelStore
from detector.outputs import printable
from detector.report import make_thumbnail
from detector.review_queue import Queue, load_queue

COOKIE = "counterfeit_review"
IMAGE_SIZE = 720
IMAGE_FOLDER = "review/images"
MAX_LIMIT = 5_000
MAX_BODY = 16_384
STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"review.js": "text/javascript", "review.css": "text/css"}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
                               " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
SIGN_IN = ("<!doctype html><meta charset=utf-8><title>Sign-in needed</title><h1>Sign-in needed</h1><p>This review workbench needs its"
           " token. Open the address <code>counterfeit review serve</code> printed (it ends in"
           " <code>?token=…</code>).</p>")


def new_token() -> str:
    return secrets.token_urlsafe(24)


class SecurityHeaders:
    """ASGI middleware: the same protective headers on every response, errors included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


class Workbench:
    """The app's state: the scan's queue and label store, and the secrets that guard them."""

    def __init__(self, out_dir: Path, token: str):
        if not token:
            raise UserError("--token must not be empty")
        self.out_dir = Path(out_dir)
        self.queue: Queue = load_queue(self.out_dir)
        self.store = LabelStore(self.out_dir)
        self.token = token
        self.csrf = hmac.new(token.encode(), b"counterfeit-review-csrf", sha256).hexdigest()
        self.lock = threading.Lock()
        env = Environment(loader=PackageLoader("detector", "templates"), autoescape=select_autoescape(["html"]))
        self.page = env.get_template("review.html")

    # --- who is asking ------------------------------------------------------------------------

    def _valid(self, offered: str | None) -> bool:
        return bool(offered) and hmac.compare_digest(offered.encode(), self.token.encode())

    def caller(self, request: Request) -> str | None:
        """"bearer" or "cookie" for a request that holds the token, else None."""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and self._valid(header[7:].strip()):
            return "bearer"
        if self._valid(request.cookies.get(COOKIE)):
            return "cookie"
        return None

    def may_change(self, request: Request, caller: str) -> str | None:
        """Why a change must be refused (CSRF), or None. A bearer token is never sent by a browser
        on its own, so only cookie-authenticated changes need the page's CSRF token."""
        if caller == "bearer":
            return None
        if not hmac.compare_digest(request.headers.get("x-csrf-token", "").encode(), self.csrf.encode()):
            return "missing or wrong X-CSRF-Token"
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return "cross-origin request"
        return None

    # --- routes ---------------------------------------------------------------------------------

    def index(self, request: Request) -> Response:
        offered = request.query_params.get("token")
        if offered is not None:
            if not self._valid(offered):
                return HTMLResponse(SIGN_IN, status_code=401)
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
            return response
        if self.caller(request) is None:
            return HTMLResponse(SIGN_IN, status_code=401)
        return HTMLResponse(self.page.render(csrf=self.csrf, out_dir=str(self.out_dir)))

    def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return _error(404, "no such file")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    def queue_items(self, request: Request) -> Response:
        params = request.query_params
        try:
            offset = max(0, int(params.get("offset", 0)))
            limit = min(MAX_LIMIT, max(1, int(params.get("limit", 1000))))
        except ValueError:
            return _error(400, "offset and limit must be whole numbers")
        with self.lock:
            latest = self.store.latest()
        section = params.get("section") or None
        if section not in (None, "flagged", "sample"):
            return _error(400, "section must be flagged or sample")
        chosen = [item for item in self.queue.items
                  if params.get("brand") in (None, "", item["brand"]) and params.get("state") in (None, "", item["visual_state"])
                  and (section is None or (item["verdict"] == "flagged" if section == "flagged" else item["review_id"] is not None))]
        labelled = sum(item["listing_id"] in latest for item in chosen)
        page = [{**item, "label": latest[item["listing_id"]].as_record() if item["listing_id"] in latest else None,
                 "has_photo": bool(self.queue.photos.get(item["listing_id"])),
                 "has_reference": bool(self.queue.references.get(item["listing_id"]))}
                for item in chosen[offset: offset + limit]]
        return JSONResponse({"total": len(chosen), "labelled": labelled, "offset": offset, "items": page,
                             "brands": self.queue.brands, "states": self.queue.states,
                             "labels": list(LABELS)})

    async def add_label(self, request: Request) -> Response:
        caller = self.caller(request)
        refused = self.may_change(request, caller)
        if refused:
            return _error(403, refused)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(415, "send JSON (Content-Type: application/json)")
        try:
            data = web.read_json(await request.body())
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(data, dict):
            return _error(400, 'send an object: {"listing_id", "label", "reviewer"}')
        listing_id, label, reviewer = data.get("listing_id"), data.get("label"), data.get("reviewer")
        if not isinstance(listing_id, str) or listing_id not in self.queue.by_id:
            return _error(404, "no such listing in this review queue")
        if label not in LABELS:
            return _error(422, f"label must be one of {', '.join(LABELS)}")
        if not isinstance(reviewer, str) or not reviewer.strip() or len(reviewer) > 200 or printable(reviewer) != reviewer:
            return _error(422, "reviewer must be a name of 1 to 200 characters, none of them a control character")
        saved = await run_in_threadpool(self._save, listing_id, label, reviewer.strip())
        return JSONResponse(saved.as_record(), status_code=201)

    def _save(self, listing_id: str, label: str, reviewer: str):
        with self.lock:
            return self.store.add(listing_id, label, reviewer)

    def latest_labels(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse({"labels": [label.as_record() for label in self.store.latest().values()]})

    def label_history(self, request: Request) -> Response:
        listing_id = request.path_params["listing_id"]
        if listing_id not in self.queue.by_id:
            return _error(404, "no such listing in this review queue")
        with self.lock:
            return JSONResponse({"listing_id": listing_id, "history": [x.as_record() for x in self.store.history(listing_id)]})

    def image(self, request: Request) -> Response:
        listing_id, which = request.path_params["listing_id"], request.path_params["which"]
        files = {"photo": self.queue.photos, "reference": self.queue.references}.get(which)
        if files is None or listing_id not in self.queue.by_id:
            return _error(404, "no such image")
        made = make_thumbnail(files.get(listing_id), self.out_dir, IMAGE_SIZE, IMAGE_FOLDER)
        if made is None:
            return _error(404, "this image cannot be shown (missing or unreadable)")
        return FileResponse(self.out_dir / made, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(bench: Workbench, *, idle_s: float = web.IDLE_S):
    """The ASGI app of a workbench (see the module docstring for its routes); ``idle_s``: how
    long a started body may stay silent (408)."""

    def guarded(endpoint):
        async def handler(request: Request) -> Response:
            if bench.caller(request) is None:
                return _error(401, "missing or wrong token")
            if inspect.iscoroutinefunction(endpoint):
                return await endpoint(request)
            return await run_in_threadpool(endpoint, request)

        return handler

    app = Starlette(routes=[
        Route("/", bench.index),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/static/{name}", guarded(bench.static)),
        Route("/api/queue", guarded(bench.queue_items)),
        Route("/api/labels", guarded(bench.add_label), methods=["POST"]),
        Route("/api/labels", guarded(bench.latest_labels), methods=["GET"]),
        Route("/api/labels/{listing_id:path}", guarded(bench.label_history)),
        Route("/img/{listing_id:path}/{which}", guarded(bench.image)),
    ], exception_handlers=web.limit_handlers(lambda status, code, message: _error(status, message)))
    limited = web.Limits(app, lambda scope: MAX_BODY, lambda code, message: {"error": message}, idle_s)
    return SecurityHeaders(limited)


@contextlib.contextmanager
def running(bench: Workbench) -> Iterator[str]:
    """The workbench served from a background thread on a free local port, for as long as the
    ``with`` block lasts; yields its base URL (tests and scripts drive it in a browser)."""
    with web.running(create_app(bench)) as url:
        yield url
