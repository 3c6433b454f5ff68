"""Person detection stage and person AP/AR.

A random-weight detector gives arbitrary boxes, so the test checkpoint is made deterministic where it matters: the
box predictor's class weights are zero with a large person bias (every proposal is a person at score ~0.9975) and
its box deltas are zero (boxes are the RPN's proposals). The post-processing is also tested on hand-made outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn, fasterrcnn_resnet50_fpn_v2
from torchvision.ops import box_iou

from stages.data.ava import read_annotations, read_predicted_boxes
from stages.data.layout import DataLayout
from stages.data.synth import SynthConfig, generate
from stages.detect import DetectConfig, _prepare_parts, detect
from stages.metrics.detection import evaluate_detections
from stages.models.checkpoints import CheckpointError, tensor_state_dict
from stages.models.detector import build_detector, load_detector_checkpoint, person_detections

PERSON_SCORE = float(torch.sigmoid(torch.tensor(6.0)))  # softmax over (background 0, person 6)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 3-second validation videos (keyframes at 1 s and 2 s)."""
    out = tmp_path_factory.mktemp("detect_synth")
    generate(SynthConfig(seed=5, num_videos_train=0, num_videos_val=2, duration_s=3), out)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-class v2 detector that calls every proposal a person, saved as {"model": state_dict}."""
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=2)
    predictor = model.roi_heads.box_predictor
    with torch.no_grad():
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.copy_(torch.tensor([0.0, 6.0]))
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.zero_()
    path = tmp_path_factory.mktemp("detect_ckpt") / "detector.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def _config(data: Path, checkpoint: Path, out: Path, **overrides) -> DetectConfig:
    settings = dict(
        data=DataLayout(data),
        split="val",
        out=out,
        checkpoint=checkpoint,
        num_classes=2,
        min_size=32,
        max_size=64,
        rpn_pre_nms_top_n=100,
        rpn_post_nms_top_n=20,
        batch_frames=2,
        device="cpu",
        threads=1,  # two threads on two shared cores spin-wait: 30x slower here
    )
    settings.update(overrides)
    return DetectConfig(**settings)


def _annotated_keyframes(data: Path) -> set[tuple[str, int]]:
    gt = read_annotations(data / "annotations" / "val.csv")
    return set(zip(gt["video_id"], gt["timestamp"].astype(int), strict=True))


class _CountingBar:
    """A tqdm stand-in that records how many keyframes were reported."""

    updates = 0

    def __init__(self, **_: object) -> None:
        pass

    def __enter__(self) -> _CountingBar:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def update(self, n: int) -> None:
        type(self).updates += n


# ----------------------------------------------------------------------------------------------- post-processing


def test_person_detections_filters_suppresses_and_normalises() -> None:
    # image 100 high, 200 wide
    boxes = torch.tensor(
        [
            [20.0, 10.0, 120.0, 90.0],  # person 0.9 -> kept: (0.1, 0.1, 0.6, 0.9)
            [22.0, 10.0, 122.0, 90.0],  # person 0.8, IoU ~0.96 with the first -> suppressed
            [20.0, 10.0, 120.0, 90.0],  # class 3 at 0.95 -> not a person
            [100.0, 10.0, 200.0, 90.0],  # person 0.5 (= threshold), IoU 0.11 with the first -> kept
            [150.0, 50.0, 260.0, 120.0],  # person 0.7, reaches past the image -> clipped to (0.75, 0.5, 1, 1)
            [10.0, 10.0, 10.05, 60.0],  # person 0.95 but 0.05 px wide -> collapses at 3 decimals, dropped
            [0.0, 0.0, 50.0, 50.0],  # person 0.3 -> below the threshold
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.95, 0.5, 0.7, 0.95, 0.3])
    labels = torch.tensor([1, 1, 3, 1, 1, 1, 1])
    out = person_detections(boxes, scores, labels, (100, 200), person_label=1, score_threshold=0.5, nms_iou=0.5)
    expected = pd.DataFrame(
        {
            "x1": [0.1, 0.75, 0.5],
            "y1": [0.1, 0.5, 0.1],
            "x2": [0.6, 1.0, 1.0],
            "y2": [0.9, 1.0, 0.9],
            "score": [0.9, 0.7, 0.5],
        }
    )
    pd.testing.assert_frame_equal(out, expected, atol=1e-6)


def test_person_detections_nms_is_per_call_and_threshold_configurable() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 8.0]])  # IoU 0.8
    scores, labels = torch.tensor([0.6, 0.4]), torch.tensor([2, 2])
    kept = person_detections(boxes, scores, labels, (10, 10), person_label=2, score_threshold=0.1, nms_iou=0.9)
    assert kept["score"].tolist() == pytest.approx([0.6, 0.4])
    suppressed = person_detections(boxes, scores, labels, (10, 10), person_label=2, score_threshold=0.1, nms_iou=0.7)
    assert suppressed["score"].tolist() == pytest.approx([0.6])
    none = person_detections(boxes, scores, labels, (10, 10), person_label=1)
    assert list(none.columns) == ["x1", "y1", "x2", "y2", "score"] and none.empty


# ----------------------------------------------------------------------------------------------- detect


def test_detect_writes_a_readable_csv_and_resumes(data: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "predicted_boxes_val.csv"
    config = _config(data, checkpoint, out, keep_parts=True)
    summary = detect(config, progress=_CountingBar)
    boxes = read_predicted_boxes(out)
    annotated = _annotated_keyframes(data)
    assert summary.videos == 2 and summary.videos_run == 2 and summary.videos_skipped == 0
    assert summary.keyframes_run == len(annotated) and summary.boxes == len(boxes) > 0
    assert summary.failed == {}
    assert set(zip(boxes["video_id"], boxes["timestamp"], strict=True)) <= annotated
    coords = boxes[["x1", "y1", "x2", "y2"]].to_numpy()
    assert (coords >= 0).all() and (coords <= 1).all()
    assert (boxes["score"] >= 0.5).all() and boxes["score"].to_numpy() == pytest.approx(PERSON_SCORE, abs=1e-5)
    assert boxes["action_id"].isna().all()
    for _, group in boxes.groupby(["video_id", "timestamp"]):  # NMS at 0.5 held (up to 3-decimal rounding)
        iou = box_iou(*(torch.tensor(group[["x1", "y1", "x2", "y2"]].to_numpy()),) * 2)
        assert (iou.fill_diagonal_(0) <= 0.5 + 0.02).all()
    assert pd.read_csv(summary.failures_csv).empty

    # resume: a finished video's part is reused untouched, a missing one is redone
    first = out.read_text()
    parts = sorted(config.parts_dir.glob("*.csv"))
    assert len(parts) == 2
    kept, removed = parts
    kept_mtime = kept.stat().st_mtime_ns
    removed.unlink()
    n_removed = sum(1 for v, _ in annotated if v == removed.stem)
    _CountingBar.updates = 0
    summary = detect(config, progress=_CountingBar)
    assert (summary.videos_skipped, summary.videos_run, summary.keyframes_run) == (1, 1, n_removed)
    assert _CountingBar.updates == n_removed
    assert kept.stat().st_mtime_ns == kept_mtime
    assert out.read_text() == first


def test_parts_with_another_fingerprint_are_discarded(tmp_path: Path) -> None:
    parts = tmp_path / "out.csv.parts"
    _prepare_parts(parts, {"score_threshold": 0.5, "checkpoint_sha256": "ab"})
    (parts / "v.csv").write_text("")
    _prepare_parts(parts, {"score_threshold": 0.5, "checkpoint_sha256": "ab"})
    assert (parts / "v.csv").exists()
    _prepare_parts(parts, {"score_threshold": 0.6, "checkpoint_sha256": "ab"})
    assert not (parts / "v.csv").exists()
    assert json.loads((parts / "fingerprint.json").read_text())["score_threshold"] == 0.6


def test_detect_lists_a_corrupt_video_and_finishes_the_rest(data: Path, checkpoint: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    videos = sorted((copy / "videos").glob("*.mp4"))
    broken, good = videos[0], videos[1]
    original = broken.read_bytes()
    broken.write_bytes(b"this is not an mp4 file")
    out = copy / "predicted_boxes_val.csv"

    summary = detect(_config(copy, checkpoint, out), progress=_CountingBar)
    assert list(summary.failed) == [broken.stem]
    failures = pd.read_csv(summary.failures_csv)
    assert failures["video_id"].tolist() == [broken.stem] and "cannot open" in failures["error"][0]
    boxes = read_predicted_boxes(out)
    assert set(boxes["video_id"]) == {good.stem}
    assert Path(f"{out}.parts").exists()  # kept for the retry

    broken.write_bytes(original)
    summary = detect(_config(copy, checkpoint, out), progress=_CountingBar)
    assert (summary.videos_skipped, summary.videos_run, summary.failed) == (1, 1, {})
    assert set(read_predicted_boxes(out)["video_id"]) == {broken.stem, good.stem}
    assert pd.read_csv(summary.failures_csv).empty
    assert not Path(f"{out}.parts").exists()  # removed after a complete run unless keep_parts


# ----------------------------------------------------------------------------------------------- checkpoints


def _refusal(model_state: dict, tmp_path: Path, **config) -> str:
    path = tmp_path / "other.pt"
    torch.save(model_state, path)
    model = build_detector(_config(Path("."), path, tmp_path / "x.csv", **config))
    with pytest.raises(CheckpointError) as err:
        load_detector_checkpoint(model, path)
    message = str(err.value)
    assert message.startswith(str(path)) and "fasterrcnn_resnet50_fpn_v2" in message
    assert len(message) < 2000 and "\n" not in message
    return message


def test_classifier_checkpoint_is_refused_readably(tmp_path: Path) -> None:
    message = _refusal(resnet18(weights=None).state_dict(), tmp_path)
    assert "missing keys" in message and "unexpected keys" in message and " more" in message
    assert "not a Faster R-CNN" in message


def test_mobilenet_detector_checkpoint_is_refused_readably(tmp_path: Path) -> None:
    other = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=2)
    message = _refusal({"state_dict": other.state_dict()}, tmp_path)
    assert "not a ResNet" in message and "mobilenet" in message


def test_class_count_mismatch_names_the_fix(data: Path, checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"shape mismatches: roi_heads\.box_predictor.*set num_classes=2"):
        detect(_config(data, checkpoint, tmp_path / "out.csv", num_classes=91))
    assert not (tmp_path / "out.csv").exists()


def test_state_dict_wrappers() -> None:
    t = torch.zeros(1)
    assert tensor_state_dict({"a": t}, Path("c")) == {"a": t}
    assert tensor_state_dict({"model": {"a": t}, "epoch": 3}, Path("c")) == {"a": t}
    assert tensor_state_dict({"state_dict": {"module.a": t}}, Path("c")) == {"a": t}
    with pytest.raises(CheckpointError, match="not tensors: epoch"):
        tensor_state_dict({"a": t, "epoch": 3}, Path("c"))


# ----------------------------------------------------------------------------------------------- person AP / AR


def _frame(rows: list[tuple], score: bool) -> pd.DataFrame:
    columns = ["video_id", "timestamp", "x1", "y1", "x2", "y2"] + (["score"] if score else [])
    return pd.DataFrame(rows, columns=columns)


A = (0.0, 0.0, 0.4, 0.4)
B = (0.5, 0.5, 0.9, 0.9)
C = (0.0, 0.5, 0.4, 0.9)
FAR = (0.6, 0.0, 0.7, 0.1)


def test_perfect_detections() -> None:
    gt = _frame([("v", 1, *A), ("v", 1, *B), ("w", 2, *A)], score=False)
    pred = _frame([("v", 1, *A, 0.9), ("v", 1, *B, 0.8), ("w", 2, *A, 0.7)], score=True)
    result = evaluate_detections(pred, gt)
    assert result["person_ap"] == pytest.approx(1.0) and result["person_ar"] == pytest.approx(1.0)
    assert (result["num_gt"], result["true_positives"], result["keyframes"]) == (3, 3, 2)


def test_false_positive_ranked_above_a_true_positive() -> None:
    gt = _frame([("v", 1, *A)], score=False)
    pred = _frame([("v", 1, *FAR, 0.9), ("v", 1, *A, 0.8)], score=True)
    # ranks: FP (P=0, R=0), TP (P=1/2, R=1) -> AP = 1 * 1/2
    assert evaluate_detections(pred, gt)["person_ap"] == pytest.approx(0.5)
    # two actors: TP 0.9, FP 0.8, TP 0.7 -> P = 1, 1/2, 2/3 at R = 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3
    gt2 = _frame([("v", 1, *A), ("v", 1, *B)], score=False)
    pred2 = _frame([("v", 1, *A, 0.9), ("v", 1, *FAR, 0.8), ("v", 1, *B, 0.7)], score=True)
    assert evaluate_detections(pred2, gt2)["person_ap"] == pytest.approx(5 / 6)


def test_duplicate_detection_is_a_false_positive() -> None:
    gt = _frame([("v", 1, *A), ("w", 1, *A)], score=False)
    nudged = (0.0, 0.0, 0.4, 0.38)  # IoU 0.95 with A
    pred = _frame([("v", 1, *A, 0.9), ("v", 1, *nudged, 0.8), ("w", 1, *A, 0.7)], score=True)
    # TP, duplicate FP, TP -> AP = 1/2 * 1 + 1/2 * 2/3; both actors found
    result = evaluate_detections(pred, gt)
    assert result["person_ap"] == pytest.approx(5 / 6) and result["person_ar"] == pytest.approx(1.0)
    assert (result["true_positives"], result["num_detections"]) == (2, 3)


def test_recall_counts_at_most_max_dets_per_keyframe() -> None:
    gt = _frame([("v", 1, *A), ("v", 1, *B), ("v", 1, *C), ("w", 1, *A)], score=False)
    pred = _frame(
        [("v", 1, *C, 0.3), ("v", 1, *A, 0.9), ("v", 1, *B, 0.8), ("w", 1, *A, 0.1)],
        score=True,
    )
    capped = evaluate_detections(pred, gt, max_dets=2)  # v keeps A and B; w keeps its only box
    assert capped["person_ar"] == pytest.approx(3 / 4) and capped["num_detections"] == 3
    assert capped["person_ap"] == pytest.approx(3 / 4)  # all three are TPs, recall stops at 3/4
    assert evaluate_detections(pred, gt, max_dets=100)["person_ar"] == pytest.approx(1.0)


def test_actor_boxes_repeated_per_action_count_once_and_iou_threshold_applies() -> None:
    gt = _frame([("v", 1, *A), ("v", 1, *A), ("v", 1, *A)], score=False)  # one actor, three actions
    shifted = (0.1, 0.0, 0.5, 0.4)  # IoU with A = 0.3 * 0.4 / (0.32 - 0.12) = 0.6
    pred = _frame([("v", 1, *shifted, 0.9)], score=True)
    assert evaluate_detections(pred, gt)["num_gt"] == 1
    assert evaluate_detections(pred, gt, iou=0.5)["person_ap"] == pytest.approx(1.0)
    assert evaluate_detections(pred, gt, iou=0.7)["person_ap"] == pytest.approx(0.0)


def test_unannotated_and_excluded_keyframes_are_ignored() -> None:
    gt = _frame([("v", 1, *A), ("v", 2, *B)], score=False)
    pred = _frame([("v", 1, *A, 0.5), ("v", 3, *FAR, 0.9), ("v", 2, *FAR, 0.8)], score=True)
    excluded = pd.DataFrame({"video_id": ["v"], "timestamp": [2]})
    result = evaluate_detections(pred, gt, excluded=excluded)
    assert result["person_ap"] == pytest.approx(1.0) and (result["num_gt"], result["keyframes"]) == (1, 1)
    assert evaluate_detections(pred, gt)["person_ap"] == pytest.approx(0.5 * 0.5)  # FP 0.8 first, then TP


def test_edge_cases() -> None:
    gt = _frame([("v", 1, *A)], score=False)
    empty_pred = _frame([], score=True)
    assert evaluate_detections(empty_pred, gt)["person_ap"] == 0.0
    assert evaluate_detections(empty_pred, gt)["person_ar"] == 0.0
    no_gt = evaluate_detections(_frame([("v", 1, *A, 0.9)], score=True), _frame([], score=False))
    assert np.isnan(no_gt["person_ap"]) and np.isnan(no_gt["person_ar"])
    with pytest.raises(ValueError, match="lacks columns"):
        evaluate_detections(gt, gt)


def test_a_video_id_never_becomes_a_path_outside_the_parts_folder(tmp_path: Path) -> None:
    from stages.data.layout import LayoutError
    from stages.detect import _part_path

    assert _part_path(tmp_path, "-5KQ66BBWC4") == tmp_path / "-5KQ66BBWC4.csv"
    for hostile in ("../../x", "/abs/x", "a/b"):
        with pytest.raises(LayoutError, match="not a plain name"):
            _part_path(tmp_path, hostile)


def test_a_keyframe_without_actors_makes_its_detections_false_positives() -> None:
    """AVA's `video_id,timestamp` rows: the keyframe is evaluated but has no actor, so a box there is an FP.

    Scores: the FP on the empty keyframe (0.9) ranks above the TP (0.8): precision 1/2 at recall 1 -> AP 0.5.
    """
    gt = pd.DataFrame(
        {
            "video_id": ["v", "v"],
            "timestamp": [902, 903],
            "x1": [A[0], np.nan],
            "y1": [A[1], np.nan],
            "x2": [A[2], np.nan],
            "y2": [A[3], np.nan],
        }
    )
    predicted = _frame([("v", 902, *A, 0.8), ("v", 903, *B, 0.9)], score=True)
    metrics = evaluate_detections(predicted, gt)
    assert metrics["person_ap"] == pytest.approx(0.5) and metrics["num_gt"] == 1
