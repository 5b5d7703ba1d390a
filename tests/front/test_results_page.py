"""The results page's HTTP side: the token is checked, the page's headers keep the token from
leaking and allow only the page's own scripts; the vendored viewer module is served (gzip, ETag)."""

from __future__ import annotations

import gzip

from fn_testlib import Buckets, FnApps, assert_error, post_json

from functions.edge import results_page


def _request(fn_apps: FnApps, buckets: Buckets) -> tuple[str, str]:
    made = post_json(fn_apps.api, "/trigger-reconstruction",
                     {"session_id": "page", "input": f"gs://{buckets.uploads}/page/v.mp4"}).get_json()
    return made["request_id"], made["callback_token"]


def test_the_page_needs_the_requests_token(fn_apps: FnApps, buckets: Buckets, fn_env: dict) -> None:
    rid, token = _request(fn_apps, buckets)
    assert_error(fn_apps.api.get(f"/view/{rid}"), 401, "token_required")
    assert_error(fn_apps.api.get(f"/view/{rid}?token=nope"), 404, "not_found")
    assert_error(fn_apps.api.get(f"/view/{'0' * 32}?token={token}"), 404, "not_found")
    resp = fn_apps.api.get(f"/view/{rid}?token={token}")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert f'data-request-id="{rid}"' in html and token not in html
    assert '<script type="module" src="../viewer/page.js">' in html
    assert resp.headers["Referrer-Policy"] == "no-referrer" and resp.headers["Cache-Control"] == "no-store"
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self' 'wasm-unsafe-eval' blob:" in csp and "default-src 'none'" in csp
    assert "cdn" not in html.lower() and "https://" not in html


def test_static_files_gzip_and_etag(fn_apps: FnApps, fn_env: dict) -> None:
    plain = fn_apps.api.get("/viewer/viewer.bundle.js")
    assert plain.status_code == 200 and plain.mimetype == "text/javascript"
    assert b"SplatMesh" in plain.data and b"WebGLRenderer" in plain.data and b"GLTFLoader" in plain.data
    packed = fn_apps.api.get("/viewer/viewer.bundle.js", headers={"Accept-Encoding": "gzip, br"})
    assert packed.headers["Content-Encoding"] == "gzip" and gzip.decompress(packed.data) == plain.data
    assert len(packed.data) < len(plain.data) / 2
    again = fn_apps.api.get("/viewer/viewer.bundle.js", headers={"If-None-Match": plain.headers["ETag"]})
    assert again.status_code == 304
    assert fn_apps.api.get("/viewer/page.css").mimetype == "text/css"
    assert b'from "./viewer.bundle.js"' in fn_apps.api.get("/viewer/page.js").data
    assert_error(fn_apps.api.get("/viewer/secret.py"), 404, "not_found")
    assert_error(fn_apps.api.get("/viewer/..%2Fmain.py"), 404)
    assert set(results_page.ASSETS) == {"viewer.bundle.js", "page.js", "page.css"}
