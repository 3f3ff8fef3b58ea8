"""DICOM-SEG output: read back with highdicom; geometry, references, names and labels round-trip."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from medseg.data.io import read_volume
from medseg.data.preprocess import PreprocessingPlan
from medseg.inference.batch import predict_batch
from medseg.inference.dicom_seg import segment_numbers, to_frames
from medseg.inference.inputs import find_cases
from medseg.inference.predictor import LoadedModel, Predictor
from tests.inference.inference_helpers import (
    ThresholdNet,
    data_dir,
    save_nifti,
    sphere_image,
    tiny_config,
    write_dicom_series,
)


class TwoLevelNet(ThresholdNet):
    """Class scores for ids 0..3: 0 below ``low``, 1 between, 3 above ``high``; 2 never wins."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__(low)
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, :1] + 0.0 * self.anchor
        zero = torch.zeros_like(v)
        return torch.cat([self.low - v, zero, zero - 1e3, v - self.high], dim=1)


def _predictor(labels: dict[str, int], spacing: list[float], net: object) -> Predictor:
    plan = PreprocessingPlan(target_spacing=spacing, normalization="none", labels=labels)
    return Predictor([LoadedModel(net, tiny_config(), "test")], plan)  # type: ignore[arg-type]


def _read_back(seg_path: Path, dicom_dir: Path) -> tuple[hd.seg.Segmentation, np.ndarray]:
    seg = hd.seg.segread(str(seg_path))
    files = read_volume(dicom_dir).dicom_files
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
    return seg, np.asarray(frames).transpose(2, 1, 0)  # (Z, rows, cols) -> (X, Y, Z)


def test_dicom_seg_round_trip(tmp_path: Path) -> None:
    shape, spacing, origin = (40, 32, 10), (0.9, 0.8, 2.5), (-20.0, -15.0, 40.0)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS series -> RAS affine
    affine[:3, 3] = [-origin[0], -origin[1], origin[2]]
    centre = affine[:3, :3] @ (np.array(shape) * [0.4, 0.55, 0.45]) + affine[:3, 3]
    image = np.round(sphere_image(shape, affine, centre)).astype(np.int16)
    write_dicom_series(tmp_path / "in" / "ct", image, spacing, origin)
    np.testing.assert_allclose(read_volume(tmp_path / "in" / "ct").affine, affine, atol=1e-6)
    # Non-consecutive label ids {1, 3} -> DICOM segments 1 and 2.
    labels = {"background": 0, "liver": 1, "tumour": 3}
    predictor = _predictor(labels, [1.8, 1.6, 2.5], TwoLevelNet(85.0, 94.0))
    cases = find_cases(tmp_path / "in" / "ct", ["CT"])
    [result] = predict_batch(predictor, cases, tmp_path / "out", fmt="both", progress=False)
    assert result.status == "ok", result.error

    nifti = np.asanyarray(nib.load(str(tmp_path / "out" / "ct.nii.gz")).dataobj)
    assert set(np.unique(nifti)) == {0, 1, 3}
    seg, decoded = _read_back(tmp_path / "out" / "ct.dcm", tmp_path / "in" / "ct")
    as_segments = np.choose(nifti, [0, 1, 0, 2])  # label id -> segment number
    np.testing.assert_array_equal(decoded, as_segments)

    source = pydicom.dcmread(read_volume(tmp_path / "in" / "ct").dicom_files[0], stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "tumour"]
    # One frame per (segment, slice) where the segment is present (empty frames omitted).
    expected_frames = sum(int((as_segments[:, :, k] == s).any()) for s in (1, 2) for k in range(shape[2]))
    assert seg.NumberOfFrames == expected_frames
    # Geometry of the frames: pixel spacing and slice positions are the source's.
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [spacing[1], spacing[0]]
    positions = {
        tuple(round(float(v), 3) for v in f.PlanePositionSequence[0].ImagePositionPatient)
        for f in seg.PerFrameFunctionalGroupsSequence
    }
    assert positions <= {(origin[0], origin[1], round(origin[2] + k * spacing[2], 3)) for k in range(shape[2])}


