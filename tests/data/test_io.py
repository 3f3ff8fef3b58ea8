"""Geometry round trips: non-RAS, anisotropic and oblique volumes keep shape and affine exactly."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.io import (
    COMPACT,
    ImageReadError,
    compact_dtype,
    read_label,
    read_volume,
    same_geometry,
    write_label,
    write_volume,
)


def oblique_affine() -> np.ndarray:
    theta = np.deg2rad(17)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = np.diag([-1, -1, 1]) @ rot @ np.diag([0.7, 0.9, 3.0])  # LPS-ish, anisotropic
    aff[:3, 3] = [12.5, -30.25, 7.0]
    return aff


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_geometry(tmp_path: Path, suffix: str):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(9, 7, 5)).astype(np.float32)
    aff = oblique_affine()
    write_volume(tmp_path / f"img{suffix}", arr, aff)
    vol = read_volume(tmp_path / f"img{suffix}")
    np.testing.assert_allclose(vol.affine, aff, atol=1e-5)
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_allclose(vol.spacing, (0.7, 0.9, 3.0), atol=1e-6)


def test_label_written_with_input_header(tmp_path: Path):
    aff = oblique_affine()
    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), aff)
    img.header.set_qform(aff, code=2)
    img.header.set_sform(aff, code=4)
    nib.save(img, tmp_path / "in.nii.gz")
    ref = read_volume(tmp_path / "in.nii.gz")
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[1:3, 2:4, 1] = 2
    write_label(tmp_path / "out.nii.gz", labels, ref)
    out = nib.load(tmp_path / "out.nii.gz")
    assert out.header.get_data_dtype() == np.uint8
    assert int(out.header["sform_code"]) == 4 and int(out.header["qform_code"]) == 2
    np.testing.assert_array_equal(out.affine, nib.load(tmp_path / "in.nii.gz").affine)
    np.testing.assert_array_equal(np.asarray(out.dataobj), labels)
    assert same_geometry(read_label(tmp_path / "out.nii.gz"), ref)
    assert not list(tmp_path.glob(".*part*")), "temporary file left behind"


def test_write_label_rejects_wrong_shape(tmp_path: Path):
    ref = read_volume_from_array(tmp_path, np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"shape \(4, 4, 3\) differs"):
        write_label(tmp_path / "bad.nii.gz", np.zeros((4, 4, 3), np.uint8), ref)


def read_volume_from_array(tmp_path: Path, arr: np.ndarray):
    write_volume(tmp_path / "ref.nii.gz", arr, np.eye(4))
    return read_volume(tmp_path / "ref.nii.gz")


def test_multichannel_nifti_is_channel_first(tmp_path: Path):
    arr = np.arange(4 * 3 * 2 * 2, dtype=np.float32).reshape(4, 3, 2, 2)  # X, Y, Z, C
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "mc.nii.gz")
    vol = read_volume(tmp_path / "mc.nii.gz")
    assert vol.array.shape == (2, 4, 3, 2) and vol.num_channels == 2
    np.testing.assert_array_equal(vol.array[1], arr[..., 1])


def test_unreadable_inputs_raise_specific_errors(tmp_path: Path):
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match=r"junk\.nii\.gz: unreadable NIfTI"):
        read_volume(tmp_path / "junk.nii.gz")
    with pytest.raises(ImageReadError, match="file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(ImageReadError, match="2 dimensions"):
        read_volume(tmp_path / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), 1.5, np.float32), np.eye(4)), tmp_path / "frac.nii.gz")
    with pytest.raises(ImageReadError, match="non-integer values"):
        read_label(tmp_path / "frac.nii.gz")


def test_float_integer_labels_are_accepted(tmp_path: Path):
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), 2.0, np.float32), np.eye(4)), tmp_path / "f.nii.gz")
    lab = read_label(tmp_path / "f.nii.gz")
    assert lab.array.dtype == np.uint8 and int(lab.array.max()) == 2


def test_dicom_series_folder_geometry(tmp_path: Path):
    import SimpleITK as sitk

    arr = (np.arange(5 * 6 * 4).reshape(4, 6, 5) % 100).astype(np.int16)  # Z, Y, X
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.8, 0.7, 2.5))
    image.SetOrigin((-10.0, 20.0, 30.0))
    series = tmp_path / "series"
    series.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(arr.shape[0]):
        sl = image[:, :, z]
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.1")  # series UID
        sl.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z)))))
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        sl.SetMetaData("0020|0013", str(z))
        sl.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(series / f"{z:03d}.dcm"))
        writer.Execute(sl)
    vol = read_volume(series)
    assert vol.array.shape == (5, 6, 4)
    np.testing.assert_array_equal(vol.array, np.transpose(arr, (2, 1, 0)))
    np.testing.assert_allclose(vol.spacing, (0.8, 0.7, 2.5), atol=1e-4)
    np.testing.assert_allclose(vol.affine[:3, 3], (10.0, -20.0, 30.0), atol=1e-4)  # LPS -> RAS
    assert len(vol.dicom_files) == 4


def _nifti(path: Path, arr: np.ndarray, slope: float = 1.0, inter: float = 0.0) -> Path:
    img = nib.Nifti1Image(arr, np.diag([0.8, 0.8, 2.5, 1.0]))
    img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("stored", [np.int16, np.uint8, np.uint16, np.int8])
def test_compact_read_keeps_small_stored_integers(tmp_path: Path, stored):
    arr = np.arange(60, dtype=np.int64).reshape(3, 4, 5).astype(stored)
    vol = read_volume(_nifti(tmp_path / "ct.nii.gz", arr), dtype=COMPACT)
    assert vol.array.dtype == np.dtype(stored)  # no float32 copy of an integer CT
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_array_equal(vol.array.astype(np.float32), read_volume(tmp_path / "ct.nii.gz").array)


def test_compact_read_applies_scaling_and_widens_other_types(tmp_path: Path):
    arr = (np.arange(60, dtype=np.int16) - 30).reshape(3, 4, 5)
    scaled = read_volume(_nifti(tmp_path / "scaled.nii.gz", arr, slope=2.0, inter=-1024.0), dtype=COMPACT)
    assert scaled.array.dtype == np.float32  # stored integers are not the values: scaled, as float32
    np.testing.assert_array_equal(scaled.array, arr.astype(np.float32) * 2.0 - 1024.0)
    for stored in (np.int32, np.float64):
        vol = read_volume(_nifti(tmp_path / f"{np.dtype(stored).name}.nii.gz", arr.astype(stored)), dtype=COMPACT)
        assert vol.array.dtype == np.float32
        np.testing.assert_array_equal(vol.array, arr.astype(np.float32))
    assert compact_dtype(np.int16) == np.int16 and compact_dtype(np.int32) == np.float32


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_compact_read_through_simpleitk_keeps_int16(tmp_path: Path, suffix: str):
    arr = (np.arange(60, dtype=np.int16) * 37 - 1000).reshape(3, 4, 5)
    write_volume(tmp_path / f"ct{suffix}", arr, oblique_affine())
    vol = read_volume(tmp_path / f"ct{suffix}", dtype=COMPACT)
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, arr)
    assert vol.array.flags.c_contiguous
