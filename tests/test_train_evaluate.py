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
    n_classes = len(read_label_map(config.data_dir / "label_map.pbtxt").ids)
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
