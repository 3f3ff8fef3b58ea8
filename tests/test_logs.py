"""One verbosity switch for every command; third-party noise dropped by exact message only."""

from __future__ import annotations

import logging
import warnings

import pytest

from medseg import logs
from medseg.cli import COMMANDS, build_parser

TIP = logs.NOISY_LOG_RECORDS["pytorch_lightning.utilities.rank_zero"][0]
LEAF = logs.NOISY_WARNINGS[0][0]


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    logs.setup_logging(logs.NORMAL)


def test_every_subcommand_has_quiet_and_verbose() -> None:
    parser = build_parser()
    required = {"synth": ["--output", "x"], "check": ["m"], "plan": ["m"], "train": ["p"],
                "predict": ["--model", "m", "--input", "i", "--output", "o"],
                "evaluate": ["--pred", "p", "--ref", "r", "--output", "o"], "export": ["--model", "m", "--output", "o"],
                "pretrain": ["p", "--data", "d", "--output", "o"],
                "prune": ["--model", "m", "--data", "d", "--output", "o", "--ratio", "0.5"],
                "distill": ["p", "--teacher", "t", "--data", "d", "--output", "o"],
                "tune-postprocess": ["--model", "m"]}
    assert set(required) == {c.replace("_", "-") for c in COMMANDS}
    for name, args in required.items():
        assert logs.level_from_args(parser.parse_args([name, *args])) == logging.INFO
        assert logs.level_from_args(parser.parse_args([name, *args, "--quiet"])) == logging.WARNING
        assert logs.level_from_args(parser.parse_args([name, *args, "-v"])) == logging.DEBUG
    with pytest.raises(SystemExit):
        parser.parse_args(["check", "m", "-q", "-v"])  # one or the other


def test_lightning_tip_dropped_other_records_kept(caplog: pytest.LogCaptureFixture) -> None:
    logs.setup_logging(logs.NORMAL)
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        rank_zero.info(TIP)
        rank_zero.info(TIP + " (and something new)")  # not the exact message: shown
        rank_zero.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == [TIP + " (and something new)", "GPU available: False, used: False"]


def test_verbose_shows_everything(caplog: pytest.LogCaptureFixture) -> None:
    logs.setup_logging(logs.VERBOSE)
    with caplog.at_level(logging.INFO):
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info(TIP)
    assert [r.getMessage() for r in caplog.records] == [TIP]
    assert logging.getLogger("medseg").isEnabledFor(logging.DEBUG)


def test_leafspec_warning_dropped_but_not_its_relatives() -> None:
    logs.setup_logging(logs.NORMAL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # would show everything...
        logs.filter_third_party_noise()  # ...except the exact known messages (re-added first in the list)
        warnings.warn(LEAF, FutureWarning, stacklevel=1)
        warnings.warn(LEAF + " Also this.", FutureWarning, stacklevel=1)
        warnings.warn(LEAF, DeprecationWarning, stacklevel=1)  # another category: shown
        warnings.warn("`weights_only` matters here", FutureWarning, stacklevel=1)
    assert [(str(w.message), w.category) for w in caught] == [
        (LEAF + " Also this.", FutureWarning), (LEAF, DeprecationWarning), ("`weights_only` matters here", FutureWarning)]


def test_quiet_turns_off_bars_and_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "interactive", lambda: True)
    logs.setup_logging(logs.QUIET)
    assert not logs.progress_bars() and not logs.progress_lines()
    logs.setup_logging(logs.NORMAL)
    assert logs.progress_bars() and logs.progress_lines()
    root_handlers = [h for h in logging.getLogger().handlers if h is logs._handler]
    logs.setup_logging(logs.NORMAL)
    assert len([h for h in logging.getLogger().handlers if h is logs._handler]) == len(root_handlers) == 1
