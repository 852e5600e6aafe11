"""Plain HTTP for the kit: one request on a fresh connection, status and body back.

A fresh connection per request on purpose: a pod that was killed and replaced must not be reached through a
pooled socket to its predecessor. Who uses it: `eep_testkit.client` (POST /v1/infer), `eep_testkit.reference`
(GET /v1/model), `eep_testkit.pods` (GET /ready), `eep_testkit.prometheus` (its HTTP API).
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any

__all__ = ["HTTPError", "get_json", "request"]

HTTPError = http.client.HTTPException
"""Besides OSError, what a request raises when the peer breaks the protocol (e.g. closes mid-answer)."""


def request(
    base_url: str, method: str, path: str, body: bytes | None = None, timeout_s: float = 10.0
) -> tuple[int, bytes]:
    """`(status, body)` of one request to `base_url` + `path` (`base_url`: `http://host:port`). Any status
    is returned, not raised. Raises OSError (refused, reset, timed out) or HTTPError."""
    parsed = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port or 80, timeout=timeout_s)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get_json(base_url: str, path: str, timeout_s: float = 10.0) -> Any:
    """The decoded JSON of a GET that answers 200. Raises OSError/HTTPError (no answer) or ValueError
    (another status, or not JSON)."""
    status, body = request(base_url, "GET", path, None, timeout_s)
    if status != 200:
        raise ValueError(f"GET {base_url}{path}: HTTP {status}: {body[:200]!r}")
    return json.loads(body)
