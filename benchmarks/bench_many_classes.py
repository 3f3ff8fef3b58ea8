"""Many-structure prediction: peak memory and time by class count, block-wise vs one whole-volume block.

The CT-sized phantom of the inference benchmark (512x512x300 at 0.8x0.8x2.5 mm, LPS,
network at 1.6x1.6x2.5 mm: a 256x256x300 network grid) and a whole-body-sized one
(512x512x1000), predicted by the same randomly initialised DynUNet (nnU-Net's architecture,
as TotalSegmentator runs it: channels 8-16-32-64, a 1x1x1 output convolution; patch 64^3,
overlap 0.5, Gaussian blending) built with 3, 20 or 118 output classes (118:
TotalSegmentator's label set, background included). MONAI's UNet is not used here: its top
up-sampling layer is a 3x3x3 transposed convolution straight into the classes, so its own
cost grows ~20x from 3 to 118 classes whatever the inference does. Each run is its own
subprocess; time = read -> mask written and verified, through the batch's own per-case function
(``medseg.inference.batch.predict_case``: the input read in its stored int16, freed before the
network runs), imports and model loading excluded, after one untimed warm-up on a corner of the
image; peak memory = the subprocess's VmHWM.

``--code DIR`` runs the children with another checkout of medseg first on the path (e.g. a
worktree of the commit before block-wise prediction) for a before/after comparison.
``--block-mb`` sets the predictor's block budget (default: medseg's). ``--exact-passes`` keeps a
TTA member's finished passes in float32 instead of float16
(``medseg.inference.block_source.PASS_DTYPE``); with ``--compare-to`` the same folder, the masks
of a run with and one without it are compared (how many voxels the float16 rounding flips).

    .venv/bin/python benchmarks/bench_many_classes.py --classes 3,20,118 --slices 300,1000 [--tta] [--code DIR]
        [--models N] [--statistics]     # an ensemble of N networks; statistics + QA of the case
        [--exact-passes] [--compare-to DIR]  # float32 passes; agreement with DIR's masks of the twin run
    .venv/bin/python benchmarks/bench_many_classes.py --train --classes 3,118   # training + validation memory
    .venv/bin/python benchmarks/bench_many_classes.py --dicom-seg ../shared/data  # BINARY vs LABELMAP SEG
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def setup(workdir: Path, slices: int, classes: int, tta: bool, models: int = 1) -> dict[str, str]:
    """The phantom CT (uncompressed NIfTI, written once) and ``models`` random networks'
    checkpoints (seeds 0, 1, ...; comma-joined under "ckpt")."""
    import nibabel as nib
    import numpy as np

    sys.path.insert(0, str(HERE))
    from bench_inference import _phantom

    workdir.mkdir(parents=True, exist_ok=True)
    shape, spacing = (512, 512, slices), (0.8, 0.8, 2.5)
    image = workdir / f"ct_{slices}.nii"
    if not image.exists():
        affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
        affine[:3, 3] = [-(n * s) / 2 for n, s in zip(shape, spacing, strict=True)]
        img = nib.Nifti1Image(_phantom(shape, "ct"), affine)
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        nib.save(img, str(image))
    warmup = workdir / "warmup.nii"
    if not warmup.exists():
        src: Any = nib.load(str(image))
        nib.save(src.slicer[:96, :96, :72], str(warmup))
    ckpts = [_random_checkpoint(workdir, classes, tta, seed) for seed in range(models)]
    return {"image": str(image), "ckpt": ",".join(ckpts), "warmup": str(warmup)}


def _random_checkpoint(workdir: Path, classes: int, tta: bool, seed: int) -> str:
    import torch

    from medseg.config import DataConfig, InferenceConfig, ModelConfig, PipelineConfig
    from medseg.data.preprocess import PreprocessingPlan
    from medseg.training.module import SegmentationModule, module_hparams

    # the architecture is in the name: a checkpoint cached by an older version of this script
    # (a MONAI UNet, whose head alone costs 20x at 118 classes) must not be reused
    suffix = f"_seed{seed}" if seed else ""
    ckpt = workdir / f"model_dynunet-8-64_{classes}{'_tta' if tta else ''}{suffix}.ckpt"
    if not ckpt.exists():
        labels = {"background": 0, **{f"structure_{i}": i for i in range(1, classes)}}
        plan = PreprocessingPlan(
            target_spacing=[1.6, 1.6, 2.5], normalization="ct", labels=labels, ct_clip=[-1000.0, 1000.0],
            ct_mean=50.0, ct_std=300.0, crop_foreground=False,
        )
        cfg = PipelineConfig(
            model=ModelConfig(name="dynunet", channels=[8, 16, 32, 64], strides=[2, 2, 2]),
            data=DataConfig(patch_size=[64, 64, 64]),
            inference=InferenceConfig(overlap=0.5, sw_batch_size=4, blend="gaussian", tta=tta),
        )
        torch.manual_seed(seed)
        module = SegmentationModule(**module_hparams(cfg, plan))
        torch.save({"hyper_parameters": module_hparams(cfg, plan), "state_dict": module.state_dict()}, ckpt)
    return str(ckpt)


def train_dataset(workdir: Path, classes: int, cases: int = 4, shape: tuple[int, int, int] = (128, 128, 96)) -> Path:
    """A Decathlon-layout dataset whose labels hold ``classes - 1`` structures (Voronoi cells of
    random seeds inside an ellipsoidal body), each with its own intensity."""
    import nibabel as nib
    import numpy as np

    root = workdir / f"train_{classes}"
    manifest = root / "dataset.json"
    if manifest.exists():
        return manifest
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(classes)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    centre, radii = np.array(shape) / 2, np.array(shape) * 0.45
    body = (((grid - centre) / radii) ** 2).sum(1) <= 1.0
    entries = []
    for case in range(cases):
        seeds = centre + (rng.random((classes - 1, 3)) - 0.5) * radii * 1.6
        nearest = np.zeros(len(grid), np.int64)
        for start in range(0, len(grid), 2**18):  # nearest seed, in chunks
            d = ((grid[start : start + 2**18, None, :] - seeds[None]) ** 2).sum(-1)
            nearest[start : start + 2**18] = d.argmin(1) + 1
        label = np.where(body, nearest, 0).reshape(shape).astype(np.uint8)
        image = (rng.normal(0, 20, shape) + 40 * (label % 7) + 100 * (label > 0)).astype(np.float32)
        affine = np.diag([1.5, 1.5, 2.0, 1.0])
        name = f"case_{case:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / name))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / name))
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    labels = {"0": "background", **{str(i): f"structure_{i}" for i in range(1, classes)}}
    manifest.write_text(json.dumps({"name": f"many_{classes}", "modality": {"0": "CT"}, "labels": labels,
                                    "numTraining": cases, "training": entries, "test": []}))
    return manifest


def train_child(args: argparse.Namespace) -> None:
    """Train a few steps at the default patch size with validation; print peak memory."""
    import torch

    import medseg

    torch.set_num_threads(args.threads)
    config = {"data": {"target_spacing": [1.5, 1.5, 2.0], "val_fraction": 0.25},
              "model": {"channels": [8, 16, 32]},
              "trainer": {"max_epochs": 2, "steps_per_epoch": 3, "val_every_n_epochs": 1, "progress_bar": False}}
    start = time.perf_counter()
    medseg.train(config, data=args.image, output=args.out)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb()}))


def dicom_seg(data: Path) -> None:
    """BINARY vs LABELMAP DICOM-SEG of the sample CT series' 117-structure label map: seconds and size."""
    import nibabel as nib
    import numpy as np

    from medseg.data.io import read_volume
    from medseg.inference.dicom_seg import write_dicom_seg

    folder = data / "ct_abdomen_sample"
    reference = read_volume(folder / "dicom")
    labels = np.asanyarray(nib.load(str(folder / "dicom_seg_totalsegmentator.nii.gz")).dataobj).astype(np.uint8)  # type: ignore[attr-defined]
    names = json.loads((folder / "labels.json").read_text())["total"]
    label_map = {"background": 0, **{v: int(k) for k, v in names.items()}}
    for kind in ("binary", "labelmap"):
        out = Path("/tmp") / f"medseg-bench-seg-{kind}.dcm"
        start = time.perf_counter()
        write_dicom_seg(out, labels, reference, label_map, seg_type=kind)
        print(json.dumps({"seg_type": kind, "structures": len(label_map) - 1,
                          "present": int(len(np.unique(labels)) - 1), "seconds": time.perf_counter() - start,
                          "mb": out.stat().st_size / 1e6}), flush=True)


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def child(args: argparse.Namespace) -> None:
    import torch

    from medseg.inference.batch import predict_case
    from medseg.inference.inputs import InputCase
    from medseg.inference.predictor import Predictor

    torch.set_num_threads(args.threads)
    if args.exact_passes:
        from medseg.inference import block_source

        block_source.PASS_DTYPE = torch.float32
    kwargs = {"block_bytes": int(args.block_mb * 2**20)} if args.block_mb else {}
    predictor = Predictor.from_checkpoints(args.ckpt.split(","), device="cpu", **kwargs)
    extras = None
    if args.statistics:
        from medseg.inference.batch_extras import BatchExtras

        extras = BatchExtras(dict(predictor.labels), statistics=True)

    def one(path: str, target: str) -> None:
        """What ``medseg predict`` does for a case: read (stored integers kept), predict, write, verify."""
        out = Path(target)
        name = out.name.removesuffix(".nii.gz")
        result = predict_case(predictor, InputCase(name, [Path(path)]), out.parent, resume=False, extras=extras)
        if result.status != "ok":
            raise RuntimeError(f"{path}: {result.error}")

    one(args.warmup, args.out + ".warmup.nii.gz")
    start = time.perf_counter()
    one(args.image, args.out)
    seconds = time.perf_counter() - start
    plan = getattr(predictor, "last_plan", None)
    print(json.dumps({
        "seconds": seconds, "peak_rss_mb": _peak_rss_mb(),
        "blocks": len(plan.blocks) if plan is not None else 1,
        "overhead": plan.overhead if plan is not None else 1.0,
    }))


