"""The web UI that nimbus serves: a cluster page and a page per topology.

The pages are static files (HTML, CSS and hand-written JavaScript, no build step and no
CDN, since clusters often run offline). The browser fetches the same JSON API as the CLI
(``/api/v1/...``, with the API token the user enters) and redraws every few seconds, so
nimbus only hands out files and the UI can never show anything the API would not.
"""

from __future__ import annotations

import re
from importlib import resources

PAGES = {"/": "cluster.html"}
TOPOLOGY_PAGE = re.compile(r"^/topology/[^/]+$")
# One plain file name: no folder, no "..", so a request cannot leave static/.
ASSET = re.compile(r"^/static/([A-Za-z0-9_-]+\.(?:css|js|html|svg))$")
CONTENT_TYPES = {
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "svg": "image/svg+xml",
}


def page(path: str) -> tuple[str, bytes] | None:
    """The content type and body for a GET of ``path``, or None (404) if it is no page.

    ``/`` is the cluster page, ``/topology/NAME`` the topology page (its script reads the
    name from the address) and ``/static/FILE`` the files they load.
    """
    path = path.split("?", 1)[0].split("#", 1)[0]
    if path in PAGES:
        name = PAGES[path]
    elif TOPOLOGY_PAGE.match(path):
        name = "topology.html"
    else:
        asset = ASSET.match(path)
        if asset is None:
            return None
        name = asset.group(1)
    file = resources.files(__name__).joinpath("static", name)
    if not file.is_file():
        return None
    return CONTENT_TYPES[name.rsplit(".", 1)[1]], file.read_bytes()
