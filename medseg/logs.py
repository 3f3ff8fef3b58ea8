"""Logging for medseg: one verbosity switch for every command, one home for third-party noise.

Every ``medseg`` subcommand takes ``--quiet`` (warnings and errors only, no progress) and
``--verbose`` (debug messages, and nothing of third-party output filtered);
:func:`setup_logging` maps them onto Python logging levels and sends records to stderr.

Known harmless third-party messages are dropped here and nowhere else, each matched by its
exact text (never by category or module), so that a new or different warning from the same
library still reaches the user:

- Lightning's "💡 Tip: ... litlogger" advert, printed once per ``Trainer``;
- Lightning's "`Trainer(limit_val_batches=1.0)` was configured so 100% of the batches will
  be used.." (medseg passes 1.0 explicitly to say "validate on every case");
- Lightning's "`weights_only` was not set, defaulting to `False`." on every checkpoint save
  (medseg writes its own checkpoints and reads them with an explicit ``weights_only``);
- torch's FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated ..." raised from
  Lightning 2.6's own ``_pytree`` helper, which the user cannot act on.

Importing this module imports only the standard library (the CLI stays fast).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings

QUIET, NORMAL, VERBOSE = logging.WARNING, logging.INFO, logging.DEBUG

LOGGER = "medseg"
"""Parent of every medseg logger (``medseg.train``, ``medseg.progress`` ...)."""

NOISY_LOG_RECORDS: dict[str, tuple[str, ...]] = {
    # logger name -> exact messages dropped from it
    "pytorch_lightning.utilities.rank_zero": (
        "💡 Tip: For seamless cloud logging and experiment tracking, try installing "
        "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, which logs metrics and "
        "artifacts automatically to the Lightning Experiments platform.",
        "`Trainer(limit_val_batches=1.0)` was configured so 100% of the batches will be used..",
    ),
    "pytorch_lightning.trainer.connectors.checkpoint_connector": (
        "`weights_only` was not set, defaulting to `False`.",
    ),
}

NOISY_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # (exact message, category)
    ("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
     "treespec.is_leaf()` instead.", FutureWarning),
)

_handler: logging.Handler | None = None
_show_everything = False


class _DropExact(logging.Filter):
    """Drop records whose formatted message is one of ``messages`` (exact match)."""

    def __init__(self, messages: tuple[str, ...]) -> None:
        super().__init__()
        self.messages = frozenset(messages)

    def filter(self, record: logging.LogRecord) -> bool:
        return _show_everything or record.getMessage() not in self.messages


def add_verbosity_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--quiet`` / ``--verbose`` (mutually exclusive) unless the parser already has them."""
    have = set(parser._option_string_actions)  # argparse has no public "has option" query
    group = parser.add_mutually_exclusive_group()
    if "--quiet" not in have:
        group.add_argument("-q", "--quiet", action="store_true",
                           help="only warnings and errors: no progress bars or progress lines")
    if "--verbose" not in have:
        group.add_argument("-v", "--verbose", action="store_true",
                           help="debug messages, and third-party messages medseg normally filters")


def level_from_args(args: argparse.Namespace) -> int:
    """The logging level asked for by ``--quiet`` / ``--verbose`` (INFO when neither)."""
    if getattr(args, "verbose", False):
        return VERBOSE
    if getattr(args, "quiet", False):
        return QUIET
    return NORMAL


def setup_logging(level: int = NORMAL) -> None:
    """Send medseg's (and Lightning's) log records at ``level`` or above to stderr, plain text.

    Idempotent: a second call replaces the handler installed by the first. Other libraries'
    loggers stay at WARNING, so ``--verbose`` shows medseg's debug messages, not theirs.
    Lightning, when imported later, sees a configured root logger and propagates to it.
    """
    global _handler, _show_everything
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    _handler.setLevel(level)
    root.addHandler(_handler)
    if root.level == logging.NOTSET or root.level > QUIET:
        root.setLevel(QUIET)
    logging.getLogger(LOGGER).setLevel(level)
    _show_everything = level <= VERBOSE
    filter_third_party_noise()


def ensure_handler() -> None:
    """Make medseg's INFO records visible when nobody configured logging (library use).

    Python's last-resort handler prints only warnings; like Lightning for its own logger,
    medseg then adds a plain stderr handler to the ``medseg`` logger.
    """
    logger = logging.getLogger(LOGGER)
    if logger.hasHandlers():
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(NORMAL)


def filter_third_party_noise() -> None:
    """Install the exact-message filters listed in this module (safe to call repeatedly).

    Logger filters are attached once per logger; warning filters are re-added on every call
    (``warnings.filterwarnings`` replaces an identical entry) because test runners and
    ``warnings.catch_warnings`` blocks reset the warning filter list.
    """
    for name, messages in NOISY_LOG_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropExact) for f in logger.filters):
            logger.addFilter(_DropExact(messages))
    if _show_everything:
        return
    for message, category in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message) + r"\Z", category=category)


def interactive() -> bool:
    """True when a person watches: stderr is a terminal, or we run inside a Jupyter kernel."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        tty = False
    return tty or "ipykernel" in sys.modules


def progress_bars() -> bool:
    """Whether to draw carriage-return progress bars: interactive and not ``--quiet``."""
    level = logging.getLogger(LOGGER).level  # NOTSET: nobody configured medseg's logging (library use)
    return interactive() and (level == logging.NOTSET or level <= NORMAL)


def progress_lines() -> bool:
    """Whether to report progress at all (bars or plain lines): not ``--quiet``."""
    level = logging.getLogger(LOGGER).level
    return level == logging.NOTSET or level <= NORMAL
