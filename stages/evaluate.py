"""Scoring a trained head on a split: AVA detection CSV, frame-mAP (with a prior-only baseline), PR curves."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from cache_spec.store import Store, open_store
from stages.data.act import read_dense_dataset
from stages.data.ava import (
    LabelMap,
    read_annotations,
    read_excluded_timestamps,
    read_label_map,
    write_detections,
)
from stages.data.dense import dense_paths, label_ids, per_frame_detections
from stages.data.layout import DataLayout
from stages.metrics import dense as dense_eval
from stages.metrics.ava import FrameMapResult, frame_map
from stages.metrics.tubes import LinkParams, link_tubes, tubes_to_frame
from stages.models.trained_head import atomic_outputs, open_head, predict, resolve_device, skip_unknown_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    data: DataLayout
    store: Path  # the evaluated split's store
    checkpoint: Path  # head.pt from train
    out_dir: Path
    split: str = "val"
    train_split: str = "train"  # where the prior baseline's class frequencies come from
    box_source: Literal["gt", "det", "all"] = "det"
    device: str = "auto"
    dataset: Literal["ava", "dense"] = "ava"  # ava: frame-mAP@0.5 on keyframes | dense: frame and video mAP
    protocol: Literal["multisports", "act"] = "multisports"  # dense: act for UCF101-24, JHMDB
    link: LinkParams = field(default_factory=LinkParams)  # dense: the tube linker's constants


def detections_frame(store: Store, box_rows: np.ndarray, scores: np.ndarray, class_ids: Sequence[int]) -> pd.DataFrame:
    """Long-format AVA detections: one row per (box, class) with that class's score."""
    boxes = store.boxes.iloc[box_rows]
    clips = store.clips.iloc[boxes["clip_index"].to_numpy()]
    n, k = scores.shape
    return pd.DataFrame(
        {
            "video_id": np.repeat(clips["video_id"].to_numpy(), k),
            "timestamp": np.repeat(clips["timestamp"].to_numpy(), k),
            **{c: np.repeat(boxes[c].to_numpy(np.float64), k) for c in ("x1", "y1", "x2", "y2")},
            "action_id": np.tile(np.asarray(class_ids), n),
            "score": scores.reshape(-1).astype(np.float64),
        }
    )


