"""`http.get|post|put|patch|delete|request` calls of the local Workflows engine.

As on Google Cloud: the result is `{body, code, headers}`; a JSON response body is parsed, a
`text/*` one is a string, anything else bytes; a map, list or number body is sent as JSON; a
status >= 400 raises an HttpError carrying `code`, `headers` and `body`; a refused connection is
a ConnectionFailedError, a broken one a ConnectionError, a slow one a TimeoutError.
`auth: {type: OIDC|OAuth2}` is accepted and checked; locally no token is attached (the local
functions run without IAM).
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import requests

from emulator.workflows.errors import tagged
from emulator.workflows.expressions import type_name

METHODS = {"http.get": "GET", "http.post": "POST", "http.put": "PUT", "http.patch": "PATCH",
           "http.delete": "DELETE", "http.request": None}
_ARGS = {"url", "headers", "body", "query", "auth", "timeout", "private_service_name"}
DEFAULT_TIMEOUT = 300.0
MAX_TIMEOUT = 1800.0

_session = requests.Session()


def is_http_call(name: str) -> bool:
    return name in METHODS


def _encode_body(body: Any, headers: dict[str, str]) -> bytes | None:
    if body is None:
        return None
    ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    if isinstance(body, bytes):
        return body
    if ctype and "json" not in ctype.lower():
        if isinstance(body, str):
            return body.encode()
        if isinstance(body, dict) and "x-www-form-urlencoded" in ctype.lower():
            return urllib.parse.urlencode(body, doseq=True).encode()
    if ctype is None:
        headers["Content-Type"] = "application/json"
    try:
        return json.dumps(body, separators=(",", ":")).encode()
    except TypeError:
        raise tagged("TypeError", f"http: cannot send a {type_name(body)} body") from None


def _decode_body(resp: requests.Response) -> Any:
    ctype = resp.headers.get("Content-Type", "").lower()
    raw = resp.content
    if not raw:
        return None if "json" in ctype else raw
    if "json" in ctype:
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    if ctype.startswith("text/"):
        return raw.decode(resp.encoding or "utf-8", errors="replace")
    return raw


def http_call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    method = METHODS[name]
    allowed = _ARGS | ({"method"} if method is None else set())
    unknown = set(args) - allowed
    if unknown:
        raise tagged("TypeError", f"{name}: unknown argument(s) {', '.join(sorted(unknown))}")
    if method is None:
        method = str(args.get("method", "")).upper()
        if method not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
            raise tagged("ValueError", f"http.request: unsupported method {args.get('method')!r}")
    url = args.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise tagged("ValueError", f"{name}: url must be an http(s) URL, got {url!r}")
    headers = args.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str | int | float) for v in headers.values()):
        raise tagged("TypeError", f"{name}: headers must be a map of strings")
    headers = {str(k): str(v) for k, v in headers.items()}
    auth = args.get("auth")
    if auth is not None and (not isinstance(auth, dict) or auth.get("type") not in ("OIDC", "OAuth2")):
        raise tagged("ValueError", f"{name}: auth.type must be OIDC or OAuth2")
    query = args.get("query")
    if query is not None and not isinstance(query, dict):
        raise tagged("TypeError", f"{name}: query must be a map")
    timeout = args.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= MAX_TIMEOUT:
        raise tagged("ValueError", f"{name}: timeout must be 0 < seconds <= {MAX_TIMEOUT:g}")
    data = _encode_body(args.get("body"), headers)
    params = {k: v if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else str(v)
              for k, v in (query or {}).items()}
    try:
        resp = _session.request(method, url, headers=headers, data=data, params=params, timeout=float(timeout))
    except requests.exceptions.ConnectTimeout:
        raise tagged("ConnectionFailedError", f"{name} {url}: connection timed out") from None
    except requests.exceptions.Timeout:
        raise tagged("TimeoutError", f"{name} {url}: no response within {timeout}s") from None
    except requests.exceptions.ConnectionError as exc:
        broken = "RemoteDisconnected" in str(exc) or "reset" in str(exc).lower()
        raise tagged("ConnectionError" if broken else "ConnectionFailedError", f"{name} {url}: {exc}") from None
    except requests.exceptions.RequestException as exc:
        raise tagged("ConnectionError", f"{name} {url}: {exc}") from None
    result = {"body": _decode_body(resp), "code": resp.status_code, "headers": dict(resp.headers)}
    if resp.status_code >= 400:
        raise tagged("HttpError", f"HTTP server responded with error code {resp.status_code}", **result)
    return result