def test_segment_numbers_follow_label_order() -> None:
    labels = {"background": 0, "b": 5, "a": 2}
    assert segment_numbers(labels) == {2: (1, "a"), 5: (2, "b")}
    lab = np.zeros((3, 2, 1), np.uint8)
    lab[0, 0, 0], lab[2, 1, 0] = 5, 2
    frames = to_frames(lab, labels)
    assert frames.shape == (1, 2, 3) and frames[0, 0, 0] == 2 and frames[0, 1, 2] == 1


def test_dicom_seg_for_a_nifti_input_is_a_clear_per_case_error(tmp_path: Path) -> None:
    src = save_nifti(tmp_path / "in" / "a.nii.gz", np.ones((8, 8, 8), np.float32), np.eye(4))
    predictor = _predictor({"background": 0, "o": 1}, [1.0, 1.0, 1.0], ThresholdNet(0.5))
    [result] = predict_batch(predictor, find_cases(src, ["image"]), tmp_path / "out", fmt="dicom-seg", progress=False)
    assert result.status == "failed" and "needs a DICOM series input" in result.error
    assert "--format nifti" in result.error


def _series_with_uids(src: Path, dst: Path, *, blank: bool = False) -> Path:
    """A copy of a series with fresh Study/Series UIDs, or with them blanked as an anonymiser may
    leave them (pixel data untouched), so the test does not depend on how the sample was anonymised."""
    from pydicom.uid import generate_uid

    dst.mkdir(parents=True)
    study, series = ("", "") if blank else (generate_uid(), generate_uid())
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(dst / f.name)
    return dst


