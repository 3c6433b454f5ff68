"""Action tubes from per-frame detections, linked the way MOC-Detector's ``BuildTubes`` links them.

MultiSports, UCF101-24 and JHMDB report video-mAP over tubes; the MultiSports baselines and MOC build them
with MOC's greedy online linker (``src/ACT_utils/ACT_build.py`` + ``nms_tubelets`` in ``ACT_utils.py``).
This module reproduces that linker for per-frame detections (MOC's tubelet length K = 1). Per video and
label, frame by frame:

1. The frame's boxes of that label go through MOC's *single-pass linear soft-NMS*: in descending score
   order each surviving box down-weights every lower box whose IoU with it exceeds ``nms_iou`` (0.6) to
   ``score * (1 - IoU)`` and removes it from further consideration as a suppressor; then the boxes are
   re-sorted by the new scores and the top ``top_k`` (10) kept. Suppressed boxes are *not* discarded.
2. Active tubes are sorted by their mean (re-weighted) box score, descending. Each in turn takes, among
   the remaining boxes whose IoU with the tube's last box is >= ``link_iou`` (0.5), the one with the
   **highest score** (not the highest IoU); the box is then no longer available to later tubes.
3. A tube without a match ends once ``patience`` frames have passed since its last box (MOC's K; with
   K = 1, MOC's value for per-frame input, a tube ends at its first miss). Unmatched boxes start tubes.
4. At the end, tubes scoring (mean box score) below ``min_score`` (0.005) or spanning fewer than
   ``min_length`` (15) frames are dropped.

IoUs use MOC's ``+1`` pixel convention (``area_offset=1``). Ties are broken as MOC breaks them: the same
``np.argsort`` calls on arrays in the same order (a frame's boxes in input row order). Each linked frame
keeps its own box and (re-weighted) score. With ``patience > 1`` a tube can skip frames; those frames get
a box interpolated linearly between the neighbouring linked boxes and a NaN score (MOC, which gets its
gap-free coverage from K-frame tubelets, has no equivalent), so every tube has one row per frame.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stages.metrics.boxes import iou_pairs

logger = logging.getLogger(__name__)

DETECTION_COLUMNS = ["video", "frame", "x1", "y1", "x2", "y2", "label", "score"]
TUBE_ROW_COLUMNS = ["video", "label", "tube", "tube_score", "frame", "x1", "y1", "x2", "y2", "score"]


@dataclass(frozen=True)
class LinkParams:
    """MOC's linking constants (its defaults), named."""

    nms_iou: float = 0.6  # per-frame soft-NMS: boxes above this IoU with a better box are down-weighted
    top_k: int = 10  # boxes kept per frame and label after soft-NMS
    link_iou: float = 0.5  # a box extends a tube if IoU(last box of the tube, box) >= this
    patience: int = 1  # a tube ends when this many frames passed since its last box without a match (MOC's K)
    min_length: int = 15  # tubes spanning fewer frames are dropped
    min_score: float = 0.005  # tubes whose mean box score is lower are dropped
    area_offset: float = 1.0  # MOC counts x2 - x1 + 1 pixels; 0 for continuous coordinates

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.patience < 1 or self.min_length < 1:
            raise ValueError(f"top_k, patience and min_length must be >= 1: {self}")


@dataclass(frozen=True)
class Tube:
    """One linked tube: ``boxes`` rows are ``(frame, x1, y1, x2, y2, score)``, one per frame, frames increasing."""

    video: str
    label: int
    score: float
    boxes: np.ndarray = field(repr=False)

    @property
    def start(self) -> int:
        return int(self.boxes[0, 0])

    @property
    def end(self) -> int:
        return int(self.boxes[-1, 0])


# ----------------------------------------------------------------------------------------------- soft-NMS


