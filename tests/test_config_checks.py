from __future__ import annotations

import pytest

from medseg.config import ConfigError, from_dict
from medseg.config_checks import check_class_count


def test_class_weights_need_one_value_per_class():
    cfg = from_dict({"loss": {"class_weights": [0.5, 1.0, 2.0]}})
    check_class_count(cfg, 3)
    with pytest.raises(ConfigError, match=r"has 3 values; expected 4 \(one per class, background included\)"):
        check_class_count(cfg, 4)
    check_class_count(from_dict({}), 7)  # no weights: any class count


@pytest.mark.parametrize(("values", "message"), [
    ({"data": {"labelled_cases": 0}}, r"labelled_cases: 0 is impossible"),
    ({"semi_supervised": {"teacher_decay": 1.0}}, r"teacher_decay: 1.0 is not in \[0, 1\)"),
    ({"pretrain": {"mask_ratio": 1.0}}, r"mask_ratio: 1.0 is not in \(0, 1\)"),
    ({"pretrain": {"mask_block": 80}}, r"mask_block: 80 voxels must be >= 1 and fit in data.patch_size"),
    ({"semi_supervised": {"method": "mean-teacher"}}, r"Did you mean 'mean_teacher'"),
])
def test_limited_label_settings_are_checked(values, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(values)
