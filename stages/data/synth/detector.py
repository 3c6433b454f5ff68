"""The simulated person detector: jittered ground-truth boxes, some missed, plus false positives on clutter.

The synthetic set ships detections so the ``det`` box source works without running a real detector; they are
drawn from the video's own random streams (one for keyframes, one for dense frames), so either set of boxes is
reproducible on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from stages.data.synth.plan import Clutter, SynthConfig

_BOX = ["x1", "y1", "x2", "y2"]


def keyframe_detections(
    config: SynthConfig, video_id: str, clutter: Sequence[Clutter], annotations: pd.DataFrame, rng: np.random.Generator
) -> pd.DataFrame:
    """The detector on every keyframe of one video (AVA timestamps in seconds)."""
    boxes = annotations.drop_duplicates(["timestamp", "person_id"])
    return detect(config, video_id, clutter, boxes, rng)


def dense_detections(
    config: SynthConfig, video_id: str, clutter: Sequence[Clutter], dense: pd.DataFrame, rng: np.random.Generator
) -> pd.DataFrame:
    """The detector on every labelled frame of one video; ``timestamp`` is the 1-based frame number."""
    boxes = dense.drop_duplicates(["frame", "person_id"])
    scale = np.array([config.width, config.height, config.width, config.height], dtype=np.float64)
    normalised = pd.DataFrame(boxes[_BOX].to_numpy() / scale, columns=_BOX)
    normalised.insert(0, "timestamp", boxes["frame"].to_numpy() + 1)
    return detect(config, video_id, clutter, normalised, rng)


def detect(
    config: SynthConfig, video_id: str, clutter: Sequence[Clutter], boxes: pd.DataFrame, rng: np.random.Generator
) -> pd.DataFrame:
    """Detections in the AVA predicted-box layout, sorted by timestamp then score (descending).

    ``boxes`` holds one normalised actor box per (timestamp, actor), actors in order within a timestamp; the
    draws follow that order, so a given ``rng`` state always gives the same detections.
    """
    rows = []
    order = np.argsort(boxes["timestamp"].to_numpy(), kind="stable")  # pandas groupby per frame is too slow
    stamps, coords = boxes["timestamp"].to_numpy()[order], boxes[_BOX].to_numpy()[order]
    starts = np.flatnonzero(np.diff(stamps, prepend=stamps[:1] - 1) != 0) if len(stamps) else np.array([], int)
    for t, group in zip(stamps[starts], np.split(coords, starts[1:]), strict=True):
        for box in group:
            if rng.random() < config.detector_miss_rate:
                continue
            rows.append((t, *_jitter(rng, box, config.detector_jitter), float(rng.uniform(0.7, 1.0))))
        if not clutter:
            continue
        for _ in range(int(rng.poisson(config.detector_false_positives_per_frame))):
            item = clutter[int(rng.integers(len(clutter)))]
            box = _false_positive_box(config, item)
            rows.append((t, *_jitter(rng, box, config.detector_jitter), float(rng.uniform(0.05, 0.6))))
    df = pd.DataFrame(rows, columns=["timestamp", *_BOX, "score"])
    df.insert(0, "video_id", video_id)
    df.insert(6, "action_id", pd.array([pd.NA] * len(df), dtype="Int64"))
    df = df.astype({"timestamp": np.int64})
    return df.sort_values(["timestamp", "score"], ascending=[True, False], kind="stable").reset_index(drop=True)


def _false_positive_box(config: SynthConfig, item: Clutter) -> np.ndarray:
    """A clutter object's box padded by 15% (plus a pixel) and normalised: person-sized things fool detectors."""
    x1, y1, x2, y2 = item.box()
    pad_x, pad_y = 0.15 * (x2 - x1) + 1, 0.15 * (y2 - y1) + 1
    box = np.array(
        [
            (x1 - pad_x) / config.width,
            (y1 - pad_y) / config.height,
            (x2 + pad_x) / config.width,
            (y2 + pad_y) / config.height,
        ]
    )
    return np.clip(box, 0, 1)


def _jitter(rng: np.random.Generator, box: np.ndarray, amount: float) -> tuple[float, ...]:
    """Move each edge by N(0, amount * side length), keep it inside [0, 1] and at least 1% wide."""
    w, h = box[2] - box[0], box[3] - box[1]
    noisy = box + rng.normal(0.0, amount, 4) * np.array([w, h, w, h])
    noisy = np.clip(noisy, 0.0, 1.0)
    noisy[2] = max(noisy[2], min(1.0, noisy[0] + 0.01))
    noisy[0] = min(noisy[0], noisy[2] - 0.01)
    noisy[3] = max(noisy[3], min(1.0, noisy[1] + 0.01))
    noisy[1] = min(noisy[1], noisy[3] - 0.01)
    return tuple(float(v) for v in noisy)
