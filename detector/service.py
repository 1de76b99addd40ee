"""Check a listing when it is posted: the HTTP service of ``counterfeit serve`` (docs/service.md).

Starlette routes on one :class:`~detector.check_queue.CheckQueue`:

* ``POST /v1/check`` — ``multipart/form-data``: a file part ``photo``, optional text parts
  ``listing_id``, ``seller``, ``price``, ``currency``, ``title``. The answer is the decision
  ``Detector.lookup`` gives for the same photo and facts (``counterfeit lookup --json``'s fields)
  with ``listing_id``, ``digest`` and ``check_id`` (its row in the check log);
* ``POST /v1/check-batch`` — a text part ``listings`` (a JSON array of up to ``MAX_BATCH``
  objects with ``photo``, the name of its file part, and the same optional facts) and the file
  parts; answered ``{"results": [...]}`` in order, a bad photo being that item's ``error``;
* ``GET /v1/index`` — the index being served: manifest id, embedder, brands and products;
* ``GET /openapi.json`` — the OpenAPI schema; ``GET /healthz`` — liveness (no token needed).

Every other route needs ``Authorization: Bearer TOKEN`` (401). The service never reads a path or
a URL from a request. A refusal is ``{"error": {"code", "message"}}`` with a 4xx status and a code
from docs/decisions.md; a request is refused before its body is read when it announces more than
the limit (:class:`detector.web.Limits`), an image is refused before decoding when it declares too
many pixels, and a full queue answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from detector import web
from detector.api import Upload
from detector.check_queue import Busy, CheckQueue, Expired
from detector.tables import MAX_FIELD

MAX_BATCH = 64
"""Listings one ``/v1/check-batch`` request may carry."""
MAX_PHOTO_BYTES = 16 * 2**20
"""The largest photo part accepted (``file_too_large`` above it)."""
MAX_TEXT_BYTES = 64 * 2**10
"""The largest text part (a fact, or a batch's ``listings``)."""
FACTS = ("listing_id", "seller", "price", "currency", "title")
IMAGE_STATUS = {"file_too_large": 413, "too_many_pixels": 413, "not_an_image": 415, "out_of_memory": 503}
"""The HTTP status of a photo refused for its error code; any other code is 422."""


def new_token() -> str:
    return secrets.token_urlsafe(24)


class Refused(Exception):
    """A request refused with ``status`` and one of docs/decisions.md's codes."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


def error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def request_limit(batch: int = MAX_BATCH) -> int:
    """The most bytes a request may send: its photos at their limit, and the text around them."""
    return batch * MAX_PHOTO_BYTES + MAX_TEXT_BYTES * (len(FACTS) + 1)


class Service:
    """The app's state: the queue, the token and the limits."""

    def __init__(self, queue: CheckQueue, token: str, *, timeout_s: float = 30.0):
        if not token:
            from detector.errors import UserError

            raise UserError("--token must not be empty")
        self.queue, self.token, self.timeout_s = queue, token, timeout_s

    def authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        offered = header[7:].strip() if header.lower().startswith("bearer ") else ""
        return bool(offered) and hmac.compare_digest(offered.encode(), self.token.encode())

    # --- routes --------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "waiting": self.queue.waiting})

    async def index(self, request: Request) -> Response:
        detector = self.queue.detector
        manifest = detector.index.manifest
        brands = [{"brand": name, "products": len({p["product_id"] for p in entry.products}), "photos": len(entry.products),
                   "marks": len(entry.marks)} for name, entry in sorted(detector.index.brands.items())]
        return JSONResponse({"manifest_id": manifest["manifest_sha256"], "updated": manifest.get("updated"),
                             "embedder": manifest["embedder"].get("name"), "brands": brands,
                             "products": sum(b["products"] for b in brands), "swaps": self.queue.swaps,
                             "swap_error": self.queue.swap_error})

    async def check(self, request: Request) -> Response:
        form = await self._form(request, max_files=1)
        upload = await _upload(form, "photo", {name: form.get(name) for name in FACTS})
        answers = await self._run([upload])
        only = answers[0]
        if "error" in only:
            return error(IMAGE_STATUS.get(only["error"]["code"], 422), only["error"]["code"], only["error"]["message"])
        return JSONResponse(only)

    async def check_batch(self, request: Request) -> Response:
        form = await self._form(request, max_files=MAX_BATCH)
        try:
            listings = web.read_json(_text(form.get("listings"), "listings"))
        except ValueError as exc:
            raise Refused(400, "bad_request", f"the listings part is not JSON: {exc}") from None
        if not isinstance(listings, list) or not listings or len(listings) > MAX_BATCH:
            raise Refused(400, "bad_request", f"listings must be a JSON array of 1 to {MAX_BATCH} objects")
        uploads, named = [], set()
        for i, item in enumerate(listings):
            if not isinstance(item, dict) or not isinstance(item.get("photo"), str):
                raise Refused(400, "bad_request", f'listings[{i}] must be an object with "photo", the name of its file part')
            if item["photo"] in named:
                raise Refused(400, "bad_request", f"listings[{i}] names the file part {item['photo']!r} a second time")
            named.add(item["photo"])
            facts = {name: item.get(name) for name in FACTS}
            uploads.append(await _upload(form, item["photo"], facts, where=f"listings[{i}]"))
        return JSONResponse({"results": await self._run(uploads)})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(OPENAPI)

    # --- helpers -------------------------------------------------------------------------------

    async def _form(self, request: Request, *, max_files: int):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "multipart/form-data":
            raise Refused(415, "wrong_type", "send multipart/form-data (curl -F photo=@file.jpg)")
        try:
            return await request.form(max_files=max_files, max_fields=len(FACTS) + 1, max_part_size=MAX_TEXT_BYTES)
        except (web.BodyTooLarge, web.BodyStalled):
            raise
        except Exception as exc:  # noqa: BLE001 - python-multipart's and Starlette's parse errors
            raise Refused(400, "bad_request", f"the multipart body cannot be read: {exc}") from None

    async def _run(self, uploads: list[Upload]) -> list[dict]:
        try:
            future = self.queue.submit(uploads, self.timeout_s)
        except Busy as exc:
            raise Refused(503, "busy", str(exc), {"retry-after": str(exc.retry_after)}) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s + 5)
        except (Expired, asyncio.TimeoutError):
            raise Refused(503, "timeout", f"no answer within {self.timeout_s:g} s; the service is overloaded",
                          {"retry-after": "1"}) from None


