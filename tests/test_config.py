import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medseg.config import ConfigError, PipelineConfig, from_dict, load

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_valid():
    cfg = from_dict({})
    assert isinstance(cfg, PipelineConfig)
    assert cfg.model.name == "unet" and cfg.data.patch_size == [64, 64, 64]


def test_unknown_key_names_key_and_suggestion():
    with pytest.raises(ConfigError, match=r"trainer\.max_epoch: unknown key.*Did you mean 'max_epochs'"):
        from_dict({"trainer": {"max_epoch": 3}})


def test_unknown_section_suggests():
    with pytest.raises(ConfigError, match=r"trainr: unknown key.*Did you mean 'trainer'"):
        from_dict({"trainr": {}})


def test_wrong_type_names_value_and_expected():
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs: got 'ten', expected an integer"):
        from_dict({"trainer": {"max_epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"data\.patch_size\[1\]: got 1\.5"):
        from_dict({"data": {"patch_size": [64, 1.5, 64]}})


def test_impossible_values():
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs: -1 is impossible"):
        from_dict({"trainer": {"max_epochs": -1}})
    with pytest.raises(ConfigError, match=r"data\.patch_size.*multiple of 8"):
        from_dict({"data": {"patch_size": [60, 64, 64]}})
    with pytest.raises(ConfigError, match=r"larger than allowed"):
        from_dict({"data": {"patch_size": [1024, 64, 64]}})
    with pytest.raises(ConfigError, match=r"spatial_dims is 2"):
        from_dict({"model": {"spatial_dims": 2}})
    with pytest.raises(ConfigError, match=r"optim\.ema_decay: 1\.0 is not in \[0, 1\).*0\.999"):
        from_dict({"optim": {"ema_decay": 1.0}})


def test_unknown_network_and_preset_suggest():
    with pytest.raises(ConfigError, match=r"model\.name: unknown 'unte' \(known: unet, .*Did you mean 'unet'"):
        from_dict({"model": {"name": "unte"}})
    with pytest.raises(ConfigError, match=r"Did you mean 'limited_data'"):
        from_dict({"data": {"augmentation": "limited-data"}})
    with pytest.raises(ConfigError, match=r"not one of \['deconv'.*Did you mean 'pixelshuffle'"):
        from_dict({"model": {"upsample": "pixel_shuffle"}})


def test_catalogue_checks_run_before_any_compute():
    """What used to fail only after preprocessing (augmentation transform names) or when the
    loss was built (class weights for a loss without a weighted term) fails at load."""
    with pytest.raises(ConfigError, match=r"augmentation_probabilities \(preset 'light'\): unknown 'gama'"):
        from_dict({"data": {"augmentation_probabilities": {"gama": 0.5}}})
    with pytest.raises(ConfigError, match=r"Did you mean 'gamma'"):
        from_dict({"data": {"augmentation": "limited_data", "augmentation_probabilities": {"gama": 0.5}}})
    assert from_dict({"data": {"augmentation": "limited_data", "augmentation_probabilities": {"gamma": 0.5}}})
    with pytest.raises(ConfigError, match=r"loss.class_weights: 'dice' has no cross-entropy"):
        from_dict({"loss": {"name": "dice", "class_weights": [1.0, 2.0]}})


def test_overrides_parse_yaml_values():
    cfg = from_dict({}, ["trainer.max_epochs=3", "data.patch_size=[32,32,32]", "trainer.precision=bf16-mixed"])
    assert cfg.trainer.max_epochs == 3 and cfg.data.patch_size == [32, 32, 32]
    assert cfg.trainer.precision == "bf16-mixed"
    with pytest.raises(ConfigError, match="expected key=value"):
        from_dict({}, ["trainer.max_epochs"])


def test_scientific_notation_without_a_point_is_a_number():
    """PyYAML (YAML 1.1) reads 3e-5 as a string; a float field takes it as the number."""
    cfg = from_dict({"optim": {"lr": "1E-2"}}, ["optim.weight_decay=3e-5"])
    assert (cfg.optim.weight_decay, cfg.optim.lr) == (3e-5, 1e-2)
    with pytest.raises(ConfigError, match=r"optim.lr: got '3e-5x', expected a number"):
        from_dict({}, ["optim.lr=3e-5x"])
    with pytest.raises(ConfigError, match=r"trainer.max_epochs: got '1e3', expected an integer"):
        from_dict({}, ["trainer.max_epochs=1e3"])


def test_literal_accepts_yaml_int_for_string_choice():
    assert from_dict({"trainer": {"precision": 32}}).trainer.precision == "32"


def test_load_names_file_and_uses_stem(tmp_path):
    p = tmp_path / "exp1.yaml"
    p.write_text(yaml.safe_dump({"trainer": {"max_epochs": 2}}))
    assert load(p).name == "exp1"
    p.write_text("model:\n  chanels: [8, 16]\n")
    with pytest.raises(ConfigError, match=r"exp1\.yaml: model\.chanels: unknown key.*'channels'"):
        load(p)


def test_every_shipped_pipeline_is_valid():
    files = sorted((REPO / "pipelines").glob("*.yaml"))
    assert files, "no pipelines shipped"
    for f in files:
        load(f)


def test_cli_typo_fails_fast_with_key(tmp_path):
    p = tmp_path / "typo.yaml"
    p.write_text("trainer:\n  max_epohcs: 3\n")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "medseg", "train", str(p)], capture_output=True, encoding="utf-8", errors="replace")
    elapsed = time.perf_counter() - start
    assert out.returncode == 2
    assert "trainer.max_epohcs" in out.stderr and "max_epochs" in out.stderr
    assert elapsed < 5.0  # generous for a loaded CI machine; typically ~0.3 s


def test_mirror_axes_validated_and_mapped_to_patch_axes():
    from medseg.config import patch_mirror_axes

    assert patch_mirror_axes(from_dict({})) == (0, 1, 2)
    assert patch_mirror_axes(from_dict({"data": {"mirror_axes": [2, 0]}})) == (0, 2)
    assert patch_mirror_axes(from_dict({"data": {"mirror_axes": []}})) == ()
    # 2D on slices along Y (axis 1): the patch holds (X, Z); X -> 0, Z -> 1, Y is dropped
    two_d = {"model": {"spatial_dims": 2}, "data": {"patch_size": [64, 64], "slice_axis": 1}}
    assert patch_mirror_axes(from_dict(two_d)) == (0, 1)
    two_d["data"]["mirror_axes"] = [1, 2]
    assert patch_mirror_axes(from_dict(two_d)) == (1,)
    for bad in ([3], [0, 0], [-1]):
        with pytest.raises(ConfigError, match=r"data\.mirror_axes: .* distinct canonical axes"):
            from_dict({"data": {"mirror_axes": bad}})


def test_precision_auto_is_accepted():
    assert from_dict({"trainer": {"precision": "auto"}}).trainer.precision == "auto"


def test_strides_validated_and_set_the_patch_divisor():
    from medseg.config import network_divisor

    cfg = from_dict({"model": {"channels": [8, 32, 64, 128, 256], "strides": [1, 2, 2, 2]}, "data": {"patch_size": [40, 56, 40]}})
    assert network_divisor(cfg.model) == 8
    with pytest.raises(ConfigError, match=r"data\.patch_size: \[40, 56, 40\] .*multiple of 16"):
        from_dict({"model": {"channels": [8, 32, 64, 128, 256]}, "data": {"patch_size": [40, 56, 40]}})
    for bad in ([1, 2], [1, 3, 2, 2]):
        with pytest.raises(ConfigError, match=r"model\.strides: .* each 1 or 2"):
            from_dict({"model": {"channels": [8, 32, 64, 128, 256], "strides": bad}})
