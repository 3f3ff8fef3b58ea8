"""Finding cases in files, folders, manifests and DICOM folders; reading them safely."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.data.io import ImageReadError
from medseg.inference.inputs import InputCase, InputError, find_cases, read_case
from tests.inference.inference_helpers import save_nifti, write_dicom_series


def _img(path: Path, shape: tuple[int, ...] = (6, 5, 4), value: float = 1.0) -> Path:
    return save_nifti(path, np.full(shape, value, np.float32), np.eye(4))


def test_single_file_and_folder_of_volumes(tmp_path: Path) -> None:
    a, b = _img(tmp_path / "in" / "case_a.nii.gz"), _img(tmp_path / "in" / "case_b.nii")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    assert [(c.name, c.sources) for c in find_cases(a, ["image"])] == [("case_a", [a])]
    assert [c.name for c in find_cases(tmp_path / "in", ["image"])] == ["case_a", "case_b"]
    assert find_cases(tmp_path / "in", ["image"])[1].sources == [b]


def test_nnunet_channel_groups(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    for case in ("p1", "p2"):
        for ch in (0, 1):
            _img(folder / f"{case}_{ch:04d}.nii.gz", value=ch + 1)
    _img(folder / "p3_0000.nii.gz")
    cases = find_cases(folder, ["T1", "T2"])
    assert [(c.name, [s.name for s in c.sources]) for c in cases[:2]] == [
        ("p1", ["p1_0000.nii.gz", "p1_0001.nii.gz"]),
        ("p2", ["p2_0000.nii.gz", "p2_0001.nii.gz"]),
    ]
    assert cases[2].name == "p3" and "add the missing files" in str(cases[2].error)
    vol = read_case(cases[0], 2)
    assert vol.array.shape == (2, 6, 5, 4) and vol.array[1].max() == 2
    with pytest.raises(ImageReadError, match="p3_0001"):
        read_case(cases[2], 2)


def test_single_channel_nnunet_names_drop_the_0000_suffix_only_when_all_have_it(tmp_path: Path) -> None:
    _img(tmp_path / "a" / "x_0000.nii.gz")
    _img(tmp_path / "a" / "y_0000.nii.gz")
    assert [c.name for c in find_cases(tmp_path / "a", ["CT"])] == ["x", "y"]
    _img(tmp_path / "b" / "hippo_0001.nii.gz")
    _img(tmp_path / "b" / "hippo_0002.nii.gz")
    assert [c.name for c in find_cases(tmp_path / "b", ["MRI"])] == ["hippo_0001", "hippo_0002"]


def test_manifest_channels_follow_the_models_channel_names(tmp_path: Path) -> None:
    t2, t1 = _img(tmp_path / "c_t2.nii.gz", value=2), _img(tmp_path / "c_t1.nii.gz", value=1)
    manifest = {
        "labels": {"0": "background", "1": "tumour"},
        "modality": {"0": "T2", "1": "T1"},
        "training": [],
        "test": [{"image": ["c_t2.nii.gz", "c_t1.nii.gz"]}],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(manifest))
    cases = find_cases(tmp_path / "dataset.json", ["T1", "T2"])
    assert cases[0].sources == [t1, t2]
    assert read_case(cases[0], 2).array[0].max() == 1  # T1 first, as the model was trained


def test_dicom_folder_and_folder_of_dicom_folders(tmp_path: Path) -> None:
    arr = np.zeros((8, 6, 3), np.int16)
    write_dicom_series(tmp_path / "series" / "ct1", arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    write_dicom_series(tmp_path / "series" / "ct2", arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    single = find_cases(tmp_path / "series" / "ct1", ["CT"])
    assert [(c.name, c.is_dicom) for c in single] == [("ct1", True)]
    both = find_cases(tmp_path / "series", ["CT"])
    assert [c.name for c in both] == ["ct1", "ct2"]
    assert read_case(both[0], 1).array.shape == (1, 8, 6, 3)


def test_nan_image_is_refused_with_a_count(tmp_path: Path) -> None:
    arr = np.ones((4, 4, 4), np.float32)
    arr[0, 0, :2] = np.nan
    path = save_nifti(tmp_path / "nan.nii.gz", arr, np.eye(4))
    with pytest.raises(ImageReadError, match="2 of 64 voxels are NaN or infinite"):
        read_case(InputCase("nan", [path]), 1)


def test_nothing_to_predict_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        find_cases(tmp_path / "empty", ["image"])
    with pytest.raises(InputError, match="input not found"):
        find_cases(tmp_path / "missing.nii.gz", ["image"])


def test_read_case_keeps_int16_and_widens_mixed_channels(tmp_path: Path) -> None:
    ct = (np.arange(120, dtype=np.int16) * 25 - 1000).reshape(6, 5, 4)
    one = save_nifti(tmp_path / "ct.nii.gz", ct, np.eye(4))
    vol = read_case(InputCase("ct", [one]), 1)
    assert vol.array.dtype == np.int16 and vol.array.shape == (1, 6, 5, 4)  # half the memory of float32
    np.testing.assert_array_equal(vol.array[0], ct)
    other = save_nifti(tmp_path / "mr.nii.gz", (ct + 1000).astype(np.uint16), np.eye(4))
    both = read_case(InputCase("two", [one, other]), 2)
    assert both.array.dtype == np.float32  # int16 with uint16: no 16-bit type holds both
    np.testing.assert_array_equal(both.array[1], (ct + 1000).astype(np.float32))
