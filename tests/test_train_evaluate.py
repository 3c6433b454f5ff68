"""Stage two on a real (tiny) store: training from the cache, prediction, evaluation outputs, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cache_spec.store import open_store
from heads import build_head
from pipeline.cli import app
from pipeline.config import ParamsError, evaluate_config, extract_config, train_config
from stages.data.ava import read_label_map, read_predicted_boxes
from stages.data.layout import DataLayout
from stages.evaluate import class_prior, evaluate
from stages.extract import extract
from stages.models.trained_head import load_head, multi_hot, predict
from stages.train import train
from tests.conftest import write_params


@pytest.fixture()
def stores(tiny_params):
    for split in ("train", "val"):
        extract(extract_config(tiny_params, split))
    return tiny_params


def test_multi_hot_follows_label_map_order_and_ignores_unknown_ids():
    targets = multi_hot(pd.Series([[12, 80], [], [99, 3]]), [3, 12, 80])
    np.testing.assert_array_equal(targets, [[0, 1, 1], [0, 0, 0], [1, 0, 0]])


def test_class_prior_counts_actors_not_rows():
    ann = pd.DataFrame(
        {"video_id": ["a"] * 4, "timestamp": [1, 1, 1, 2], "person_id": [0, 0, 1, 0], "action_id": [12, 80, 12, 14]}
    )
    # three actors (a@1 p0, a@1 p1, a@2 p0): class 12 on two of them, 80 and 14 on one each, 3 on none
    np.testing.assert_allclose(class_prior(ann, [3, 12, 14, 80]), [0, 2 / 3, 1 / 3, 1 / 3])


def test_train_writes_checkpoint_curve_and_metrics_and_loss_falls(stores):
    config = train_config(stores)
    result = train(config)
    curve = pd.read_csv(config.out_dir / "curve.tsv", sep="\t")
    assert list(curve["epoch"]) == [1, 2, 3] and curve["loss"].iloc[-1] < curve["loss"].iloc[0]
    metrics = json.loads((config.out_dir / "metrics.json").read_text())
    assert metrics["train_boxes"] == (open_store(config.store).boxes["source"] == "gt").sum()
    model, loss, class_ids = load_head(result.checkpoint)
    assert class_ids == read_label_map(config.label_map).ids
    rows, scores = predict(model, loss, open_store(config.store), "det")
    assert scores.shape == (len(rows), len(class_ids)) and ((scores > 0) & (scores < 1)).all()


def test_head_sees_only_the_cache_views_it_declares():
    head = build_head("linear", {"C": 6}, 3, dropout=0.0).eval()
    views = {"roi_pooled": torch.randn(4, 6, dtype=torch.float16)}
    out = head(views, torch.tensor([0, 0, 1, 1]))
    assert out.shape == (4, 3)
    with pytest.raises(KeyError, match="unknown head"):
        build_head("nope", {"C": 6}, 3)


def test_evaluate_writes_metrics_curves_and_an_ava_detection_csv(stores):
    train(train_config(stores))
    config = evaluate_config(stores)
    metrics = evaluate(config)
    on_disk = json.loads((config.out_dir / "metrics.json").read_text())
    assert on_disk == metrics
    assert 0 <= metrics["frame_map"] <= 1 and 0 <= metrics["prior_baseline"]["frame_map"] <= 1
    assert {"frame_map_pose", "frame_map_object", "frame_map_person"} <= set(metrics)
    detections = read_predicted_boxes(config.out_dir / "detections.csv")
    n_classes = len(read_label_map(config.data.label_map_path()).ids)
    assert len(detections) == metrics["boxes"] * n_classes
    per_class = pd.read_csv(config.out_dir / "per_class_ap.csv")
    assert set(per_class["category"]) == {"pose", "object", "person"}
    curves = pd.read_csv(config.out_dir / "pr_curves.csv")
    assert {"class", "precision", "recall"} <= set(curves.columns)


def test_cli_help_lists_the_stages():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("synth", "finetune", "extract", "train-head", "evaluate", "verify"):
        assert command in result.output


def test_cli_runs_extract_and_verify(tiny_params, tmp_path):
    params = write_params(tiny_params, tmp_path / "params.yaml")
    runner = CliRunner()
    assert runner.invoke(app, ["extract", "--split", "val", "--params", str(params)]).exit_code == 0
    result = runner.invoke(app, ["verify", "--split", "val", "--params", str(params)])
    assert result.exit_code == 0 and "shards complete" in result.output


def test_unknown_param_is_named(tiny_params):
    tiny_params["train"]["epocs"] = 3
    with pytest.raises(ParamsError, match=r"params train: unknown key\(s\) \['epocs'\]"):
        train_config(tiny_params)


def test_train_refuses_a_store_without_the_heads_views_and_names_the_fix(stores, monkeypatch):
    from heads import HEADS, LinearHead

    class NeedsSpatial(LinearHead):
        views = ("roi_spatial",)

    monkeypatch.setitem(HEADS, "needs_spatial", NeedsSpatial)
    config = replace(train_config(stores), head="needs_spatial")
    with pytest.raises(ValueError, match=r"lacks.*pipeline extract --split <split> --heads needs_spatial"):
        train(config)


def test_pose_softmax_training_scores_poses_as_a_distribution(stores):
    config = replace(train_config(stores), loss="pose_softmax")
    model, loss, class_ids = load_head(train(config).checkpoint)
    pose = [i for i, c in enumerate(class_ids) if read_label_map(config.label_map).categories[c] == "pose"]
    _, scores = predict(model, loss, open_store(config.store), "gt")
    np.testing.assert_allclose(scores[:, pose].sum(axis=1), 1.0, rtol=1e-5)


def test_ablate_writes_a_table_with_mean_and_spread_over_seeds(stores):
    from pipeline.config import ablate_config
    from stages.ablate import ablate

    config = ablate_config(stores, heads=["linear"], seeds=[0, 1])
    table = ablate(config)
    assert list(table["head"]) == ["linear", "prior baseline"]
    linear = table.iloc[0]
    assert linear["seeds"] == 2 and 0 <= linear["frame_map_mean"] <= 1 and linear["frame_map_std"] >= 0
    runs = pd.read_csv(config.out_dir / "runs.csv")
    assert sorted(runs.loc[runs["head"] == "linear", "seed"]) == [0, 1]
    assert linear["frame_map_mean"] == pytest.approx(runs.loc[runs["head"] == "linear", "frame_map"].mean(), abs=1e-6)
    text = (config.out_dir / "table.md").read_text()
    assert "| linear |" in text and "± " in text and "| prior baseline |" in text


def test_extract_heads_option_stores_the_union_of_their_views(tiny_params):
    from pipeline.config import views_for

    assert views_for(["linear"], ["context_map"]) == ("roi_pooled", "context_map")
    config = extract_config(tiny_params, "train", heads=["linear"])
    assert set(config.views) == {"roi_pooled", "context_map"}
    with pytest.raises(ParamsError, match="unknown head"):
        extract_config(tiny_params, "train", heads=["nope"])


def test_cli_evaluate_detections_scores_the_simulated_detector(tiny_params, tmp_path):
    params = write_params(tiny_params, tmp_path / "params.yaml")
    result = CliRunner().invoke(app, ["evaluate-detections", "--split", "val", "--params", str(params)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output[result.output.index("{") :])
    # jittered ground truth with ~5% misses: a good but imperfect detector
    assert 0.5 < metrics["person_ap"] < 1.0 and metrics["num_gt"] > 0


def test_detect_needs_a_checkpoint(tiny_params):
    from pipeline.config import detect_config

    with pytest.raises(ParamsError, match="detect.checkpoint is null"):
        detect_config(tiny_params, "val")


# ---- consistency checks: a head scores only features like those it was trained on (issue 9) ------------------


def _extract_val_variant(params: dict, tmp_path, name: str, section: str, **changes) -> object:
    """Extract the val split into its own store after changing ``params[section]``; returns the store path."""
    import copy

    variant = copy.deepcopy(params)
    variant[section].update(changes)
    config = replace(extract_config(variant, "val"), out=tmp_path / f"{name}.zarr")
    return extract(config).store


def test_evaluate_refuses_a_store_of_another_backbone_naming_weights_and_the_fix(stores, tmp_path):
    from cache_spec.errors import InputError

    train(train_config(stores))
    config = evaluate_config(stores)
    other = _extract_val_variant(stores, tmp_path, "val_seed1", "backbone", seed=1)
    with pytest.raises(InputError) as caught:
        evaluate(replace(config, store=other))
    message = str(caught.value)
    assert 'weights "random-init(seed=0)" -> "random-init(seed=1)"' in message
    assert "train store -> val store" in message
    assert "pipeline extract --split train && pipeline train-head" in message and "dvc repro" in message
    assert "sampling" not in message and "split" not in message.split("(")[1].split(";")[0].replace("store", "")
    assert not (config.out_dir / "metrics.json").exists()  # refused before anything was written
    # the unchanged store still evaluates
    assert 0 <= evaluate(config)["frame_map"] <= 1


def test_evaluate_refuses_other_clip_sampling_naming_the_sampling_key(stores, tmp_path):
    from stages.models.trained_head import HeadStoreMismatchError

    train(train_config(stores))
    other = _extract_val_variant(stores, tmp_path, "val_stride1", "clip", frame_stride=1)
    with pytest.raises(HeadStoreMismatchError, match=r"sampling\.frame_stride 2 -> 1\)") as caught:
        evaluate(replace(evaluate_config(stores), store=other))
    assert "weights" not in str(caught.value)  # only the differing field is named


def test_evaluate_accepts_a_test_time_flip_variant_of_the_same_backbone(stores, tmp_path):
    train(train_config(stores))
    flipped = _extract_val_variant(stores, tmp_path, "val_flip", "extract", flip=True)
    assert open_store(flipped).fingerprint["flip"] is True
    metrics = evaluate(replace(evaluate_config(stores), store=flipped))
    assert 0 <= metrics["frame_map"] <= 1


def test_cli_evaluate_prints_the_mixed_backbone_refusal_as_one_line(stores, tmp_path, capsys):
    import shutil

    from pipeline.cli import run
    from pipeline.config import store_path

    train(train_config(stores))
    shutil.rmtree(store_path(stores, "val"))  # the user's case: re-extract only val with other weights
    stores["backbone"]["seed"] = 1
    extract(extract_config(stores, "val"))
    params = write_params(stores, tmp_path / "params.yaml")
    capsys.readouterr()  # drop the progress bars so far
    with pytest.raises(SystemExit) as exit_info:
        run(["evaluate", "--params", str(params)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: head ") and "weights" in err, err


def test_old_head_without_a_fingerprint_still_evaluates_with_a_warning(stores, caplog):
    checkpoint = train(train_config(stores)).checkpoint
    state = torch.load(checkpoint, weights_only=True)
    del state["store_fingerprint"]
    torch.save(state, checkpoint)
    with caplog.at_level("WARNING", logger="stages.models.trained_head"):
        metrics = evaluate(evaluate_config(stores))
    assert 0 <= metrics["frame_map"] <= 1
    assert any("records no training-store fingerprint" in r.getMessage() for r in caplog.records)


def test_feature_differences_ignore_per_store_fields_and_cap_the_list():
    from stages.models.trained_head import feature_differences

    base = {"split": "train", "manifest": "a", "scale": 1.0, "flip": False, "views": ["x"], "weights": "w"}
    variant = {**base, "split": "val", "manifest": "b", "scale": 1.5, "flip": True, "views": ["x", "y"]}
    assert feature_differences(base, variant) == []
    nested = {"sampling": {str(i): i for i in range(8)}}
    diffs = feature_differences(nested, {"sampling": {str(i): i + 1 for i in range(8)}})
    assert diffs[0] == "sampling.0 0 -> 1" and diffs[-1] == "and 3 more" and len(diffs) == 6
    assert feature_differences({"weights": "w"}, {}) == []  # a field one side predates is not compared


def test_evaluate_refuses_a_store_without_the_heads_views(stores, monkeypatch):
    from heads import HEADS, LinearHead
    from stages.models.trained_head import HeadStoreMismatchError

    train(train_config(stores))

    class NeedsSpatial(LinearHead):
        views = ("roi_spatial",)

    monkeypatch.setitem(HEADS, "linear", NeedsSpatial)
    with pytest.raises(HeadStoreMismatchError, match=r"lacks.*pipeline extract --split val --heads linear"):
        evaluate(evaluate_config(stores))


# ---- labels outside the label map: skipped alike in training and evaluation, with one warning ----------------


def _warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and text in r.getMessage()]


def test_multi_hot_warns_once_with_count_and_ids(caplog):
    with caplog.at_level("WARNING"):
        targets = multi_hot(pd.Series([[12, 80], [99], [99, 3, 81]]), [3, 12, 80], "demo", "map.pbtxt")
    np.testing.assert_array_equal(targets, [[0, 1, 1], [0, 0, 0], [1, 0, 0]])
    (message,) = _warnings(caplog, "skipping")
    assert message.startswith("demo: skipping 3 of 6 labels") and "map.pbtxt" in message
    assert "ids 81 (1x), 99 (2x)" in message
    caplog.clear()
    multi_hot(pd.Series([[3], []]), [3, 12])
    assert not _warnings(caplog, "skipping")


def test_train_and_evaluate_skip_ids_outside_the_label_map_alike(stores, tmp_path, caplog):
    from stages.data.ava import LabelMap, read_annotations, write_annotations, write_label_map

    data = evaluate_config(stores).data.root
    full = read_label_map(data / "label_map.pbtxt")
    gt = read_annotations(data / "annotations" / "train.csv")
    dropped = int(gt["action_id"].value_counts().index[0])  # the most frequent train class
    # training with a label map that lacks one of the store's classes: skipped, counted, named
    reduced = tmp_path / "reduced_label_map.pbtxt"
    keep = [c for c in full.ids if c != dropped]
    write_label_map(LabelMap({c: full.names[c] for c in keep}, {c: full.categories[c] for c in keep}), reduced)
    store = open_store(train_config(stores).store)
    gt_labels = store.boxes.loc[store.boxes["source"] == "gt", "labels"]
    expected = sum(dropped in ids for ids in gt_labels)
    with caplog.at_level("WARNING"):
        result = train(replace(train_config(stores), label_map=reduced))
    (message,) = _warnings(caplog, "skipping")
    assert f"skipping {expected} of " in message and f"ids {dropped} ({expected}x)" in message
    assert str(reduced) in message and "(gt boxes)" in message
    assert load_head(result.checkpoint)[2] == keep
    # evaluation over ground truth with ids outside the label map: skipped with one warning, no error
    caplog.clear()
    train(train_config(stores))
    data_copy = tmp_path / "data"
    (data_copy / "annotations").mkdir(parents=True)
    for name in ("label_map.pbtxt", "excluded_timestamps_val.csv"):
        if (data / name).exists():
            (data_copy / name).write_bytes((data / name).read_bytes())
    (data_copy / "annotations" / "train.csv").write_bytes((data / "annotations" / "train.csv").read_bytes())
    val = read_annotations(data / "annotations" / "val.csv")
    extra = val.iloc[:3].assign(action_id=[99, 81, 98])  # distinct ids: no row duplicates another
    write_annotations(pd.concat([val, extra], ignore_index=True), data_copy / "annotations" / "val.csv")
    with caplog.at_level("WARNING"):
        metrics = evaluate(replace(evaluate_config(stores), data=DataLayout(data_copy)))
    assert 0 <= metrics["frame_map"] <= 1
    (message,) = _warnings(caplog, "val.csv: skipping")
    assert f"skipping 3 of {len(val) + 3} labels" in message and "ids 81 (1x), 98 (1x), 99 (1x)" in message
    assert not _warnings(caplog, "train.csv: skipping")  # the train file has none


def test_ground_truth_keyframes_without_actors_are_not_unknown_labels(tmp_path, caplog):
    from stages.data.ava import LabelMap
    from stages.evaluate import ground_truth

    path = tmp_path / "gt.csv"
    path.write_text("v,0902,0.1,0.1,0.5,0.5,12,0\nv,0903\nv,0904,0.1,0.1,0.5,0.5,99,0\n")
    label_map = LabelMap(names={12: "stand"}, categories={12: "pose"})
    with caplog.at_level("WARNING"):
        gt, known = ground_truth(path, label_map, tmp_path / "label_map.pbtxt")
    assert len(gt) == 3 and known.tolist() == [True, False, False]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "skipping 1 of 2 labels" in warnings[0] and "ids 99 (1x)" in warnings[0]
