"""Image I/O with exact geometry: NIfTI through nibabel, NRRD/MHA/DICOM through SimpleITK.

Every image in medseg is a :class:`Volume`: a NumPy array in voxel order (X, Y, Z), or
(C, X, Y, Z) for multi-channel images, plus the 4x4 voxel -> world affine in RAS+ mm
(nibabel's convention). SimpleITK's LPS direction/origin/spacing is converted to that
affine and back, so direction, origin and spacing all survive a round trip; only spacing
is not geometry.

Label maps are written with the header of the image they belong to, atomically (a
temporary name, then a rename), and verified by reading the written header back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseg.data.grid import label_dtype, same_grid, voxel_spacing
from medseg.utils import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ImageReadError(ValueError):
    """A file or folder could not be read as an image; the message says why."""


@dataclass
class Volume:
    """An image or label map with its geometry.

    ``array``: (X, Y, Z) or (C, X, Y, Z). ``affine``: voxel index -> RAS+ world (mm).
    ``header``: the source NIfTI header when read from NIfTI (reused on write so the output
    header matches the input exactly). ``dicom_files``: the sorted slice files when read
    from a DICOM series.
    """

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    source: str = ""
    dicom_files: list[str] = field(default_factory=list)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[-3:])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array's X, Y, Z axes."""
        return voxel_spacing(self.affine)

    @property
    def num_channels(self) -> int:
        return 1 if self.array.ndim == 3 else int(self.array.shape[0])


def is_image_path(path: Path | str) -> bool:
    name = str(path).lower()
    return name.endswith(IMAGE_SUFFIXES)


def is_dicom_series_dir(path: Path | str) -> bool:
    """True when ``path`` is a folder holding at least one DICOM series (SimpleITK/GDCM)."""
    path = Path(path)
    if not path.is_dir():
        return False
    import SimpleITK as sitk

    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def _check_array(arr: np.ndarray, path: Path) -> None:
    if arr.ndim not in (3, 4):
        raise ImageReadError(
            f"{path}: image has {arr.ndim} dimensions {arr.shape}; expected a 3D volume "
            "(or 4D with channels last in NIfTI)"
        )
    if arr.size == 0 or min(arr.shape) == 0:
        raise ImageReadError(f"{path}: image is empty (shape {arr.shape})")


COMPACT = "compact"
"""``read_volume(path, dtype=COMPACT)``: an image whose stored values are integers of up to 16
bits (CT in HU, most MRI) is kept in its stored type, every value of which float32 holds
exactly: half (int16) or a quarter (uint8) of the float32 memory, the same numbers. Anything
else (scaled, 32/64-bit, float64 data) is read as float32."""
_COMPACT_TYPES = frozenset(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.float32))


def compact_dtype(dtype: Any) -> np.dtype:
    """``dtype`` if it is a :data:`COMPACT` type (float32 holds its values exactly), else float32."""
    dt = np.dtype(dtype)
    return dt if dt in _COMPACT_TYPES else np.dtype(np.float32)


def _nifti_array(img: Any, dtype: Any) -> np.ndarray:
    proxy = img.dataobj
    if dtype is None:
        return np.asanyarray(proxy)
    if isinstance(dtype, str) and dtype == COMPACT:
        unscaled = float(getattr(proxy, "slope", 1.0)) == 1.0 and float(getattr(proxy, "inter", 0.0)) == 0.0
        stored = np.dtype(img.get_data_dtype())
        if unscaled and compact_dtype(stored) == stored:
            return np.asanyarray(proxy)  # the stored values, no float copy
        dtype = np.float32
    return np.asarray(proxy, dtype=dtype)


def _read_nifti(path: Path, dtype: Any) -> Volume:
    try:
        img = nib.load(str(path))
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise ImageReadError(f"{path}: not a NIfTI image ({type(img).__name__})")
        arr = _nifti_array(img, dtype)
    except ImageReadError:
        raise
    except Exception as err:  # nibabel raises many types for corrupt/truncated files
        raise ImageReadError(f"{path}: unreadable NIfTI ({type(err).__name__}: {err})") from err
    if arr.ndim == 5 and arr.shape[3] == 1:  # (X, Y, Z, 1, C) as some tools write vectors
        arr = arr[:, :, :, 0, :]
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    _check_array(arr, path)
    if arr.ndim == 4:  # NIfTI stores channels last; medseg is channel-first
        arr = np.ascontiguousarray(np.moveaxis(arr, -1, 0))
    return Volume(arr, np.asarray(img.affine, dtype=np.float64), img.header.copy(), str(path))


def sitk_to_affine(image: Any) -> np.ndarray:
    """SimpleITK (LPS direction, origin, spacing) -> 4x4 RAS affine for (X, Y, Z) indices."""
    ndim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(ndim, ndim)[:3, :3]
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[:3]
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)[:3]
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps


def affine_to_sitk(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """4x4 RAS affine -> SimpleITK (spacing, origin, direction) in LPS."""
    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.asarray(voxel_spacing(affine))  # column norms: the LPS flip keeps them
    direction = lps[:3, :3] / spacing[None, :]
    return tuple(spacing), tuple(lps[:3, 3]), tuple(direction.ravel())


def _from_sitk(image: Any, path: Path, dtype: Any) -> Volume:
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(image)  # (Z, Y, X[, C]), a view: the copy below is the only one
    ncomp = image.GetNumberOfComponentsPerPixel()
    arr = np.moveaxis(arr, -1, 0) if ncomp > 1 else arr[None]
    if isinstance(dtype, str) and dtype == COMPACT:
        dtype = compact_dtype(arr.dtype)
    # (C, X, Y, Z), converted in the same copy
    arr = np.ascontiguousarray(np.transpose(arr, (0, 3, 2, 1)), dtype=dtype if dtype is not None else arr.dtype)
    if arr.shape[0] == 1:
        arr = arr[0]
    _check_array(arr, path)
    return Volume(arr, sitk_to_affine(image), None, str(path))


def dicom_series_files(folder: Path | str) -> list[str]:
    """Sorted slice files of the (largest) DICOM series in ``folder``."""
    import SimpleITK as sitk

    folder = Path(folder)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise ImageReadError(f"{folder}: no DICOM series found in this folder")
    series: list[list[str]] = [list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in ids]
    return max(series, key=len)


def _read_dicom(folder: Path, dtype: Any) -> Volume:
    import SimpleITK as sitk

    files = dicom_series_files(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise ImageReadError(f"{folder}: unreadable DICOM series ({err})") from err
    vol = _from_sitk(image, folder, dtype)
    vol.dicom_files = files
    return vol


def read_volume(path: Path | str, dtype: Any = np.float32) -> Volume:
    """Read a NIfTI/NRRD/MHA file or a DICOM series folder into a :class:`Volume`.

    ``dtype``: the array's dtype (float32 for images); ``None`` keeps the stored dtype;
    :data:`COMPACT` keeps stored integers of up to 16 bits and reads anything else as float32.
    Raises :class:`ImageReadError` with the path and the reason for anything unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if path.is_dir():
        return _read_dicom(path, dtype)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return _read_nifti(path, dtype)
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ImageReadError(f"{path}: unreadable image ({str(err).strip().splitlines()[-1]})") from err
    return _from_sitk(image, path, dtype)


def read_label(path: Path | str) -> Volume:
    """Read a label map as integers; a non-integer float label map is an error."""
    vol = read_volume(path, dtype=None)
    arr = vol.array
    if arr.ndim != 3:
        raise ImageReadError(f"{path}: label map has shape {arr.shape}; expected a 3D volume")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ImageReadError(f"{path}: label map contains NaN or infinite values")
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise ImageReadError(
                f"{path}: label map holds non-integer values (e.g. {arr[rounded != arr].flat[0]}); "
                "expected integer label ids"
            )
        arr = rounded
    if arr.size and arr.min() < 0:
        raise ImageReadError(f"{path}: label map has negative values (min {arr.min()})")
    try:
        dtype = label_dtype(int(arr.max(initial=0)))
    except ValueError as err:
        raise ImageReadError(f"{path}: {err}") from None
    vol.array = arr.astype(dtype)
    return vol


def _nifti_image(array: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None) -> nib.Nifti1Image:
    if array.ndim == 4:  # back to NIfTI's channels-last layout
        array = np.moveaxis(array, 0, -1)
    if header is not None:
        hdr = header.copy()
        hdr.set_data_dtype(array.dtype)
        hdr.set_slope_inter(1.0, 0.0)
        hdr["cal_min"], hdr["cal_max"] = 0, 0
        img = nib.Nifti1Image(array, affine, hdr)
        img.header.set_slope_inter(1.0, 0.0)
        return img
    img = nib.Nifti1Image(array, affine)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def write_volume(
    path: Path | str,
    array: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
) -> None:
    """Atomically write ``array`` ((X,Y,Z) or (C,X,Y,Z)) with ``affine`` (RAS mm).

    NIfTI goes through nibabel and reuses ``header`` when given; NRRD/MHA go through
    SimpleITK with the affine converted to LPS direction/origin/spacing.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.name.lower().endswith(NIFTI_SUFFIXES):
            nib.save(_nifti_image(array, affine, header), str(tmp))
        elif path.name.lower().endswith(SITK_SUFFIXES):
            import SimpleITK as sitk

            arr = np.transpose(array, (2, 1, 0)) if array.ndim == 3 else np.transpose(array, (3, 2, 1, 0))
            image = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=array.ndim == 4)
            spacing, origin, direction = affine_to_sitk(affine)
            image.SetSpacing(spacing)
            image.SetOrigin(origin)
            image.SetDirection(direction)
            sitk.WriteImage(image, str(tmp), useCompression=True)
        else:
            raise ValueError(f"{path}: unsupported output extension; use .nii.gz, .nii, .nrrd or .mha")


def write_label(path: Path | str, labels: np.ndarray, reference: Volume, verify: bool = True) -> None:
    """Write a label map in ``reference``'s exact geometry and verify the written header.

    ``labels`` must have the reference's spatial shape. The output reuses the reference's
    NIfTI header when it has one, so shape, affine, qform/sform codes and units match.
    """
    if labels.shape != reference.spatial_shape:
        raise ValueError(
            f"{path}: label map shape {labels.shape} differs from the input's {reference.spatial_shape}"
        )
    max_label = int(labels.max(initial=0))
    labels = labels.astype(label_dtype(max_label), copy=False)
    write_volume(path, labels, reference.affine, reference.header)
    if verify:
        written: Any = nib.load(str(path)) if str(path).lower().endswith(NIFTI_SUFFIXES) else None
        if written is not None and not same_grid(written.shape, written.affine, reference.spatial_shape, reference.affine):
            Path(path).unlink(missing_ok=True)
            raise RuntimeError(
                f"{path}: written header (shape {written.shape}, affine {written.affine.tolist()}) "
                f"does not match the input's (shape {reference.spatial_shape}, "
                f"affine {reference.affine.tolist()}); the output was removed"
            )


def same_geometry(a: Volume, b: Volume) -> bool:
    """Same spatial shape and affine (within :data:`medseg.data.grid.AFFINE_ATOL_MM`)."""
    return same_grid(a.spatial_shape, a.affine, b.spatial_shape, b.affine)
