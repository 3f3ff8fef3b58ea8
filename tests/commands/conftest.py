"""Fixtures the command tests share with the library tests they sit on (datasets built once, in
one place): the evaluation phantoms and the hand-built check datasets."""

from tests.data.test_check import broken_dataset, valid_dataset  # noqa: F401
from tests.evaluation.conftest import phantoms  # noqa: F401
