"""The dense-annotation data sets (MultiSports, UCF101-24, JHMDB) in the pipeline's row space.

The cache has one row space for every data set: keyframes (here: frames, 1-based, in the ``timestamp``
column) and their boxes. This module turns an ACT/MOC ground-truth pickle into the AVA-shaped tables that
extraction builds its manifest from, and turns per-box class scores back into the per-frame detections the
dense evaluators and the tube linker read. A data set folder holds ``dense/gt.pkl`` and, for detections,
``dense/predicted_boxes_<split>.csv`` (AVA's predicted-box format with frame numbers as timestamps).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stages.data.act import DenseDataset, read_dense_dataset
from stages.data.ava import LabelMap

SUBSETS = {"train": "train", "val": "test", "test": "test"}


def dense_paths(data_dir: Path, split: str) -> tuple[Path, Path]:
    """The ground-truth pickle and the split's predicted-box CSV."""
    return Path(data_dir) / "dense" / "gt.pkl", Path(data_dir) / "dense" / f"predicted_boxes_{split}.csv"


def split_videos(dataset: DenseDataset, split: str, index: int = 0) -> tuple[str, ...]:
    """The videos of our split name (train / val / test) in the data set's 0-based split ``index``."""
    if split not in SUBSETS:
        raise ValueError(f"dense split must be one of {sorted(SUBSETS)}, got {split!r}")
    return dataset.videos(SUBSETS[split], index)


def label_ids(dataset: DenseDataset, label_map: LabelMap) -> list[int]:
    """Action id of each dense label index, matched by name against the data set's label map."""
    by_name = {name: i for i, name in label_map.names.items()}
    missing = [name for name in dataset.labels if name not in by_name]
    if missing:
        raise ValueError(f"{dataset.source}: label(s) {missing} are not in the label map ({len(by_name)} names)")
    return [by_name[name] for name in dataset.labels]


def dense_annotations(
    dataset: DenseDataset, videos: Sequence[str], ids: Sequence[int], keyframe_stride: int = 1
) -> pd.DataFrame:
    """Ground truth in AVA annotation form: one row per (frame, actor, action), boxes normalised.

    Tubes of the same actor share its box at a frame, so identical boxes of a frame are one actor (its
    ``person_id`` is the box's rank within the frame). Frames are kept where ``(frame - 1) % stride == 0``.
    """
    gt = dataset.gt_boxes(videos)
    gt = gt[(gt["frame"] - 1) % keyframe_stride == 0]
    hw = np.array([dataset.resolution[v] for v in gt["video"]], dtype=np.float64).reshape(-1, 2)
    out = pd.DataFrame(
        {
            "video_id": gt["video"].astype(str).to_numpy(),
            "timestamp": gt["frame"].to_numpy(np.int64),
            "x1": np.clip(gt["x1"].to_numpy() / hw[:, 1], 0, 1),
            "y1": np.clip(gt["y1"].to_numpy() / hw[:, 0], 0, 1),
            "x2": np.clip(gt["x2"].to_numpy() / hw[:, 1], 0, 1),
            "y2": np.clip(gt["y2"].to_numpy() / hw[:, 0], 0, 1),
            "action_id": np.asarray(ids, dtype=np.int64)[gt["label"].to_numpy()],
        }
    )
    box_key = out[["x1", "y1", "x2", "y2"]].round(6).astype(str).agg(",".join, axis=1)
    out["person_id"] = (
        out.assign(box=box_key).groupby(["video_id", "timestamp"])["box"].rank(method="dense").astype(np.int64) - 1
    )
    return out


def per_frame_detections(
    boxes: pd.DataFrame, scores: np.ndarray, dataset: DenseDataset, ids: Sequence[int], class_ids: Sequence[int]
) -> pd.DataFrame:
    """Per-frame detections (``stages.metrics.tubes.DETECTION_COLUMNS``) from per-box class scores.

    ``boxes`` has video_id, timestamp (frame) and normalised x1..y2 per scored row; ``scores`` [n, len(class_ids)]
    follows ``class_ids`` (a head's columns); only the data set's labels are kept, as 0-based label indices.
    """
    column = {c: i for i, c in enumerate(class_ids)}
    keep = [column[c] for c in ids]
    n, k = len(boxes), len(keep)
    hw = np.array([dataset.resolution[v] for v in boxes["video_id"]], dtype=np.float64).reshape(-1, 2)
    pixels = boxes[["x1", "y1", "x2", "y2"]].to_numpy(np.float64) * np.c_[hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]]
    return pd.DataFrame(
        {
            "video": np.repeat(boxes["video_id"].to_numpy(), k),
            "frame": np.repeat(boxes["timestamp"].to_numpy(np.int64), k),
            "x1": np.repeat(pixels[:, 0], k),
            "y1": np.repeat(pixels[:, 1], k),
            "x2": np.repeat(pixels[:, 2], k),
            "y2": np.repeat(pixels[:, 3], k),
            "label": np.tile(np.arange(k), n),
            "score": scores[:, keep].reshape(-1).astype(np.float64),
        }
    )


def load(data_dir: Path) -> DenseDataset:
    return read_dense_dataset(dense_paths(data_dir, "train")[0])
