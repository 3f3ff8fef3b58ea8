"""Steady-state training throughput of one loop (run in its own process by bench_training.py).

    python benchmarks/_throughput.py medseg|monai DATA_DIR STEPS

Both loops train the same MONAI UNet (channels 16-32-64-128, instance norm), Dice+CE,
AdamW, batch 4, patch 40x56x40, flips + affine augmentation, on the same 60 cases; the
first 10 steps (caching, warm-up) are not timed. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

PATCH = (40, 56, 40)
BATCH = 4
WARMUP = 10


def medseg_loop(data: Path, steps: int) -> float:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback

    from medseg.config import from_dict
    from medseg.data.datamodule import SegmentationDataModule
    from medseg.data.fingerprint import make_plan
    from medseg.data.manifest import load_manifest
    from medseg.training.module import SegmentationModule, module_hparams

    manifest = load_manifest(data / "dataset.json")
    manifest.training = manifest.training[:60]
    cfg = from_dict({}, ["data.patch_size=[40,56,40]", "data.batch_size=4", "data.target_spacing=[1.0,1.0,1.0]",
                         "model.channels=[16,32,64,128]", f"trainer.steps_per_epoch={steps + WARMUP}",
                         "trainer.max_epochs=1", "trainer.progress_bar=false"])
    plan = make_plan(cfg, manifest)
    split = {"train": [c.name for c in manifest.training], "val": []}
    dm = SegmentationDataModule(cfg, manifest, plan, split, None)
    module = SegmentationModule(**module_hparams(cfg, plan))
    marks: dict[str, float] = {}

    class Clock(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
            if batch_idx == WARMUP:
                marks["start"] = time.perf_counter()

        def on_train_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            marks["end"] = time.perf_counter()

    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=0, callbacks=[Clock()], enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    return steps / (marks["end"] - marks["start"])


def monai_loop(data: Path, steps: int) -> float:
    from monai import transforms as mt
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    entries = json.loads((data / "dataset.json").read_text(encoding="utf-8"))["training"][:60]
    files = [{"image": str(data / e["image"]), "label": str(data / e["label"])} for e in entries]
    keys = ("image", "label")
    deterministic = mt.Compose([
        mt.LoadImaged(keys), mt.EnsureChannelFirstd(keys), mt.Orientationd(keys, axcodes="RAS"),
        mt.Spacingd(keys, pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")),
        mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True), mt.SpatialPadd(keys, PATCH),
    ])
    random = mt.Compose([
        mt.RandCropByPosNegLabeld(keys, "label", PATCH, pos=1, neg=2, num_samples=1),
        *[mt.RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)],
        mt.RandAffined(keys, prob=0.2, rotate_range=(0.26,) * 3, scale_range=(0.1,) * 3, mode=("bilinear", "nearest")),
    ])
    ds = CacheDataset(files, mt.Compose([deterministic, random]), cache_rate=1.0, num_workers=2, progress=False)
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0, drop_last=True)
    net = UNet(3, 1, 3, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=0, norm=("instance", {"affine": True}))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-5)
    done, start = 0, 0.0
    while done < steps + WARMUP:
        for batch in loader:
            if done == WARMUP:
                start = time.perf_counter()
            opt.zero_grad()
            loss = loss_fn(net(batch["image"]), batch["label"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            opt.step()
            done += 1
            if done == steps + WARMUP:
                break
    return steps / (time.perf_counter() - start)


if __name__ == "__main__":
    which, data, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    rate = medseg_loop(data, steps) if which == "medseg" else monai_loop(data, steps)
    print(json.dumps({"loop": which, "steps_per_s": rate, "steps": steps}))