@pytest.mark.realdata
def test_real_ct_series_to_dicom_seg(tmp_path: Path) -> None:
    original = data_dir() / "ct_abdomen_sample" / "dicom"
    if not original.is_dir():
        pytest.skip(f"real data not found at {original} (set MEDSEG_DATA)")
    # Body (> -300 HU) vs air: a known function of the CT, predicted on a 2 mm grid.
    predictor = _predictor({"background": 0, "body": 1}, [2.0, 2.0, 2.0], ThresholdNet(-300.0, sharpness=0.05))
    # A series whose anonymisation emptied the Study/Series UIDs: no SEG can reference it.
    blanked = _series_with_uids(original, tmp_path / "blank", blank=True)
    [refused] = predict_batch(predictor, find_cases(blanked, ["CT"]), tmp_path / "o1", fmt="both", progress=False)
    assert refused.status == "failed" and "SeriesInstanceUID" in refused.error and "--format nifti" in refused.error
    assert (tmp_path / "o1" / "blank.nii.gz").is_file()  # --format both: the NIfTI is kept

    series = _series_with_uids(original, tmp_path / "ct")
    [result] = predict_batch(predictor, find_cases(series, ["CT"]), tmp_path / "out", fmt="both", progress=False)
    assert result.status == "ok", result.error
    volume = read_volume(series)
    pred = nib.load(str(tmp_path / "out" / "ct.nii.gz"))
    assert pred.shape == volume.spatial_shape == (512, 512, 20)
    np.testing.assert_allclose(pred.affine, volume.affine, atol=1e-5)
    mask = np.asanyarray(pred.dataobj)
    expected = volume.array > -300
    assert 2 * (mask.astype(bool) & expected).sum() / (mask.sum() + expected.sum()) > 0.97
    seg, decoded = _read_back(tmp_path / "out" / "ct.dcm", series)
    np.testing.assert_array_equal(decoded, mask)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["body"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(
        volume.dicom_files[0], stop_before_pixels=True).SeriesInstanceUID


# Type 1 attributes of the CT/MR image IODs that geometry and pixels need; everything else
# (all Type 2 and 3 attributes: patient, study, equipment, rescale, slice thickness…) is stripped.
_TYPE1_KEPT = {
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "Modality", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns",
    "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "PixelData",
}


def _strip_to_type1(folder: Path) -> None:
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        for element in list(ds):
            if element.keyword not in _TYPE1_KEPT:
                del ds[element.tag]
        ds.save_as(f)


def _sphere_series(folder: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    shape, spacing, origin = (24, 20, 8), (1.0, 1.2, 2.0), (-10.0, -12.0, 30.0)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [-origin[0], -origin[1], origin[2]]
    centre = affine[:3, :3] @ (np.array(shape) * 0.5) + affine[:3, 3]
    image = np.round(sphere_image(shape, affine, centre)).astype(np.int16)
    write_dicom_series(folder, image, spacing, origin)
    return image, spacing


def test_dicom_seg_from_a_series_without_type2_or_type3_attributes(tmp_path: Path) -> None:
    _image, spacing = _sphere_series(tmp_path / "in" / "mr")
    _strip_to_type1(tmp_path / "in" / "mr")
    first = pydicom.dcmread(next((tmp_path / "in" / "mr").iterdir()))
    assert "PatientBirthDate" not in first and "PatientID" not in first and "SliceThickness" not in first
    predictor = _predictor({"background": 0, "ball": 1}, [1.0, 1.2, 2.0], ThresholdNet(92.0))
    [result] = predict_batch(predictor, find_cases(tmp_path / "in" / "mr", ["MR"]), tmp_path / "out", fmt="both",
                             progress=False)
    assert result.status == "ok", result.error
    nifti = np.asanyarray(nib.load(str(tmp_path / "out" / "mr.nii.gz")).dataobj)
    assert 0 < nifti.sum() < nifti.size
    seg, decoded = _read_back(tmp_path / "out" / "mr.dcm", tmp_path / "in" / "mr")
    np.testing.assert_array_equal(decoded, nifti)
    # Type 2 patient/study attributes present and empty, as the standard allows.
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        assert keyword in seg and not seg[keyword].value, keyword
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(spacing[2])  # the slice spacing stands in


def test_format_both_keeps_the_nifti_when_only_the_seg_fails(tmp_path: Path) -> None:
    _sphere_series(tmp_path / "in" / "ct")
    for f in (tmp_path / "in" / "ct").iterdir():  # no Study UID: a SEG cannot reference the study
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = ""
        ds.save_as(f)
    predictor = _predictor({"background": 0, "ball": 1}, [1.0, 1.2, 2.0], ThresholdNet(92.0))
    cases = find_cases(tmp_path / "in" / "ct", ["CT"])
    [both] = predict_batch(predictor, cases, tmp_path / "both", fmt="both", progress=False)
    assert both.status == "failed"
    assert both.error.startswith("DICOM-SEG not written (NIfTI ct.nii.gz written)") and "StudyInstanceUID" in both.error
    assert (tmp_path / "both" / "ct.nii.gz").is_file() and not (tmp_path / "both" / "ct.dcm").exists()
    log = (tmp_path / "both" / "predict_log.csv").read_text()
    assert "DICOM-SEG not written" in log
    # Asked for the SEG only, the case fails before predicting and writes nothing.
    [seg_only] = predict_batch(predictor, cases, tmp_path / "seg", fmt="dicom-seg", progress=False)
    assert seg_only.status == "failed" and "StudyInstanceUID" in seg_only.error
    assert not list((tmp_path / "seg").glob("ct.*"))


def test_many_structures_are_written_as_one_labelmap_frame_per_slice(tmp_path: Path) -> None:
    from medseg.inference.dicom_seg import LABELMAP_FROM, choose_seg_type, write_dicom_seg

    shape, spacing, origin = (24, 20, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)
    image = np.zeros(shape, np.int16)
    write_dicom_series(tmp_path / "ct", image, spacing, origin)
    reference = read_volume(tmp_path / "ct")
    labels = {"background": 0, **{f"s{i}": i for i in range(1, 118)}}
    assert choose_seg_type(labels) == "labelmap"
    assert choose_seg_type({"background": 0, **{f"s{i}": i for i in range(1, LABELMAP_FROM)}}) == "binary"
    mask = (np.arange(np.prod(shape)).reshape(shape) % 118).astype(np.uint8)  # every structure present
    write_dicom_seg(tmp_path / "seg.dcm", mask, reference, labels)
    seg, decoded = _read_back(tmp_path / "seg.dcm", tmp_path / "ct")
    assert seg.SegmentationType == "LABELMAP" and seg.NumberOfFrames == shape[2]
    np.testing.assert_array_equal(decoded, mask)  # segment numbers = label ids here (consecutive)
    with pytest.raises(ValueError, match="expected auto, binary or labelmap"):
        write_dicom_seg(tmp_path / "x.dcm", mask, reference, labels, seg_type="bitmap")
