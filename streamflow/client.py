"""The CLI's side of the nimbus API: JSON over HTTP with a bearer token."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from streamflow.errors import StreamflowError


class NimbusClient:
    """Calls one nimbus (any of them: standbys forward to the leader)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0,
                 tls_ca: str | None = None) -> None:
        if not url:
            raise StreamflowError("no nimbus address: pass --nimbus URL or set STREAMFLOW_NIMBUS")
        self.url = url.rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        self.token = token
        self.timeout = timeout
        try:
            self._tls = ssl.create_default_context(cafile=tls_ca) if tls_ca else None
        except (OSError, ssl.SSLError) as exc:
            raise StreamflowError(f"cannot use --tls-ca {tls_ca}: {exc}") from None

    def call(self, method: str, op: str, name: str = "", body: dict[str, Any] | None = None,
             query: dict[str, str] | None = None) -> Any:
        """One API call (``body`` for a POST, ``query`` parameters for a GET); raises
        :class:`StreamflowError` with nimbus's one-line reason."""
        path = f"{self.url}/api/v1/{op}" + (f"/{urllib.parse.quote(name)}" if name else "")
        if query:
            path += "?" + urllib.parse.urlencode(query)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._tls) as response:
                answer = response.read()
        except http.client.HTTPException as exc:  # a server that does not speak HTTP
            raise StreamflowError(f"nimbus at {self.url} did not answer in HTTP ({type(exc).__name__}): "
                                  "is that address a nimbus?") from None
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read()).get("error") or exc.reason
            except ValueError:
                reason = exc.reason
            raise StreamflowError(f"nimbus refused: {reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            why = getattr(why, "strerror", None) or why  # "Connection refused", not "[Errno 111] ..."
            raise StreamflowError(f"cannot reach nimbus at {self.url}: {why}") from None
        try:
            return json.loads(answer)
        except ValueError:
            raise StreamflowError(f"nimbus at {self.url} answered with something that is not JSON: "
                                  "is that address a nimbus?") from None
