"""Helpers for the inference tests: tiny checkpoints, a threshold "network", DICOM series, Dice."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medseg.config import DataConfig, InferenceConfig, ModelConfig, PipelineConfig
from medseg.data.preprocess import PreprocessingPlan
from medseg.inference.predictor import LoadedModel, Predictor
from medseg.training.module import SegmentationModule, module_hparams

LABELS = {"background": 0, "anterior": 1, "posterior": 2}


def data_dir() -> Path:
    """The shared real-data folder (``MEDSEG_DATA`` overrides ``<repo>/../shared/data``)."""
    return Path(os.environ.get("MEDSEG_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))


def tiny_config(**inference: object) -> PipelineConfig:
    return PipelineConfig(
        model=ModelConfig(channels=[4, 8]),
        data=DataConfig(patch_size=[16, 16, 16]),
        inference=InferenceConfig(sw_batch_size=8, **inference),  # type: ignore[arg-type]
    )


def make_checkpoint(
    path: Path, plan: PreprocessingPlan, cfg: PipelineConfig | None = None, seed: int = 0
) -> Path:
    """A medseg checkpoint of a randomly initialised tiny UNet (no training)."""
    cfg = cfg or tiny_config()
    torch.manual_seed(seed)
    module = SegmentationModule(**module_hparams(cfg, plan))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": module_hparams(cfg, plan), "state_dict": module.state_dict()}, path)
    return path


class ThresholdNet(torch.nn.Module):
    """2-class logits whose argmax is ``image channel 0 > threshold``: a known function of the input."""

    def __init__(self, threshold: float, sharpness: float = 4.0) -> None:
        super().__init__()
        self.threshold = threshold
        self.sharpness = sharpness
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the window reads the device from parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (x[:, :1] - self.threshold) * self.sharpness + 0.0 * self.anchor
        return torch.cat([-d, d], dim=1)


def threshold_predictor(target_spacing: list[float], threshold: float, crop: bool = True, **kwargs: object) -> Predictor:
    plan = PreprocessingPlan(
        target_spacing=target_spacing, normalization="none", labels={"background": 0, "object": 1},
        crop_foreground=crop,
    )
    model = LoadedModel(ThresholdNet(threshold).eval(), tiny_config(), "threshold")
    return Predictor([model], plan, **kwargs)  # type: ignore[arg-type]


def rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


def sphere_image(shape: tuple[int, int, int], affine: np.ndarray, centre_mm: np.ndarray, box_margin: int = 3) -> np.ndarray:
    """100 - distance (mm) to ``centre_mm`` inside a box (zero margin outside it), float32 (X, Y, Z)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    img = 100.0 - np.linalg.norm(world - centre_mm, axis=-1)
    out = np.zeros(shape, dtype=np.float32)
    box = tuple(slice(box_margin, n - box_margin) for n in shape)
    out[box] = img[box]
    return out


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray, qform_code: int = 1, sform_code: int = 1) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.header.set_qform(affine, code=qform_code)
    img.header.set_sform(affine, code=sform_code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def write_dicom_series(
    folder: Path, array: np.ndarray, spacing: tuple[float, float, float], origin: tuple[float, float, float],
    series_uid: str | None = None,
) -> list[Path]:
    """An axial CT series (one file per Z slice) from an (X, Y, Z) int16 array, LPS patient space."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), series_uid or generate_uid(), generate_uid()
    today = datetime.date.today().strftime("%Y%m%d")
    files = []
    for k in range(array.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "PH001", "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "A1", ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "test", 3, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[2]]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (Y), column spacing (X)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = array.shape[1], array.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(array[:, :, k].T.astype(np.int16)).tobytes()
        ds.save_as(str(folder / f"slice{k:03d}.dcm"), enforce_file_format=True)
        files.append(folder / f"slice{k:03d}.dcm")
    return files


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