def run_child(files: dict[str, str], out: Path, threads: int, code: str | None, block_mb: float | None,
              statistics: bool = False, exact_passes: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--image", files["image"], "--ckpt", files["ckpt"],
           "--warmup", files["warmup"], "--out", str(out), "--threads", str(threads)]
    if statistics:
        cmd.append("--statistics")
    if exact_passes:
        cmd.append("--exact-passes")
    if block_mb:
        cmd += ["--block-mb", str(block_mb)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (code or str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(a: Path, b: Path) -> dict[str, float]:
    """The fraction of voxels two masks agree on, and how many differ."""
    import nibabel as nib
    import numpy as np

    ma = np.asanyarray(nib.load(str(a)).dataobj)  # type: ignore[attr-defined]
    mb = np.asanyarray(nib.load(str(b)).dataobj)  # type: ignore[attr-defined]
    differ = int((ma != mb).sum())
    return {"agreement": 1.0 - differ / ma.size, "differing_voxels": differ}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--image")
    parser.add_argument("--ckpt")
    parser.add_argument("--warmup")
    parser.add_argument("--out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--classes", default="3,20,118")
    parser.add_argument("--slices", default="300")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--models", type=int, default=1, help="an ensemble of this many random networks")
    parser.add_argument("--statistics", action="store_true",
                        help="per-structure statistics + QA of the case included (predict --statistics)")
    parser.add_argument("--code", help="another medseg checkout to run (before/after)")
    parser.add_argument("--block-mb", type=float, default=None)
    parser.add_argument("--compare-to", help="folder of masks of an earlier run (same names) to compare with")
    parser.add_argument("--exact-passes", action="store_true", help="keep TTA passes in float32 (not float16)")
    parser.add_argument("--workdir", default="/tmp/medseg-bench-many")
    parser.add_argument("--train", action="store_true", help="measure training + validation instead")
    parser.add_argument("--dicom-seg", metavar="DATA", help="measure DICOM-SEG encodings on DATA/ct_abdomen_sample")
    args = parser.parse_args(argv)
    if args.dicom_seg:
        dicom_seg(Path(args.dicom_seg))
        return 0
    if args.child:
        (train_child if args.train else child)(args)
        return 0
    if args.train:
        for classes in [int(c) for c in args.classes.split(",")]:
            manifest = train_dataset(Path(args.workdir), classes)
            out = Path(args.workdir) / f"run_{classes}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, __file__, "--child", "--train", "--image", str(manifest), "--out", str(out),
                   "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"training failed:\n{proc.stderr[-3000:]}")
            row = {"train_classes": classes, **json.loads(proc.stdout.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
        return 0
    work = Path(args.workdir)
    tag = "code" if args.code else "here"
    rows = []
    for slices in [int(s) for s in args.slices.split(",")]:
        for classes in [int(c) for c in args.classes.split(",")]:
            files = setup(work, slices, classes, args.tta, args.models)
            variant = f"{'_tta' if args.tta else ''}{f'_x{args.models}' if args.models > 1 else ''}"
            variant += "_stats" if args.statistics else ""
            exact = "_exact" if args.exact_passes else ""
            out = work / f"out_{tag}_{slices}_{classes}{variant}{exact}.nii.gz"
            result = run_child(files, out, args.threads, args.code, args.block_mb, args.statistics,
                               args.exact_passes)
            row = {"slices": slices, "classes": classes, "tta": args.tta, "models": args.models,
                   "statistics": args.statistics, "exact_passes": args.exact_passes, **result}
            if args.compare_to:
                twin = "out_here_" if tag == "code" else "out_code_"
                stem = f"{slices}_{classes}{variant}"
                for other in (Path(args.compare_to) / out.name.replace(f"out_{tag}_", twin),
                              Path(args.compare_to) / f"out_{tag}_{stem}{'' if exact else '_exact'}.nii.gz"):
                    if other.exists() and other != out:
                        row.update(agreement(out, other), compared_to=other.name)
                        break
            rows.append(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
