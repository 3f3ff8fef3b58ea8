"""Tests for medseg.data.manifest: Decathlon, nnU-Net v2 and CSV manifests.

Manifests only describe files, so the image files here are empty placeholders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.data.manifest import ManifestError, load_manifest


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _json(path: Path, raw: object) -> Path:
    path.write_text(json.dumps(raw))
    return path


def test_decathlon_id_to_name_labels_and_relative_paths(tmp_path: Path) -> None:
    path = _json(tmp_path / "dataset.json", {
        "name": "Liver",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "2": "tumour", "1": "liver"},
        "training": [
            {"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"},
            {"image": "imagesTr/liver_1.nii.gz", "label": "labelsTr/liver_1.nii.gz"},
        ],
        "test": ["./imagesTs/liver_9.nii.gz"],
    })
    m = load_manifest(tmp_path)  # a folder holding dataset.json works too
    assert m.path == path.resolve() and m.format == "decathlon" and m.name == "Liver"
    assert m.labels == {"background": 0, "liver": 1, "tumour": 2}
    assert list(m.labels.values()) == [0, 1, 2]  # sorted by id
    assert m.foreground_labels == {"liver": 1, "tumour": 2}
    assert m.label_names == {0: "background", 1: "liver", 2: "tumour"}
    assert m.channel_names == ["CT"] and m.is_ct
    assert [c.name for c in m.training] == ["liver_0", "liver_1"]
    root = tmp_path.resolve()
    assert m.training[0].images == [root / "imagesTr" / "liver_0.nii.gz"]
    assert m.training[0].label == root / "labelsTr" / "liver_0.nii.gz"
    assert m.test[0].name == "liver_9" and m.test[0].label is None
    assert m.case("liver_1") is m.training[1]
    with pytest.raises(KeyError, match="nope"):
        m.case("nope")


def test_decathlon_background_added_and_channels_ordered_by_index(tmp_path: Path) -> None:
    modality = {str(i): f"ch{i}" for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)}
    m = load_manifest(_json(tmp_path / "d.json", {
        "modality": modality, "labels": {"1": "brain"},
        "training": [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}],
    }))
    assert m.channel_names == [f"ch{i}" for i in range(11)]  # 10 after 9, not after 1
    assert m.labels == {"background": 0, "brain": 1}
    assert not m.is_ct


def test_nnunet_v2_name_to_id_labels_and_channel_files(tmp_path: Path) -> None:
    for name in ("case_a_0000", "case_a_0001", "case_b_0000"):
        _touch(tmp_path / "imagesTr" / f"{name}.nii.gz")
    _touch(tmp_path / "imagesTr" / "notes.txt")
    _touch(tmp_path / "labelsTr" / "case_a.nii.gz")
    for name in ("t_0000", "t_0001"):
        _touch(tmp_path / "imagesTs" / f"{name}.nii.gz")
    _json(tmp_path / "dataset.json", {
        "channel_names": {"1": "T2", "0": "T1"},
        "labels": {"background": 0, "left": 1, "right": 2},
        "numTraining": 2, "file_ending": ".nii.gz",
    })
    m = load_manifest(tmp_path / "dataset.json")
    root = tmp_path.resolve()
    assert m.format == "nnunet" and m.channel_names == ["T1", "T2"]
    assert m.labels == {"background": 0, "left": 1, "right": 2}
    assert [c.name for c in m.training] == ["case_a", "case_b"]
    a, b = m.training
    assert a.images == [root / "imagesTr" / "case_a_0000.nii.gz", root / "imagesTr" / "case_a_0001.nii.gz"]
    assert a.label == root / "labelsTr" / "case_a.nii.gz"
    # a missing channel or label file is still listed, so that check_dataset reports it
    assert b.images[1] == root / "imagesTr" / "case_b_0001.nii.gz" and not b.images[1].exists()
    assert b.label == root / "labelsTr" / "case_b.nii.gz"
    assert [c.name for c in m.test] == ["t"] and m.test[0].label is None


def test_nnunet_other_file_ending(tmp_path: Path) -> None:
    _touch(tmp_path / "imagesTr" / "x_0000.nrrd")
    _touch(tmp_path / "imagesTr" / "y_0000.nii.gz")  # wrong ending: not a case
    _json(tmp_path / "dataset.json", {
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "file_ending": ".nrrd",
    })
    m = load_manifest(tmp_path / "dataset.json")
    assert [c.name for c in m.training] == ["x"] and m.is_ct


def test_csv_with_channels_metadata_split_and_sidecar(tmp_path: Path) -> None:
    (tmp_path / "cases.csv").write_text(
        "image2,image,label,site,split\n"
        "a_t2.nii.gz,a_t1.nii.gz,a_seg.nii.gz,siteA,train\n"
        "b_t2.nii.gz,b_t1.nii.gz,b_seg.nii.gz,siteB,\n"
        "c_t2.nii.gz,c_t1.nii.gz,,siteA,test\n"
    )
    _json(tmp_path / "cases.labels.json", {"labels": {"1": "liver", "2": "spleen"}})
    m = load_manifest(tmp_path / "cases.csv")
    root = tmp_path.resolve()
    assert m.format == "csv" and m.name == "cases"
    assert m.labels == {"background": 0, "liver": 1, "spleen": 2}
    assert m.channel_names == ["image", "image2"]
    assert [c.name for c in m.training] == ["a_t1", "b_t1"]  # named after the first channel
    a = m.training[0]
    assert a.images == [root / "a_t1.nii.gz", root / "a_t2.nii.gz"]  # 'image' first
    assert a.label == root / "a_seg.nii.gz" and a.metadata == {"site": "siteA"}
    assert [c.name for c in m.test] == ["c_t1"] and m.test[0].label is None
    assert m.test[0].metadata == {"site": "siteA"}


def test_csv_case_column_name_to_id_sidecar_and_channel_names(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("case,image,label\np1,x/img.nii.gz,x/seg.nii.gz\n")
    _json(tmp_path / "m.labels.json", {"labels": {"tumour": 1}, "channel_names": ["FLAIR"]})
    m = load_manifest(tmp_path / "m.csv")
    assert m.training[0].name == "p1" and m.channel_names == ["FLAIR"]
    assert m.labels == {"background": 0, "tumour": 1}


def test_csv_without_sidecar_has_background_only(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image\na.nii.gz\n")
    m = load_manifest(tmp_path / "m.csv")
    assert m.labels == {"background": 0} and m.training[0].label is None


def test_region_based_labels_are_rejected(tmp_path: Path) -> None:
    path = _json(tmp_path / "dataset.json", {
        "channel_names": {"0": "FLAIR"},
        "labels": {"background": 0, "whole_tumor": [1, 2, 3], "enhancing": 3},
        "regions_class_order": [1, 2, 3], "file_ending": ".nii.gz",
    })
    with pytest.raises(ManifestError, match=r"whole_tumor.*region"):
        load_manifest(path)


def test_decathlon_without_training_list(tmp_path: Path) -> None:
    path = _json(tmp_path / "dataset.json", {"labels": {"0": "background", "1": "x"}, "test": []})
    with pytest.raises(ManifestError, match=r"dataset\.json.*'training' list"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"training": []}, "'labels' must be a non-empty mapping"),
        ({"labels": {"0": "bg", "1": "a"}, "training": "x"}, "'training' list"),
        ({"labels": {"1": "a"}, "training": [{"label": "a.nii.gz"}]}, "needs an 'image' path"),
        ({"labels": {"a": -1}, "training": []}, "must be >= 0"),
        ({"labels": {"a": 1, "b": 1}, "training": []}, "must be unique"),
        ({"labels": {"1": "a"}, "modality": ["CT"], "training": []}, "'modality' must map"),
        ({"labels": {"a": 1}, "channel_names": {"T1": "0"}}, "'channel_names' must map"),
    ],
)
def test_invalid_json_manifests(tmp_path: Path, raw: dict, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        load_manifest(_json(tmp_path / "dataset.json", raw))


def test_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ManifestError, match="expected a JSON object"):
        load_manifest(tmp_path / "list.json")
    (tmp_path / "noimg.csv").write_text("path,label\na,b\n")
    with pytest.raises(ManifestError, match=r"needs an 'image' column; found columns \['path', 'label'\]"):
        load_manifest(tmp_path / "noimg.csv")
    (tmp_path / "empty_row.csv").write_text("image,label\n,b.nii.gz\n")
    with pytest.raises(ManifestError, match="line 2 has no image path"):
        load_manifest(tmp_path / "empty_row.csv")
    (tmp_path / "s.csv").write_text("image\na.nii.gz\n")
    (tmp_path / "s.labels.json").write_text("{oops")
    with pytest.raises(ManifestError, match=r"s\.labels\.json: not valid JSON"):
        load_manifest(tmp_path / "s.csv")