def _text(value, name: str) -> bytes:
    if value is None or not isinstance(value, str):
        raise Refused(400, "bad_request", f"the text part {name!r} is missing (or sent as a file)")
    return value.encode()


async def _upload(form, part: str, facts: dict, where: str = "the request") -> Upload:
    """A file part and its facts as an :class:`Upload`, or a refusal that says which fact is wrong."""
    photo = form.get(part)
    if photo is None or isinstance(photo, str):
        raise Refused(400, "missing_photo", f"{where} has no file part {part!r} (curl -F {part}=@file.jpg)")
    if photo.size is not None and photo.size > MAX_PHOTO_BYTES:
        raise Refused(413, "file_too_large", f"the photo is {photo.size:,} bytes, over the {MAX_PHOTO_BYTES:,}-byte limit")
    data = await photo.read(MAX_PHOTO_BYTES + 1)
    if len(data) > MAX_PHOTO_BYTES:
        raise Refused(413, "file_too_large", f"the photo is over the {MAX_PHOTO_BYTES:,}-byte limit")
    clean = {}
    for name, value in facts.items():
        if value is None or value == "":
            clean[name] = None
            continue
        if name == "price" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or len(value) > MAX_FIELD or any(ord(c) < 32 and c not in "\t" for c in value):
            raise Refused(422, "bad_facts", f"{where}: {name} must be text of at most {MAX_FIELD} characters, no control characters")
        clean[name] = value.strip()
    if clean["price"] is not None:  # a number; what a scan would compare is Detector.check's to say (bad_facts)
        try:
            clean["price"] = float(clean["price"])
        except ValueError:
            raise Refused(422, "bad_facts", f"{where}: price {clean['price']!r} is not a number") from None
    return Upload(photo=data, listing_id=clean["listing_id"], seller=clean["seller"], price=clean["price"],
                  currency=clean["currency"], title=clean["title"])


