"""The clip and box tables of a store, built from a data set's own files (AVA CSVs or an ACT/MOC pickle)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cache_spec.errors import InputError
from stages.data.act import read_dense_dataset
from stages.data.ava import read_annotations, read_excluded_timestamps, read_label_map, read_predicted_boxes
from stages.data.dense import dense_annotations, dense_paths, label_ids, split_videos
from stages.data.layout import DataLayout
from stages.data.video import ClipSampling, VideoDecodeError, video_info
from stages.metrics.boxes import iou_matrix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestSpec:
    """Which rows a store has: the data set's files of one split and which of their boxes to keep."""

    layout: DataLayout
    split: str
    dataset: str = "ava"  # ava: keyframes are AVA seconds | dense: frames of an ACT/MOC pickle
    keyframe_stride: int = 1  # dense only: every k-th frame is a keyframe
    box_sources: tuple[str, ...] = ("gt", "det")
    predicted_boxes: Path | None = None  # detector CSV (default: the layout's predicted_boxes for the split)
    det_threshold: float = 0.5
    label_iou: float = 0.5  # a detection takes the labels of the GT box it overlaps at least this much


class MissingVideosError(InputError):
    """Videos the annotations name are missing or unreadable (their frame size, part of the rows, is unknown)."""


def build_manifest(
    config: ManifestSpec, sampling: ClipSampling, stride: int, flip: bool = False, allow_missing: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Clips (keyframes with at least one box) and their boxes, with box geometry on the padded canvas.

    ``sampling`` and ``stride`` place the boxes on the backbone's feature map; ``flip`` mirrors them. A video that
    cannot be opened is an error naming it (``allow_missing``: its clips stay in, sized 0, and fail to decode).
    """
    gt, det_path, excluded = _source_tables(config)
    parts = []
    if "gt" in config.box_sources:
        parts.append(_gt_boxes(gt))
    if "det" in config.box_sources:
        det = read_predicted_boxes(config.predicted_boxes or det_path)
        det = det[det["score"] >= config.det_threshold]
        if config.dataset == "dense":
            det = det[(det["timestamp"] - 1) % config.keyframe_stride == 0]
        det = det[~_keys(det).isin(_keys(excluded))]
        parts.append(_label_detections(det, gt, config.label_iou))
    boxes = pd.concat(parts, ignore_index=True)
    boxes = boxes.sort_values(["video_id", "timestamp", "source", "score"], ascending=[True, True, False, False])
    boxes = boxes.reset_index(drop=True)
    keys = boxes.groupby(["video_id", "timestamp"], sort=False).size()
    clips = keys.reset_index(name="box_count")
    clips["box_start"] = np.concatenate([[0], np.cumsum(clips["box_count"].to_numpy())[:-1]])
    clips["clip_index"] = np.arange(len(clips))
    boxes["clip_index"] = np.repeat(clips["clip_index"].to_numpy(), clips["box_count"].to_numpy())
    boxes["box_index"] = np.arange(len(boxes))
    missing = _add_canvas_geometry(clips, boxes, config.layout, sampling, stride, flip)
    if missing:
        counts = clips["video_id"].value_counts()
        listed = "; ".join(f"{err} ({counts[v]} clips)" for v, err in list(missing.items())[:3])
        what = f"{len(missing)} of {clips['video_id'].nunique()} videos cannot be read: {listed}"
        if not allow_missing:
            raise MissingVideosError(f"{what}. Add them (or fix dataset: in params.yaml), or pass --allow-missing")
        log.warning("%s; accepted (allow_missing): their clips will fail", what)
    return clips, boxes.drop(columns=["video_id", "timestamp"])


def _source_tables(config: ManifestSpec) -> tuple[pd.DataFrame, Path, pd.DataFrame]:
    """Ground truth in AVA annotation form, the default predicted-box CSV, and the excluded keyframes."""
    layout = config.layout
    label_map = read_label_map(layout.label_map_path())
    if config.dataset == "ava":
        gt = read_annotations(layout.annotations_path(config.split), label_map)
        excluded = _read_excluded(layout.excluded_timestamps_path(config.split))
        return gt[gt["action_id"].isin(label_map.ids)], layout.predicted_boxes_path(config.split), excluded
    if config.dataset == "dense":
        gt_path, det_path = dense_paths(layout.root, config.split)
        ds = read_dense_dataset(gt_path)
        videos = split_videos(ds, config.split)
        gt = dense_annotations(ds, videos, label_ids(ds, label_map), config.keyframe_stride)
        return gt, det_path, _no_keyframes()  # dense data sets exclude no frames
    raise ValueError(f"unknown dataset layout {config.dataset!r}; expected 'ava' or 'dense'")


def _read_excluded(path: Path) -> pd.DataFrame:
    return read_excluded_timestamps(path) if path.exists() else _no_keyframes()


def _no_keyframes() -> pd.DataFrame:
    return pd.DataFrame({"video_id": pd.Series(dtype=str), "timestamp": pd.Series(dtype=np.int64)})


def _keys(frame: pd.DataFrame) -> pd.Series:
    return frame["video_id"].astype(str) + "@" + frame["timestamp"].astype(str)


def _gt_boxes(gt: pd.DataFrame) -> pd.DataFrame:
    """One row per (keyframe, person) with all its action ids (AVA repeats the box once per action)."""
    grouped = gt.groupby(["video_id", "timestamp", "person_id"], sort=True)
    boxes = grouped[["x1", "y1", "x2", "y2"]].first().reset_index()
    boxes["labels"] = grouped["action_id"].agg(lambda s: sorted(set(int(a) for a in s))).to_numpy()
    boxes["source"] = "gt"
    boxes["score"] = 1.0
    return boxes


def _label_detections(det: pd.DataFrame, gt: pd.DataFrame, min_iou: float) -> pd.DataFrame:
    """Give each detection the labels of its best-overlapping GT box in the same keyframe (IoU >= min_iou)."""
    gt_boxes = _gt_boxes(gt)
    out = det[["video_id", "timestamp", "x1", "y1", "x2", "y2", "score"]].copy().reset_index(drop=True)
    out["source"] = "det"
    person = np.full(len(out), -1, np.int64)
    labels: list[list[int]] = [[] for _ in range(len(out))]
    gt_rows = gt_boxes.groupby(["video_id", "timestamp"]).indices
    coords = ["x1", "y1", "x2", "y2"]
    det_xy, gt_xy = out[coords].to_numpy(np.float64), gt_boxes[coords].to_numpy(np.float64)
    gt_labels, gt_person = gt_boxes["labels"].to_numpy(), gt_boxes["person_id"].to_numpy()
    for key, rows in out.groupby(["video_id", "timestamp"]).indices.items():
        candidates = gt_rows.get(key)
        if candidates is None:
            continue
        iou = iou_matrix(det_xy[rows], gt_xy[candidates])
        best, best_iou = iou.argmax(axis=1), iou.max(axis=1)
        for row, j in zip(rows[best_iou >= min_iou], candidates[best[best_iou >= min_iou]], strict=True):
            labels[row] = list(gt_labels[j])
            person[row] = gt_person[j]
    out["person_id"], out["labels"] = person, labels
    return out


def _add_canvas_geometry(
    clips: pd.DataFrame, boxes: pd.DataFrame, layout: DataLayout, sampling: ClipSampling, stride: int, flip: bool
) -> dict[str, str]:
    """Frame size per clip, box pixels on the padded canvas (mirrored with ``flip``), the map's valid extent.

    Returns the videos that cannot be read (video id -> error); they get size 0.
    """
    sizes = {}
    missing: dict[str, str] = {}
    for video in clips["video_id"].unique():
        try:
            _, _, h, w = video_info(layout.video(str(video)))
        except VideoDecodeError as err:
            missing[str(video)] = str(err)
            h, w = 0, 0
        sizes[video] = (h, w)
    hw = np.array([sizes[v] for v in clips["video_id"]], dtype=np.int64).reshape(-1, 2)
    clips["frame_h"], clips["frame_w"] = hw[:, 0], hw[:, 1]
    scale = np.array([_fit_scale(h, w, sampling) for h, w in hw])
    valid_h = np.round(hw[:, 0] * scale).astype(np.int64)
    valid_w = np.round(hw[:, 1] * scale).astype(np.int64)
    clips["valid_h"] = -(-valid_h // stride)
    clips["valid_w"] = -(-valid_w // stride)
    per_box = boxes["clip_index"].to_numpy()
    x1, x2 = boxes["x1"].to_numpy(), boxes["x2"].to_numpy()
    if flip:  # the frame is mirrored, so the box is too; the manifest keeps the original coordinates
        x1, x2 = 1.0 - x2, 1.0 - x1
    boxes["fx1"] = x1 * valid_w[per_box] / stride
    boxes["fx2"] = x2 * valid_w[per_box] / stride
    boxes["fy1"] = boxes["y1"].to_numpy() * valid_h[per_box] / stride
    boxes["fy2"] = boxes["y2"].to_numpy() * valid_h[per_box] / stride
    return missing


def _fit_scale(height: int, width: int, sampling: ClipSampling) -> float:
    """The resize factor ``preprocess_clip`` applies (0 for an unreadable video)."""
    if not height or not width:
        return 0.0
    canvas_h, canvas_w = sampling.canvas
    return min(sampling.short_side / min(height, width), canvas_h / height, canvas_w / width)