def ground_truth(path: Path, label_map: LabelMap, label_map_path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Every ground-truth row and the mask of those whose id is in the label map (the rest: one warning).

    All rows are returned because the official evaluator scores a keyframe whose rows are all outside the
    label map (its detections become false positives); :func:`frame_map` reads only the label map's classes.
    """
    gt = read_annotations(path)
    action = gt["action_id"]
    labelled = action.notna().to_numpy()  # rows of only video_id,timestamp mark keyframes without actors
    keep = np.zeros(len(gt), dtype=bool)
    keep[labelled] = skip_unknown_labels(
        action[labelled].to_numpy(np.int64), label_map.ids, str(path), str(label_map_path)
    )
    return gt, keep


def class_prior(annotations: pd.DataFrame, class_ids: Sequence[int]) -> np.ndarray:
    """Fraction of train actors (keyframe, person) carrying each class: the prior-only baseline's scores."""
    actors = annotations.groupby(["video_id", "timestamp", "person_id"]).ngroups
    counts = annotations.drop_duplicates(["video_id", "timestamp", "person_id", "action_id"])[
        "action_id"
    ].value_counts()
    return np.array([counts.get(c, 0) / max(actors, 1) for c in class_ids], np.float32)


def summarise(result: FrameMapResult, label_map: LabelMap) -> dict[str, float | None]:
    """Flat metrics for ``dvc metrics``: overall and per-category mAP (nan becomes null)."""
    out: dict[str, float | None] = {"frame_map": _finite(result.mean_ap)}
    for category, value in result.per_category_map.items():
        out[f"frame_map_{category}"] = _finite(value)
    return out


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def evaluate(config: EvaluateConfig) -> dict:
    """Run the head over the split's boxes, score it by the data set's protocol, write metrics and tables."""
    if config.dataset == "dense":
        return evaluate_dense(config)
    if config.dataset != "ava":
        raise ValueError(f"unknown dataset layout {config.dataset!r}; expected 'ava' or 'dense'")
    data = config.data
    label_map_path = data.label_map_path()
    label_map = read_label_map(label_map_path)
    store = open_store(config.store)
    device = resolve_device(config.device)
    model, loss, class_ids, head_run = open_head(config.checkpoint, device, store=store, split=config.split)
    skip_unknown_labels(class_ids, label_map.ids, f"head {config.checkpoint} classes", str(label_map_path))
    rows, scores = predict(model, loss, store, config.box_source, device=device)
    gt, _ = ground_truth(data.annotations_path(config.split), label_map, label_map_path)
    excluded_path = data.excluded_timestamps_path(config.split)
    excluded = read_excluded_timestamps(excluded_path) if excluded_path.exists() else None
    detections = detections_frame(store, rows, scores, class_ids)
    result = frame_map(gt, detections, label_map.ids, label_map.categories, excluded)
    train_gt, known = ground_truth(data.annotations_path(config.train_split), label_map, label_map_path)
    prior = class_prior(train_gt[known], class_ids)  # the actors training saw: extraction keeps known ids only
    prior_dets = detections_frame(store, rows, np.tile(prior, (len(rows), 1)), class_ids)
    prior_result = frame_map(gt, prior_dets, label_map.ids, label_map.categories, excluded)

    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {**summarise(result, label_map), "prior_baseline": summarise(prior_result, label_map)}
    metrics["boxes"] = int(len(rows))
    metrics["head_run_id"] = head_run  # the training run whose head.pt was scored (None: an older head)
    per_class = pd.DataFrame(
        {
            "class_id": list(result.per_class_ap),
            "name": [label_map.names[c] for c in result.per_class_ap],
            "category": [label_map.categories[c] for c in result.per_class_ap],
            "ap": list(result.per_class_ap.values()),
            "prior_ap": [prior_result.per_class_ap[c] for c in result.per_class_ap],
        }
    )
    curves = result.pr_curves.copy()
    curves["class"] = [label_map.names[c] for c in curves["class_id"]]
    # all to temporary files, then renamed together, metrics.json last: a kill leaves complete files only
    names = ("detections.csv", "per_class_ap.csv", "pr_curves.csv", "metrics.json")
    with atomic_outputs(*(out / name for name in names)) as (detections_tmp, per_class_tmp, curves_tmp, metrics_tmp):
        write_detections(detections, detections_tmp)
        per_class.to_csv(per_class_tmp, index=False, float_format="%.6f")
        curves.to_csv(curves_tmp, index=False, float_format="%.6f")
        metrics_tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("evaluated head of run %s: outputs in %s", head_run, out)
    log.info(
        "frame-mAP@0.5 %.4f (prior baseline %.4f) on %d %s boxes",
        result.mean_ap,
        prior_result.mean_ap,
        len(rows),
        config.box_source,
    )
    return metrics


def evaluate_dense(config: EvaluateConfig) -> dict:
    """Per-frame detections -> frame-mAP; MOC-linked tubes -> video-mAP (the data set's own protocol)."""
    label_map = read_label_map(config.data.label_map_path())
    gt_path, _ = dense_paths(config.data.root, config.split)
    dataset = read_dense_dataset(gt_path)
    ids = label_ids(dataset, label_map)
    store = open_store(config.store)
    device = resolve_device(config.device)
    model, loss, class_ids, head_run = open_head(config.checkpoint, device, store=store, split=config.split)
    rows, scores = predict(model, loss, store, config.box_source, device=device)
    boxes = store.boxes.iloc[rows]
    clips = store.clips.iloc[boxes["clip_index"].to_numpy()]
    scored = boxes[["x1", "y1", "x2", "y2"]].assign(
        video_id=clips["video_id"].to_numpy(), timestamp=clips["timestamp"].to_numpy()
    )
    detections = per_frame_detections(scored, scores, dataset, ids, class_ids)
    frame = dense_eval.frame_map(dataset, detections, config.protocol)
    tubes = link_tubes(detections, config.link, nframes=dataset.nframes)
    video = dense_eval.video_map(dataset, tubes, config.protocol)
    metrics: dict = {
        "protocol": config.protocol,
        "frame_map": _finite(frame.overall),
        **{f"video_map@{t:g}": _finite(v) for t, v in video.per_threshold.items() if t in (0.2, 0.5)},
        **{f"video_map_{r}": _finite(v) for r, v in video.ranges.items()},
        "tubes": len(tubes),
        "boxes": int(len(rows)),
        "head_run_id": head_run,  # the training run whose head.pt was scored (None: an older head)
    }
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    per_class = pd.DataFrame(
        {
            "class": list(dataset.labels),
            "frame_ap": [frame.per_class[0.5].get(name) for name in dataset.labels],
            "video_ap@0.5": [video.per_class.get(0.5, {}).get(name) for name in dataset.labels],
        }
    )
    names = ("per_class_ap.csv", "tubes.parquet", "metrics.json")
    with atomic_outputs(*(out / name for name in names)) as (per_class_tmp, tubes_tmp, metrics_tmp):
        per_class.to_csv(per_class_tmp, index=False, float_format="%.6f")
        tubes_to_frame(tubes).to_parquet(tubes_tmp, index=False)
        metrics_tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("dense %s: frame-mAP %.4f, video-mAP@0.5 %s", config.protocol, frame.overall, metrics.get("video_map@0.5"))
    return metrics