def create_app(service: Service, *, idle_s: float = web.IDLE_S):
    """The ASGI app of a service (see the module docstring for its routes); ``idle_s``: how long
    a started body may stay silent (408)."""

    def guarded(endpoint):
        async def handler(request: Request) -> Response:
            if not service.authorised(request):
                return error(401, "unauthorised", "missing or wrong token: send Authorization: Bearer TOKEN",
                             {"www-authenticate": "Bearer"})
            try:
                return await endpoint(request)
            except Refused as exc:
                return error(exc.status, exc.code, str(exc), exc.headers)

        return handler

    async def internal(request, exc):
        return error(500, "internal", f"the service failed on this request: {type(exc).__name__}")

    app = Starlette(routes=[
        Route("/healthz", service.healthz),
        Route("/openapi.json", guarded(service.openapi)),
        Route("/v1/index", guarded(service.index)),
        Route("/v1/check", guarded(service.check), methods=["POST"]),
        Route("/v1/check-batch", guarded(service.check_batch), methods=["POST"]),
    ], exception_handlers={**web.limit_handlers(error), Exception: internal})

    def limit_for(scope) -> int:
        return request_limit(MAX_BATCH if scope.get("path") == "/v1/check-batch" else 1)

    return web.Limits(app, limit_for, lambda code, message: {"error": {"code": code, "message": message}}, idle_s)


_FACT_FIELDS = {
    "listing_id": {"type": "string", "description": "Your listing's id (logged; a check without one is logged as check-N)."},
    "seller": {"type": "string", "description": "The seller's id: checked against the brand's authorised sellers."},
    "price": {"type": "string", "description": "The listing's price, a number (needs currency)."},
    "currency": {"type": "string", "description": "The price's currency, e.g. USD."},
    "title": {"type": "string", "description": "The listing's title: searched for counterfeit cues."},
}
_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "code": {"type": "string", "description": "A code of docs/decisions.md (service refusals, error codes)."},
    "message": {"type": "string"}}}}}
_DECISION = {"type": "object", "description": "counterfeit lookup --json's fields, with listing_id, digest and check_id.",
             "properties": {name: {} for name in ("listing_id", "verdict", "score", "visual_state", "reasons", "findings",
                                                  "best", "matches", "plausible", "marks", "evidence", "digest", "check_id")}}
_REFUSALS = {str(code): {"description": text, "content": {"application/json": {"schema": _ERROR}}} for code, text in (
    (400, "bad_request or missing_photo"), (401, "unauthorised"), (408, "timeout (body left silent)"),
    (413, "request_too_large, file_too_large or too_many_pixels"), (415, "wrong_type or not_an_image"),
    (422, "bad_facts, corrupt, empty_file, decode_failed or analysis_failed"), (503, "busy or timeout (see Retry-After)"))}
OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "counterfeit serve", "version": "1",
             "description": "Check a listing's photo against the protected products when it is posted."},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": {
        "/v1/check": {"post": {
            "summary": "Check one listing",
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["photo"],
                "properties": {"photo": {"type": "string", "format": "binary"}, **_FACT_FIELDS}}}}},
            "responses": {"200": {"description": "The decision",
                                  "content": {"application/json": {"schema": _DECISION}}}, **_REFUSALS}}},
        "/v1/check-batch": {"post": {
            "summary": f"Check up to {MAX_BATCH} listings",
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["listings"],
                "properties": {"listings": {"type": "string", "description": 'A JSON array of objects: {"photo": the name of'
                                            ' its file part, and the optional facts of /v1/check}'}},
                "additionalProperties": {"type": "string", "format": "binary"}}}}},
            "responses": {"200": {"description": "One result per listing, in order: a decision or an error",
                                  "content": {"application/json": {"schema": {"type": "object", "properties": {
                                      "results": {"type": "array", "items": {"oneOf": [_DECISION, _ERROR]}}}}}}},
                          **_REFUSALS}}},
        "/v1/index": {"get": {"summary": "The index being served", "responses": {"200": {"description": "Brands and products"}}}},
        "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
    },
}
"""The OpenAPI schema ``GET /openapi.json`` returns."""
