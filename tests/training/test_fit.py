"""The run directory's life cycle shared by train and pretrain."""

from __future__ import annotations

import pytest

from medseg.training.fit import check_run_dir


def test_new_runs_need_a_fresh_directory_and_resumes_a_checkpoint(tmp_path):
    check_run_dir(tmp_path, resume=False)  # empty: fine
    with pytest.raises(FileNotFoundError, match="nothing to resume from"):
        check_run_dir(tmp_path, resume=True)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "interrupted.ckpt").write_bytes(b"x")
    check_run_dir(tmp_path, resume=True)
    with pytest.raises(FileExistsError, match="pass --resume"):
        check_run_dir(tmp_path, resume=False)
