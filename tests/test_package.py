"""Code packages: what nimbus stores and supervisors unpack, against hostile zips."""

from __future__ import annotations

from pathlib import Path

import pytest
from commands import zipped

from streamflow import package
from streamflow.errors import StreamflowError
from streamflow.package import check, pack, unpack


def test_a_packed_topology_unpacks_to_the_same_files(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "lib").mkdir(parents=True)
    (project / "topology.py").write_text("TOPOLOGY = 1\n")
    (project / "lib" / "helpers.py").write_text("X = 2\n")
    file, data = pack(project / "topology.py")
    check(data, file)
    unpack(data, tmp_path / "out")
    assert (tmp_path / "out" / "topology.py").read_text() == "TOPOLOGY = 1\n"
    assert (tmp_path / "out" / "lib" / "helpers.py").read_text() == "X = 2\n"


@pytest.mark.parametrize("file", ["/etc/passwd", "../outside.py", "a/../../b.py", "", "a\\b.py"])
def test_a_topology_file_outside_the_package_is_refused(file: str) -> None:
    with pytest.raises(StreamflowError, match="relative path inside the package"):
        check(zipped({"topology.py": b""}), file)


def test_a_topology_file_missing_from_the_package_is_refused() -> None:
    with pytest.raises(StreamflowError, match="'other.py' is not in the package"):
        check(zipped({"topology.py": b""}), "other.py")


def test_a_package_over_the_size_limit_or_not_a_zip_is_refused() -> None:
    with pytest.raises(StreamflowError, match="exceeds 32 MiB"):
        check(b"x" * (package.MAX_PACKAGE_BYTES + 1), "topology.py")
    with pytest.raises(StreamflowError, match="not a zip"):
        check(b"not a zip at all", "topology.py")


def test_a_zip_bomb_is_stopped_at_its_limit_without_writing_it_all(tmp_path: Path) -> None:
    bomb = zipped({"topology.py": b"", "padding.bin": bytes(300 * 1024 * 1024)})
    assert len(bomb) < 400 * 1024  # 300 MiB of zeros deflate to about 300 KiB
    with pytest.raises(StreamflowError, match="unpacks to more than its limit"):
        unpack(bomb, tmp_path / "out")
    written = sum(f.stat().st_size for f in (tmp_path / "out").rglob("*") if f.is_file())
    assert written <= package.MAX_RATIO * len(bomb)


def test_a_zip_whose_directory_lies_about_sizes_is_still_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    monkeypatch.setattr(package, "MAX_UNPACKED_BYTES", 1024 * 1024)
    data = bytearray(zipped({"big.bin": bytes(4 * 1024 * 1024)}))
    # Rewrite the central directory's uncompressed size (4 bytes at offset 24 of the entry) to 1.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (1).to_bytes(4, "little")
    with pytest.raises(StreamflowError):
        unpack(bytes(data), tmp_path / "out")
    big = tmp_path / "out" / "big.bin"
    assert not big.exists() or big.stat().st_size <= 1024 * 1024


def test_too_many_entries_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(package, "MAX_ENTRIES", 10)
    with pytest.raises(StreamflowError, match="11 entries, more than 10"):
        unpack(zipped({f"f{n}.py": b"" for n in range(11)}), tmp_path / "out")


def test_an_entry_escaping_the_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StreamflowError, match="escapes its directory"):
        unpack(zipped({"../evil.py": b"x"}), tmp_path / "out")
    assert not (tmp_path / "evil.py").exists()
