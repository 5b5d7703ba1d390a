"""The results page on the public `api`: `GET /view/{request_id}?token=…` and its static files.

One HTML page (functions/viewer/page.html) whose script polls the request's status, then shows the
preview image, the splat in Spark's WebGL renderer, the mesh (GLB) and the metrics, fetching the
outputs by the download manifest's URLs (signed on Google Cloud; the data bucket's CORS lets the
page read them). three.js and Spark are vendored as one ES module (`viewer.bundle.js`, built by
scripts/build_viewer.sh) served here: nothing is loaded from a CDN.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from pathlib import Path

import flask

from core.api import TOKEN_HEADER
from functions.context import Services
from functions.edge.json_api import ApiError
from functions.edge.public_api import charge_rate_limit
from functions.edge.routing import Route, collect
from functions.errors import NotFoundError
from functions.intake import validation
from functions.lifecycle import access

ROUTES: list[Route] = []
route = collect(ROUTES)
VIEWER_DIR = Path(__file__).resolve().parents[1] / "viewer"
ASSETS = {"viewer.bundle.js": "text/javascript", "page.js": "text/javascript", "page.css": "text/css"}

# The page's scripts come from here only; the splat decoder needs WebAssembly and blob: workers;
# outputs are fetched from the signed URLs' host (https) or the local storage emulator.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval' blob:; worker-src 'self' blob:; "
    "style-src 'self'; img-src 'self' data: blob: https: http://127.0.0.1:* http://localhost:*; "
    "connect-src 'self' data: blob: https: http://127.0.0.1:* http://localhost:*; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",  # the token is in the page's URL
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@functools.cache
def _asset(name: str) -> tuple[bytes, bytes, str]:
    """(raw, gzipped, ETag) of a static file, read and compressed once per process."""
    raw = (VIEWER_DIR / name).read_bytes()
    return raw, gzip.compress(raw, 6, mtime=0), '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'


@functools.cache
def _template() -> str:
    return (VIEWER_DIR / "page.html").read_text()


@route("GET", "/view/{request_id}")
def page(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    """`?token=T`"""
    headers = charge_rate_limit(request, svc)
    token = request.args.get("token") or request.args.get("callback_token") or request.headers.get(TOKEN_HEADER)
    if not token:
        raise ApiError(401, "token_required", "open the page as /view/{request_id}?token=<callback token>")
    access.authorized(svc, validation.request_id(request_id), token)
    # A validated hex id and our own header name: nothing to escape.
    html = _template().replace("{request_id}", request_id).replace("{token_header}", TOKEN_HEADER)
    return flask.Response(html, status=200, mimetype="text/html", headers={**PAGE_HEADERS, **headers})


@route("GET", "/viewer/{name}")
def asset(request: flask.Request, svc: Services, name: str) -> flask.Response:
    """The page's script, style and the vendored viewer module."""
    if name not in ASSETS:
        raise NotFoundError(f"no asset {name}")
    raw, packed, etag = _asset(name)
    if request.headers.get("If-None-Match") == etag:
        resp = flask.Response(status=304)
    elif "gzip" in request.headers.get("Accept-Encoding", ""):
        resp = flask.Response(packed, status=200, mimetype=ASSETS[name])
        resp.headers["Content-Encoding"] = "gzip"
    else:
        resp = flask.Response(raw, status=200, mimetype=ASSETS[name])
    resp.headers["ETag"] = etag
    resp.headers["Vary"] = "Accept-Encoding"
    resp.headers["Cache-Control"] = "public, max-age=3600"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp

