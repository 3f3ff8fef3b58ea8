"""The :class:`Predictor`: one volume in, its label map in the input's exact geometry out.

Steps: the checkpoint's own preprocessing (:func:`medseg.data.preprocess.prepare_case`,
nothing re-specified) -> block by block over the network grid
(:func:`medseg.inference.blocks.plan_blocks`, sized by ``block_bytes``): Gaussian-weighted
sliding window per network, optionally with mirroring TTA, and the ensemble's mean
probability (:mod:`medseg.inference.blockwise`), then the argmax of their linear
resampling onto the input grid for the output voxels the block owns
(:mod:`medseg.inference.resample`) -> paste and undo the reorientation
(:mod:`medseg.data.inverse`) -> per-structure post-processing
(:mod:`medseg.inference.postprocess`). Class probabilities exist for one block at a time,
so memory does not grow with ``classes x volume``; the labels equal those of one
whole-volume pass (windows, weights, TTA and ensemble averaging are the same) except
where two classes tie within float rounding.

An ensemble (e.g. cross-validation folds) must share one preprocessing plan, so that all
members predict on the same grid; their networks, patch sizes and window settings may
differ. Post-processing comes from the first member's config.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from medseg.config import PipelineConfig
from medseg.data.grid import canonical_spacing, label_dtype, voxel_spacing
from medseg.data.inverse import labels_to_input
from medseg.data.io import Volume
from medseg.data.preprocess import PreparedCase, PreprocessingPlan, prepare_case
from medseg.hardware import INFERENCE_PRECISIONS
from medseg.inference.allocator import release_free_memory
from medseg.inference.block_source import BlockSource
from medseg.inference.blocks import BlockPlan, Box, evaluated
from medseg.inference.blockwise import BLOCK_BYTES, block_source, plan_for
from medseg.inference.crf import crf_settings, refine_probabilities
from medseg.inference.postprocess import PostprocessSpec, postprocess, resolve_spec
from medseg.inference.resample import block_labels, grid_taps
from medseg.inference.tuned import with_tuned
from medseg.inference.window import manage_layout


@dataclass
class LoadedModel:
    """One ensemble member: an eval-mode network with the config it was trained with."""

    net: torch.nn.Module
    cfg: PipelineConfig
    source: str = ""


@dataclass
class PredictorSpec:
    """How to build a :class:`Predictor` from files; picklable, so worker processes can rebuild it."""

    models: list[str]
    device: str = "cpu"
    tta: bool | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    postprocess: bool = True
    threads: int | None = None
    """torch intra-op threads (None: torch's default)."""
    crf: bool | None = None
    """Force the CRF on/off (None: the config's ``inference.crf.enabled``)."""
    block_bytes: int | None = None
    """Memory budget of one block's class probabilities (None: :func:`default_block_bytes`)."""
    precision: str | None = None
    """Override every member's ``inference.precision`` (fp32, bf16, auto; None keeps each one's)."""


def default_block_bytes(members: int) -> int:
    """The block budget of a prediction with ``members`` networks: :data:`BLOCK_BYTES` for one,
    divided among the members of an ensemble. Measured (benchmarks/RESULTS.md, "Ensembles, TTA
    and statistics at 118 classes"): an ensemble of two at the full budget peaked at 1366 MiB
    (3 classes) and 1499 MiB (118, with statistics), at half of it 1070 and 1052 MiB (1.68x
    the 3-class time): the second member's pass runs while the first one's block is held."""
    return BLOCK_BYTES // max(1, members)


def resolve_device(device: str | None) -> str:
    """``auto``/None -> ``cuda`` when available, else ``cpu``; anything else is checked by torch."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r}: not a device name; use cpu, cuda, cuda:1 or auto") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
    return str(dev)


def load_model(path: Path | str, device: str = "cpu") -> tuple[LoadedModel, PreprocessingPlan]:
    """A checkpoint file, a run directory (its best checkpoint) or a ``medseg export`` folder."""
    from medseg.inference.export import is_export_dir, load_exported

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--model {path}: not found; pass a run directory, a .ckpt file or an export folder")
    if path.is_dir() and is_export_dir(path):
        net, cfg, plan = load_exported(path, device=device)
        return LoadedModel(net, cfg, str(path)), plan
    from medseg.models.checkpoint import best_checkpoint, load_network

    ckpt = best_checkpoint(path)
    net, cfg, plan = load_network(ckpt, device)
    return LoadedModel(net, cfg, str(ckpt)), plan


class Predictor:
    """Predict label maps with one network or an ensemble, in the input's exact geometry.

    ``tta``/``overlap``/``sw_batch_size``/``precision``: override the checkpoints' ``inference``
    settings (None keeps each member's own). ``apply_postprocess``: run the configured
    per-structure post-processing (and the configured CRF). ``crf``: force the CRF on the
    network-grid probabilities on or off (None: ``inference.crf.enabled``). Usually built with
    :meth:`from_checkpoints`:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import medseg
    >>> from medseg.data.io import read_volume
    >>> from medseg.data.synthetic import generate_dataset
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = Path(tmp.name)
    >>> manifest = generate_dataset(root / "data", cases=4, shape=(32, 32, 24))
    >>> tiny = {"data": {"patch_size": [16, 16, 16], "target_spacing": [4.0, 4.0, 4.0]},
    ...         "model": {"channels": [4, 8]},
    ...         "trainer": {"max_epochs": 1, "steps_per_epoch": 2, "val_every_n_epochs": 1,
    ...                     "memory_format": "contiguous", "progress_bar": False}}
    >>> _ = medseg.train(tiny, data=manifest, output=root / "run")
    >>> predictor = medseg.Predictor.from_checkpoints([root / "run"])
    >>> predictor.labels
    {'background': 0, 'organ': 1, 'lesion': 2, 'vessel': 3}
    >>> image = read_volume(root / "data" / "imagesTs" / "phantom_003.nii.gz")
    >>> mask = predictor.predict_array(image.array, image.affine)  # (X, Y, Z) label ids
    >>> mask.shape == image.spatial_shape, mask.dtype.name, set(mask.flat) <= {0, 1, 2, 3}
    (True, 'uint8', True)
    >>> tmp.cleanup()
    """

    def __init__(
        self,
        models: Sequence[LoadedModel],
        plan: PreprocessingPlan,
        tta: bool | None = None,
        overlap: float | None = None,
        sw_batch_size: int | None = None,
        apply_postprocess: bool = True,
        crf: bool | None = None,
        block_bytes: int | None = None,
        precision: str | None = None,
    ) -> None:
        if not models:
            raise ValueError("Predictor needs at least one model")
        if overlap is not None and not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap {overlap}: expected a fraction in [0, 1), e.g. 0.5")
        if sw_batch_size is not None and sw_batch_size < 1:
            raise ValueError(f"sw_batch_size {sw_batch_size}: expected a positive number of windows")
        if precision is not None and precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {', '.join(INFERENCE_PRECISIONS)}")
        self.plan = plan
        self.models = [dataclasses.replace(m, cfg=self._override(m.cfg, tta, overlap, sw_batch_size, precision))
                       for m in models]
        for m in self.models:  # inference.memory_format applies to the networks a predictor owns
            manage_layout(m.net)
        self.spec: PredictorSpec | None = None
        self.post: PostprocessSpec = (
            resolve_spec(self.models[0].cfg.inference, plan.labels) if apply_postprocess else PostprocessSpec()
        )
        self.crf = crf_settings(self.models[0].cfg.inference.crf, plan.labels, apply_postprocess, crf)
        self.block_bytes = default_block_bytes(len(self.models)) if block_bytes is None else int(block_bytes)
        if self.block_bytes < 1:
            raise ValueError(f"block_bytes {block_bytes}: expected a positive number of bytes, e.g. {BLOCK_BYTES}")
        self.last_plan: BlockPlan | None = None
        """The block plan of the latest prediction (for logs and benchmarks)."""

    @staticmethod
    def _override(cfg: PipelineConfig, tta: bool | None, overlap: float | None, sw: int | None,
                  precision: str | None = None) -> PipelineConfig:
        inf = dataclasses.replace(cfg.inference)
        if precision is not None:
            inf.precision = precision  # type: ignore[assignment]  # checked in __init__
        if tta is not None:
            inf.tta = tta
        if overlap is not None:
            inf.overlap = overlap
        if sw is not None:
            inf.sw_batch_size = sw
        return dataclasses.replace(cfg, inference=inf)

    @classmethod
    def from_spec(cls, spec: PredictorSpec) -> Predictor:
        """Load every model of ``spec`` and check that they share one preprocessing plan."""
        if spec.threads:
            torch.set_num_threads(spec.threads)
        device = resolve_device(spec.device)
        loaded = [load_model(m, device) for m in spec.models]
        if spec.postprocess:  # RUN_DIR/postprocessing.json (medseg tune-postprocess), where present
            first, first_plan = loaded[0]
            loaded[0] = (dataclasses.replace(first, cfg=with_tuned(first.cfg, spec.models[0])), first_plan)
        plan = loaded[0][1]
        for (_, other), path in zip(loaded[1:], spec.models[1:], strict=True):
            _check_same_plan(plan, other, spec.models[0], path)
        predictor = cls([m for m, _ in loaded], plan, spec.tta, spec.overlap, spec.sw_batch_size, spec.postprocess,
                        spec.crf, spec.block_bytes, spec.precision)
        predictor.spec = spec
        return predictor

    @classmethod
    def from_checkpoints(cls, models: Sequence[Path | str], device: str = "cpu", **kwargs: object) -> Predictor:
        """Shorthand for ``from_spec(PredictorSpec([...], device, ...))``."""
        return cls.from_spec(PredictorSpec([str(m) for m in models], device, **kwargs))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ properties

    @property
    def labels(self) -> dict[str, int]:
        """Structure name -> label id, background included."""
        return dict(self.plan.labels)

    @property
    def channel_names(self) -> list[str]:
        return list(self.plan.channel_names)

    @property
    def num_classes(self) -> int:
        return self.plan.num_classes

    # ------------------------------------------------------------------ prediction

    def prepare(self, image: np.ndarray, affine: np.ndarray) -> PreparedCase:
        """The checkpoint's preprocessing of a (C, X, Y, Z) image (see ``prepare_case``)."""
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[0] != len(self.plan.channel_names):
            raise ValueError(
                f"image of shape {image.shape}: expected (C, X, Y, Z) with C = {len(self.plan.channel_names)} "
                f"channels {self.plan.channel_names}"
            )
        return prepare_case(image, affine, self.plan)

    @property
    def members(self) -> list[tuple[torch.nn.Module, PipelineConfig]]:
        return [(m.net, m.cfg) for m in self.models]

    def source(self, prepared: PreparedCase, box: Box | None = None) -> BlockSource:
        """The ensemble's probabilities over a block of the network grid (``(lo, hi)`` per
        axis; None: the whole grid), produced slab by slab
        (:class:`medseg.inference.block_source.BlockSource`)."""
        image = torch.from_numpy(prepared.image)
        shape = tuple(image.shape[1:])
        box = tuple((0, n) for n in shape) if box is None else box
        return block_source(self.members, image, box, self.num_classes)

    def probabilities(self, prepared: PreparedCase, box: Box | None = None) -> torch.Tensor:
        """Mean class probabilities (K, *box) of the ensemble on the network grid (CPU).

        ``box``: as :meth:`source`. This materialises ``classes x box voxels x 4`` bytes,
        which :meth:`predict_array` never does (except with a CRF, which refines them).
        """
        return self.source(prepared, box).full().cpu()

    def plan_blocks(self, grid_shape: tuple[int, ...]) -> BlockPlan:
        """How :meth:`predict_array` cuts a network grid of ``grid_shape`` (one block with a CRF,
        which refines whole-grid probabilities)."""
        budget = (2**62) if self.crf.enabled else self.block_bytes
        return plan_for(self.members, grid_shape, self.num_classes, budget, len(self.plan.channel_names))

    def predict_array(self, image: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Label map (X, Y, Z) for a (C, X, Y, Z) or (X, Y, Z) image with its 4x4 RAS affine.

        The result has the image's spatial shape and voxel order, so it is written with
        the image's own header/affine.
        """
        return self.predict_prepared(self.prepare(image, affine), affine)

    def predict_prepared(self, prepared: PreparedCase, affine: np.ndarray) -> np.ndarray:
        """Label map in the input's geometry for a case that :meth:`prepare` made from an
        image with this ``affine``. The input image is not needed any more: a batch frees it
        before the network runs (``medseg.inference.batch.predict_case``). ``prepared``'s
        network-grid image is released on the way."""
        release_free_memory()  # what preprocessing freed
        crop_shape = tuple(s.stop - s.start for s in prepared.bbox)
        grid_shape = tuple(prepared.image.shape[1:])
        plan = self.plan_blocks(grid_shape)
        self.last_plan = plan
        taps = grid_taps(grid_shape, crop_shape)
        labels = np.empty(crop_shape, dtype=label_dtype(self.num_classes - 1), order="F")  # NIfTI's on-disk order
        for box in plan.blocks:
            source = self.source(prepared, evaluated(box, grid_shape))
            if self.crf.enabled:  # one block: the whole grid
                probs = source.full().cpu()
                refine_probabilities(probs, prepared.image, voxel_spacing(prepared.affine), self.crf, self.plan.labels)
                source = BlockSource.of(probs)
            block_labels(source, box, taps, labels)
            del source
            release_free_memory()  # the block's freed window buffers leave the heap (allocator.py)
        prepared.image = np.empty(0, dtype=np.float32)  # free the network-grid image early
        if not self.post.empty:
            postprocess(labels, tuple(canonical_spacing(affine)), self.post)
        return labels_to_input(labels, prepared, affine)

    def predict_volume(self, volume: Volume) -> np.ndarray:
        """Label map for a :class:`Volume` (image (C, X, Y, Z) or (X, Y, Z) of any real dtype)."""
        return self.predict_array(volume.array, volume.affine)

    def describe(self) -> dict[str, object]:
        """A JSON-able summary (models, plan, window settings) for logs."""
        return {
            "models": [m.source for m in self.models],
            "plan": asdict(self.plan),
            "inference": [asdict(m.cfg.inference) for m in self.models],
        }

    def __repr__(self) -> str:
        return f"Predictor({json.dumps(self.describe()['models'])}, classes={self.num_classes})"


def _check_same_plan(a: PreprocessingPlan, b: PreprocessingPlan, path_a: str, path_b: str) -> None:
    da, db = asdict(a), asdict(b)
    diff = [k for k in da if da[k] != db.get(k)]
    if diff:
        k = diff[0]
        raise ValueError(
            f"--model {path_b}: preprocessing differs from {path_a} in {k!r} ({db.get(k)!r} vs {da[k]!r}); "
            "an ensemble must share one plan (e.g. the folds of one cross-validation run)"
        )
