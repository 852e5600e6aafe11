"""Member 0's view of which ranks are live in the group: one GET of `GROUP_PATH`, read as a `GroupView`.

Who calls it: the reconciler, when a node is NotReady but its member's pod may still run: the API server
cannot tell whether the old incarnation's ranks still serve in the Mooncake group, and a replacement must
not be created while they may (Mooncake refuses the newcomer). The leader (global rank 0) knows: a killed
rank leaves its view within one recovery pause (`eep_contract.pause`) plus a step. Any failure to get a
valid view is None: "not known", never "gone".
"""

from __future__ import annotations

import http.client
import logging
import urllib.error
import urllib.request

from pydantic import ValidationError

from eep_contract.wire import GROUP_PATH, GroupView

__all__ = ["fetch_group_view"]

log = logging.getLogger("eep_operator.groupview")

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Member 0 is a pod IP inside the cluster: never through an HTTP proxy of the operator's environment."""
MAX_BODY = 1 << 16
"""Bytes read of an answer at most: a view of 64 ranks is about 300."""


def fetch_group_view(ip: str, port: int, timeout_s: float) -> GroupView | None:
    """GET `http://ip:port/v1/group` from member 0, with ``timeout_s`` seconds for the connection and for
    each read. Returns the `GroupView`, or None on a refused or timed-out connection, an answer other than
    200 (a member that is not 0: 404; a leader that has not reported yet: 503), or a body that is not a valid
    `GroupView`. Never raises."""
    host = f"[{ip}]" if ":" in ip else ip
    url = f"http://{host}:{port}{GROUP_PATH}"
    try:
        with _DIRECT.open(urllib.request.Request(url, method="GET"), timeout=timeout_s) as response:
            if response.status != 200:
                log.debug("group view from %s: HTTP %d", url, response.status)
                return None
            body = response.read(MAX_BODY + 1)
    except (OSError, http.client.HTTPException, ValueError) as e:
        # urllib's HTTPError (non-2xx) and URLError are OSErrors, as are timeouts; ValueError: a bad URL.
        log.debug("group view from %s: %s", url, e)
        return None
    if len(body) > MAX_BODY:
        log.debug("group view from %s: body over %d bytes", url, MAX_BODY)
        return None
    try:
        return GroupView.model_validate_json(body)
    except ValidationError as e:
        log.debug("group view from %s: malformed: %s", url, e)
        return None
