"""Atomic writes (no half-written file, no temporary left behind, usual permissions) and case names."""

from __future__ import annotations

import os
import stat

import pytest

from medseg.utils import atomic_path, atomic_write_bytes, atomic_write_text, case_name


def test_atomic_write_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text(encoding="utf-8") == "two"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "b.bin", "sub"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "mask.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".part.nii.gz")  # the writer sees the suffix
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.nii.gz"]


def test_written_files_get_the_umask_permissions_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o644


@pytest.mark.parametrize(("path", "name"), [
    ("/d/case_001.nii.gz", "case_001"), ("case.NII", "case"), ("a.b.nrrd", "a.b"), ("x.mha", "x"),
    ("series_dir", "series_dir"), ("/d/ct.1/", "ct.1"), ("scan.gz", "scan"),
])
def test_case_name(path, name):
    assert case_name(path) == name