def soft_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, top_k: int, area_offset: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """MOC's single-pass linear soft-NMS; returns ``(kept indices, best first, re-weighted scores of all boxes)``.

    Going down the score order, the current box re-weights each remaining box with IoU > ``iou_threshold``
    to ``score * (1 - IoU)`` and drops it from the suppressor list (each box is re-weighted at most once).
    Then all boxes are ranked by the new scores (``argsort(...)[::-1]``, as MOC) and the first ``top_k`` kept.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64), scores.copy()
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = (x2 - x1 + area_offset) * (y2 - y1 + area_offset)
    weight = np.ones_like(scores)
    order = np.argsort(scores)[::-1]
    while order.size > 0:
        i, rest = order[0], order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + area_offset)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + area_offset)
        inter = w * h
        iou = inter / (area[rest] + area[i] - inter)
        hit = iou > iou_threshold
        weight[rest[hit]] = 1.0 - iou[hit]
        order = rest[~hit]
    new_scores = scores * weight
    return np.argsort(new_scores)[::-1][:top_k], new_scores


# ----------------------------------------------------------------------------------------------- linking


class _Active:
    """A tube being grown: its linked frames, boxes and scores."""

    __slots__ = ("frames", "boxes", "scores")

    def __init__(self, frame: int, box: np.ndarray, score: float) -> None:
        self.frames = [frame]
        self.boxes = [box]
        self.scores = [score]

    def mean_score(self) -> float:
        return float(np.mean(np.array(self.scores)))  # np.mean (pairwise sum) as MOC's tubescore


def _link_one(
    frames: np.ndarray, boxes: np.ndarray, scores: np.ndarray, first: int, last: int, p: LinkParams
) -> list[_Active]:
    """Link one (video, label): rows sorted by frame, input order kept within a frame; frames first..last."""
    bounds = np.searchsorted(frames, np.arange(first, last + 2))
    active: list[_Active] = []
    finished: list[_Active] = []
    for f in range(first, last + 1):
        lo, hi = bounds[f - first], bounds[f - first + 1]
        if lo == hi and not active:
            continue
        keep, new_scores = soft_nms(boxes[lo:hi], scores[lo:hi], p.nms_iou, p.top_k, p.area_offset)
        cand_boxes = boxes[lo:hi][keep]
        cand_scores = new_scores[keep]
        if active:
            order = np.argsort(-np.array([t.mean_score() for t in active]))
            active = [active[i] for i in order]
        ended: list[int] = []
        for it, tube in enumerate(active):
            valid = np.zeros(0, dtype=np.int64)
            if len(cand_scores):
                valid = np.flatnonzero(iou_pairs(cand_boxes, tube.boxes[-1], p.area_offset) >= p.link_iou)
            if valid.size:
                j = valid[np.argmax(cand_scores[valid])]
                tube.frames.append(f)
                tube.boxes.append(cand_boxes[j])
                tube.scores.append(cand_scores[j])
                cand_boxes = np.delete(cand_boxes, j, axis=0)
                cand_scores = np.delete(cand_scores, j)
            elif f - tube.frames[-1] >= p.patience:
                ended.append(it)
        for it in reversed(ended):  # MOC moves them in reverse position order
            finished.append(active.pop(it))
        active.extend(_Active(f, cand_boxes[j], cand_scores[j]) for j in range(len(cand_scores)))
    return finished + active


def _finish(t: _Active) -> np.ndarray:
    """Rows (frame, x1, y1, x2, y2, score) for every frame of the tube, gaps interpolated with NaN scores."""
    frames = np.asarray(t.frames, dtype=np.int64)
    span = np.arange(frames[0], frames[-1] + 1)
    out = np.empty((len(span), 6), dtype=np.float64)
    out[:, 0] = span
    boxes = np.asarray(t.boxes, dtype=np.float64)
    if len(span) == len(frames):
        out[:, 1:5] = boxes
        out[:, 5] = t.scores
    else:
        for c in range(4):
            out[:, 1 + c] = np.interp(span, frames, boxes[:, c])
        out[:, 5] = np.nan
        out[frames - frames[0], 5] = t.scores
    return out


def link_tubes(
    detections: pd.DataFrame,
    params: LinkParams | None = None,
    nframes: Mapping[str, int] | None = None,
) -> list[Tube]:
    """Link per-frame detections (``DETECTION_COLUMNS``; frames 1-based, pixels) into tubes, MOC's way.

    ``nframes`` (video -> frame count, e.g. ``DenseDataset.nframes``) makes the frame loop run to the
    video's end as MOC's does, which only changes the order of equally scored output tubes; without it the
    loop stops at the video's last detection. Output: videos in order of first appearance, labels
    ascending, tubes in MOC's order (ended tubes as they end, then the still-active ones).
    """
    p = params or LinkParams()
    missing = [c for c in DETECTION_COLUMNS if c not in detections.columns]
    if missing:
        raise ValueError(f"detections lack column(s) {missing}; expected {DETECTION_COLUMNS}")
    if len(detections) == 0:
        return []
    vcode, videos = pd.factorize(detections["video"].astype(str), sort=False)
    frame = detections["frame"].to_numpy()
    if not np.array_equal(frame, np.round(frame)) or (frame < 1).any():
        raise ValueError("detection frames must be integers >= 1")
    frame = frame.astype(np.int64)
    label = detections["label"].to_numpy().astype(np.int64)
    boxes = detections[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
    scores = detections["score"].to_numpy(dtype=np.float64)
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError("detections contain non-finite boxes or scores")

    order = np.lexsort((frame, label, vcode))  # stable: input order kept within a frame
    vcode, frame, label, boxes, scores = vcode[order], frame[order], label[order], boxes[order], scores[order]
    group_start = np.flatnonzero(np.r_[True, (np.diff(vcode) != 0) | (np.diff(label) != 0)])
    group_end = np.r_[group_start[1:], len(order)]
    video_first = {}
    video_last = {}
    for v in np.unique(vcode):
        rows = vcode == v
        video_first[v] = int(frame[rows].min())
        video_last[v] = int(frame[rows].max())

    tubes: list[Tube] = []
    dropped = 0
    for gs, ge in zip(group_start, group_end, strict=True):
        v = int(vcode[gs])
        name = str(videos[v])
        last = video_last[v]
        if nframes is not None:
            if name not in nframes:
                raise ValueError(f"video {name!r} has detections but no nframes entry")
            if last > nframes[name]:
                raise ValueError(f"video {name!r}: detection at frame {last} beyond its {nframes[name]} frames")
            last = int(nframes[name])
        first = 1 if nframes is not None else video_first[v]
        for t in _link_one(frame[gs:ge], boxes[gs:ge], scores[gs:ge], first, last, p):
            score = t.mean_score()
            if score < p.min_score or t.frames[-1] - t.frames[0] + 1 < p.min_length:
                dropped += 1
                continue
            tubes.append(Tube(video=name, label=int(label[gs]), score=score, boxes=_finish(t)))
    logger.info("linked %d tubes (%d dropped as short or low-scoring)", len(tubes), dropped)
    return tubes


# ----------------------------------------------------------------------------------------------- tables


def tubes_to_frame(tubes: Sequence[Tube]) -> pd.DataFrame:
    """One row per tube frame (``TUBE_ROW_COLUMNS``); ``tube`` is the index in ``tubes``."""
    if not tubes:
        return pd.DataFrame({c: pd.Series(dtype=np.float64) for c in TUBE_ROW_COLUMNS}).astype(
            {"video": object, "label": np.int64, "tube": np.int64, "frame": np.int64}
        )
    lengths = np.array([len(t.boxes) for t in tubes])
    rows = np.concatenate([t.boxes for t in tubes], axis=0)
    return pd.DataFrame(
        {
            "video": np.repeat(np.array([t.video for t in tubes], dtype=object), lengths),
            "label": np.repeat([t.label for t in tubes], lengths).astype(np.int64),
            "tube": np.repeat(np.arange(len(tubes)), lengths),
            "tube_score": np.repeat([t.score for t in tubes], lengths),
            "frame": rows[:, 0].astype(np.int64),
            "x1": rows[:, 1],
            "y1": rows[:, 2],
            "x2": rows[:, 3],
            "y2": rows[:, 4],
            "score": rows[:, 5],
        }
    )


def tubes_from_frame(rows: pd.DataFrame) -> list[Tube]:
    """Inverse of :func:`tubes_to_frame` (tubes in order of their ``tube`` id, rows sorted by frame)."""
    missing = [c for c in TUBE_ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"tube rows lack column(s) {missing}; expected {TUBE_ROW_COLUMNS}")
    out = []
    for _, g in rows.sort_values(["tube", "frame"], kind="stable").groupby("tube", sort=True):
        boxes = g[["frame", "x1", "y1", "x2", "y2", "score"]].to_numpy(dtype=np.float64)
        out.append(Tube(str(g["video"].iat[0]), int(g["label"].iat[0]), float(g["tube_score"].iat[0]), boxes))
    return out
