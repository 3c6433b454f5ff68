"""Frame-mAP and video-mAP for the dense-annotation benchmarks, each with its own evaluator's rules.

Two protocols, each equal to its reference on the same input:

``"multisports"`` (``MCG-NJU/MultiSports``, ``evaluate_multisports.py``)
    * IoU without ``+1``; video IoU = mean per-frame IoU over the temporal overlap x temporal IoU, where
      the temporal overlap and union are ``end - start`` (no ``+1`` either: a 10-frame tube inside a
      20-frame one has temporal IoU 9/19; tubes overlapping in one frame have IoU 0).
    * A detection takes the highest-IoU ground truth of its frame / video (first one on ties) whether or
      not an earlier detection took it; it is a true positive iff that IoU >= the threshold and the box
      is still free (no fallback to the second best).
    * PASCAL VOC all-point AP. Classes without ground truth and six hard-coded classes (``aerobic kick
      jump``, ``aerobic off axis jump``, ``aerobic butterfly jump``, ``aerobic balance turn``,
      ``basketball save``, ``basketball jump ball``) are left out of the mean. Detections on videos outside
      the test list are false positives. Video-mAP is reported at 0.2, 0.5 and averaged over 0.1:0.9.

``"act"`` (ACT's ``ACT.py`` / ``ACT_utils.py`` as shipped in ``MCG-NJU/MOC-Detector``; UCF101-24, JHMDB)
    * ``+1`` in box sides and in temporal overlap and union.
    * A detection takes the highest-IoU ground truth *still unmatched* (matched ground truth is removed,
      so a duplicate can take the second-best box if that one also clears the threshold).
    * Before video-AP, per video and class, 3D NMS at 0.3 (greedy, highest score first).
    * AP is the trapezoid rule over the precision-recall points, starting at (recall 0, precision 1),
      in float32 as the reference (``pr_to_ap``). Every class counts in the mean; a class without
      ground truth scores 0 (the reference divides by zero if it also has detections). Detections on
      videos outside the test split are ignored. Video-mAP at 0.2, 0.5, 0.75 and averaged over 0.5:0.95.

Ties in score are broken as the references break them: ``np.argsort(-score)`` over the detections of a
class in input order (frame level: the rows of ``detections``; video level: the tube list, which for
``"act"`` is first reordered as the reference builds it: test videos in order, tubes in NMS pick order).
All values are fractions in [0, 1] (the references print percentages).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.data.act import DenseDataset
from stages.metrics.boxes import iou_pairs
from stages.metrics.tubes import DETECTION_COLUMNS, LinkParams, Tube, link_tubes

logger = logging.getLogger(__name__)

MULTISPORTS_IGNORED_LABELS = frozenset(
    {
        "aerobic kick jump",
        "aerobic off axis jump",
        "aerobic butterfly jump",
        "aerobic balance turn",
        "basketball save",
        "basketball jump ball",
    }
)


@dataclass(frozen=True)
class Protocol:
    """Everything that differs between the benchmarks' evaluators."""

    name: str
    area_offset: float  # added to box sides: 1 (ACT, pixel-inclusive) or 0 (VOC)
    temporal_offset: int  # added to temporal overlap and union: 1 (ACT) or 0 (MultiSports)
    ap_method: str  # "voc" (all-point interpolated) or "trapezoid" (ACT's pr_to_ap)
    remove_matched: bool  # True: best *unmatched* GT (ACT); False: best GT, FP if taken (MultiSports)
    nms3d: float | None  # 3D NMS threshold applied to tubes before video-AP (ACT: 0.3)
    count_classes_without_gt: bool  # in the mean with AP 0 (ACT) or left out (MultiSports)
    unknown_videos_are_fp: bool  # detections on videos outside the test list: FP (MultiSports) or ignored
    ignored_labels: frozenset[str] = frozenset()
    frame_thresholds: tuple[float, ...] = (0.5,)
    video_thresholds: tuple[float, ...] = (0.2, 0.5)
    video_ranges: dict[str, tuple[float, ...]] = field(default_factory=dict)


# the references' own threshold formulas (0.1 + 0.1 * 2 is 0.30000000000000004, as there)
_MS_RANGE = tuple(0.1 + 0.1 * i for i in range(9))
_ACT_RANGE = tuple(0.5 + 0.05 * i for i in range(10))

PROTOCOLS: dict[str, Protocol] = {
    "multisports": Protocol(
        name="multisports",
        area_offset=0.0,
        temporal_offset=0,
        ap_method="voc",
        remove_matched=False,
        nms3d=None,
        count_classes_without_gt=False,
        unknown_videos_are_fp=True,
        ignored_labels=MULTISPORTS_IGNORED_LABELS,
        video_thresholds=(0.2, 0.5),
        video_ranges={"0.1:0.9": _MS_RANGE},
    ),
    "act": Protocol(
        name="act",
        area_offset=1.0,
        temporal_offset=1,
        ap_method="trapezoid",
        remove_matched=True,
        nms3d=0.3,
        count_classes_without_gt=True,
        unknown_videos_are_fp=False,
        video_thresholds=(0.2, 0.5, 0.75),
        video_ranges={"0.5:0.95": _ACT_RANGE},
    ),
}

_DATASET_PROTOCOL = {"multisports": "multisports", "ucf10124": "act", "ucf24": "act", "jhmdb": "act", "jhmdb21": "act"}


def default_protocol(dataset: str) -> str:
    """The protocol a benchmark is reported with: MultiSports -> "multisports", UCF101-24 / JHMDB -> "act"."""
    key = re.sub(r"[^a-z0-9]", "", dataset.lower())
    if key not in _DATASET_PROTOCOL:
        raise ValueError(f"no default protocol for data set {dataset!r}; known: MultiSports, UCF101-24, JHMDB")
    return _DATASET_PROTOCOL[key]


def get_protocol(protocol: str | Protocol) -> Protocol:
    """A protocol by name ("multisports" | "act"), or the given one."""
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[protocol]


@dataclass(frozen=True)
class DenseMapResult:
    """mAP of one level ("frame" or "video") under one protocol, per IoU threshold and per class.

    ``per_threshold`` and ``per_class`` are keyed by the threshold rounded to 6 decimals; ``per_class`` maps
    class name -> AP for the classes in the mean; ``ranges`` holds averages over threshold ranges.
    """

    protocol: str
    level: str
    per_threshold: dict[float, float]
    per_class: dict[float, dict[str, float]]
    ranges: dict[str, float] = field(default_factory=dict)

    @property
    def overall(self) -> float:
        """mAP at IoU 0.5 (the headline number), else at the first threshold."""
        if 0.5 in self.per_threshold:
            return self.per_threshold[0.5]
        return next(iter(self.per_threshold.values()))


# ----------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _TubeTable:
    """Tubes packed for vectorised IoU: a dense row per frame from start to end (``present`` marks gaps)."""

    start: np.ndarray  # int64 (n,)
    end: np.ndarray  # int64 (n,)
    offset: np.ndarray  # int64 (n,): first dense row of each tube
    boxes: np.ndarray  # float64 (rows, 4)
    present: np.ndarray  # bool (rows,)

    @classmethod
    def build(cls, arrays: Sequence[np.ndarray]) -> _TubeTable:
        n = len(arrays)
        if n == 0:
            z = np.zeros(0, dtype=np.int64)
            return cls(z, z, z, np.zeros((0, 4)), np.zeros(0, dtype=bool))
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=n)
        rows = np.concatenate([np.asarray(a, dtype=np.float64)[:, :5] for a in arrays], axis=0)
        tube_of_row = np.repeat(np.arange(n), lengths)
        first_row = np.r_[0, np.cumsum(lengths)[:-1]]
        frames = rows[:, 0].astype(np.int64)
        start = frames[first_row]
        end = frames[first_row + lengths - 1]
        span = end - start + 1
        offset = np.r_[0, np.cumsum(span)[:-1]].astype(np.int64)
        boxes = np.zeros((int(span.sum()), 4))
        present = np.zeros(int(span.sum()), dtype=bool)
        dense = offset[tube_of_row] + frames - start[tube_of_row]
        boxes[dense] = rows[:, 1:5]
        present[dense] = True
        return cls(start, end, offset, boxes, present)


def _tube_iou_pairs(
    a: _TubeTable, ia: np.ndarray, b: _TubeTable, ib: np.ndarray, area_offset: float, temporal_offset: int
) -> np.ndarray:
    """Spatio-temporal IoU of tube ``a[ia[k]]`` with ``b[ib[k]]`` for every k.

    Mean per-frame IoU over the frames both span (a frame missing from either tube counts 0; the
    references require gap-free tubes) times temporal IoU ``(overlap + t) / (union + t)``.
    """
    n = len(ia)
    out = np.zeros(n)
    if n == 0:
        return out
    sa, ea, sb, eb = a.start[ia], a.end[ia], b.start[ib], b.end[ib]
    tmin, tmax = np.maximum(sa, sb), np.minimum(ea, eb)
    length = np.maximum(tmax - tmin + 1, 0)
    k = np.flatnonzero(length > 0)
    if k.size == 0:
        return out
    lk = length[k]
    pid = np.repeat(np.arange(k.size), lk)
    frame = tmin[k][pid] + (np.arange(int(lk.sum())) - np.repeat(np.cumsum(lk) - lk, lk))
    ra = a.offset[ia[k]][pid] + frame - sa[k][pid]
    rb = b.offset[ib[k]][pid] + frame - sb[k][pid]
    iou = iou_pairs(a.boxes[ra], b.boxes[rb], area_offset)
    iou = np.where(a.present[ra] & b.present[rb], iou, 0.0)
    spatial = np.bincount(pid, weights=iou, minlength=k.size) / lk
    inter = (tmax[k] - tmin[k] + temporal_offset).astype(np.float64)
    union = (np.maximum(ea[k], eb[k]) - np.minimum(sa[k], sb[k]) + temporal_offset).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[k] = spatial * (inter / union)
    return out


def tube_iou(a: np.ndarray, b: np.ndarray, protocol: str | Protocol = "multisports") -> float:
    """Spatio-temporal IoU of two tubes (rows ``frame, x1, y1, x2, y2, ...``) under ``protocol``."""
    p = get_protocol(protocol)
    ta, tb = _TubeTable.build([a]), _TubeTable.build([b])
    zero = np.zeros(1, dtype=np.int64)
    return float(_tube_iou_pairs(ta, zero, tb, zero, p.area_offset, p.temporal_offset)[0])


def nms3d(tubes: Sequence[Tube], overlap: float = 0.3, protocol: str | Protocol = "act") -> list[int]:
    """ACT's ``nms3dt`` over tubes of one video and class: indices kept, in pick order (best first).

    Greedy: take the highest-scoring remaining tube (the last of ``np.argsort(scores)`` on ties), drop
    the remaining tubes whose IoU with it exceeds ``overlap``.
    """
    if not tubes:
        return []
    p = get_protocol(protocol)
    n = len(tubes)
    table = _TubeTable.build([t.boxes for t in tubes])
    ia, ib = np.triu_indices(n, k=1)
    m = np.zeros((n, n))
    m[ia, ib] = m[ib, ia] = _tube_iou_pairs(table, ia, table, ib, p.area_offset, p.temporal_offset)
    return _greedy_nms(m, np.array([t.score for t in tubes], dtype=np.float64), overlap)


def _greedy_nms(iou: np.ndarray, scores: np.ndarray, overlap: float) -> list[int]:
    order = np.argsort(scores)
    keep: list[int] = []
    while order.size > 0:
        i = order[-1]
        keep.append(int(i))
        rest = order[:-1]
        order = rest[iou[rest, i] <= overlap]
    return keep


# ----------------------------------------------------------------------------------------------- AP


def average_precision(tp_ranked: np.ndarray, num_gt: int, method: str) -> float:
    """AP of detections in rank order (``tp_ranked`` True for true positives) against ``num_gt`` boxes.

    ``"voc"``: all-point interpolated AP over (recall, precision) padded with (0, 0) and (1, 0)
    (MultiSports' ``pr_to_ap_voc``). ``"trapezoid"``: ACT's ``pr_to_ap``, the trapezoid rule over the
    points prefixed with (recall 0, precision 1), in float32 as the reference stores them.
    """
    tp_ranked = np.asarray(tp_ranked, dtype=bool)
    tp = np.cumsum(tp_ranked)
    fp = np.cumsum(~tp_ranked)
    if num_gt == 0:
        return 0.0
    precision = tp / (tp + fp) if len(tp) else np.zeros(0)
    recall = tp / num_gt
    if method == "voc":
        rec = np.concatenate([[0.0], recall, [1.0]])
        prec = np.concatenate([[0.0], precision, [0.0]])
        prec = np.maximum.accumulate(prec[::-1])[::-1]
        i = np.flatnonzero(rec[1:] != rec[:-1]) + 1
        return float(np.sum((rec[i] - rec[i - 1]) * prec[i]))
    if method == "trapezoid":
        pr = np.empty((len(tp) + 1, 2), dtype=np.float32)
        pr[0] = (1.0, 0.0)
        pr[1:, 0] = precision
        pr[1:, 1] = recall
        return float(np.sum((pr[1:, 1] - pr[:-1, 1]) * (pr[1:, 0] + pr[:-1, 0]) * np.float32(0.5)))
    raise ValueError(f"unknown AP method {method!r}")


# ----------------------------------------------------------------------------------------------- matching


def _class_ranks(labels: np.ndarray, scores: np.ndarray, num_labels: int) -> np.ndarray:
    """Rank of each detection within its class, from ``np.argsort(-score)`` in input order (references' ties)."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in range(num_labels):
        idx = np.flatnonzero(labels == c)
        if idx.size:
            rank[idx[np.argsort(-scores[idx])]] = np.arange(idx.size)
    return rank


def _pairs_by_key(det_key: np.ndarray, gt_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (detection, ground truth) index pairs sharing a key; ground truth in its given order per key."""
    gorder = np.argsort(gt_key, kind="stable")
    gsorted = gt_key[gorder]
    lo = np.searchsorted(gsorted, det_key, side="left")
    hi = np.searchsorted(gsorted, det_key, side="right")
    counts = hi - lo
    pd_ = np.repeat(np.arange(len(det_key)), counts)
    pos = np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
    return pd_, gorder[pos]


def _match(
    det_key: np.ndarray,
    det_rank: np.ndarray,
    pair_det: np.ndarray,
    pair_gt: np.ndarray,
    pair_iou: np.ndarray,
    num_gt: int,
    threshold: float,
    remove_matched: bool,
) -> np.ndarray:
    """True-positive flags of the detections under one threshold.

    Pairs are ordered by detection then ground-truth order. ``remove_matched=False`` (MultiSports): each
    detection's best box is its argmax over all boxes of its key (NaN counts as the maximum, as
    ``np.argmax``), and only the best-ranked detection claiming a box gets it. ``remove_matched=True``
    (ACT): detections of a key, in rank order, each take the best box not yet taken; resolved in rounds,
    one detection per key per round, vectorised over keys.
    """
    n = len(det_key)
    tp = np.zeros(n, dtype=bool)
    if pair_det.size == 0:
        return tp
    if not remove_matched:
        ranking = np.where(np.isnan(pair_iou), np.inf, pair_iou)
        o = np.lexsort((pair_gt, -ranking, pair_det))  # per detection: best IoU, then first box
        first = o[np.r_[True, pair_det[o][1:] != pair_det[o][:-1]]]
        with np.errstate(invalid="ignore"):
            cand = first[pair_iou[first] >= threshold]
        if cand.size == 0:
            return tp
        cand = cand[np.lexsort((det_rank[pair_det[cand]], pair_gt[cand]))]  # per box: best-ranked detection
        winners = cand[np.r_[True, pair_gt[cand][1:] != pair_gt[cand][:-1]]]
        tp[pair_det[winners]] = True
        return tp

    with np.errstate(invalid="ignore"):
        ok = pair_iou >= threshold
    pdet, pgt, piou = pair_det[ok], pair_gt[ok], pair_iou[ok]
    o = np.lexsort((pgt, -piou, det_rank[pdet], det_key[pdet]))
    pdet, pgt = pdet[o], pgt[o]  # grouped by key, then detection rank; best box first per detection
    taken = np.zeros(num_gt, dtype=bool)
    resolved = np.zeros(n, dtype=bool)
    while True:
        live = ~resolved[pdet]
        if not live.any():
            return tp
        lp = np.flatnonzero(live)
        # the best-ranked unresolved detection of each key (pairs are key-major, rank-minor)
        keys = det_key[pdet[lp]]
        head_det = pdet[lp[np.r_[True, keys[1:] != keys[:-1]]]]
        is_head = np.zeros(n, dtype=bool)
        is_head[head_det] = True
        cand = lp[is_head[pdet[lp]] & ~taken[pgt[lp]]]
        if cand.size:
            first = cand[np.r_[True, pdet[cand][1:] != pdet[cand][:-1]]]
            tp[pdet[first]] = True
            taken[pgt[first]] = True
        resolved[head_det] = True


def _evaluate(
    p: Protocol,
    level: str,
    labels: Sequence[str],
    det_label: np.ndarray,
    det_score: np.ndarray,
    det_key: np.ndarray,
    gt_label: np.ndarray,
    gt_key: np.ndarray,
    pair_iou_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    thresholds: Sequence[float],
    ranges: dict[str, tuple[float, ...]],
) -> DenseMapResult:
    """Per-class AP at each threshold from keyed detections and ground truth (shared by both levels)."""
    num_labels = len(labels)
    evaluated = [c for c in range(num_labels) if labels[c] not in p.ignored_labels]
    gt_count = np.bincount(gt_label, minlength=num_labels) if len(gt_label) else np.zeros(num_labels, np.int64)
    if not p.count_classes_without_gt:
        evaluated = [c for c in evaluated if gt_count[c] > 0]
    for c in range(num_labels):
        if gt_count[c] == 0 and (det_label == c).any() and p.count_classes_without_gt:
            logger.warning("class %r has detections but no ground truth: AP 0 (the reference divides by 0)", labels[c])
    rank = _class_ranks(det_label, det_score, num_labels)
    pair_det, pair_gt = _pairs_by_key(det_key, gt_key)
    pair_iou = pair_iou_fn(pair_det, pair_gt)
    by_class = [np.flatnonzero(det_label == c) for c in range(num_labels)]
    by_class = [idx[np.argsort(rank[idx])] for idx in by_class]

    exact = list(dict.fromkeys([*thresholds, *(t for r in ranges.values() for t in r)]))
    maps: dict[float, float] = {}
    per_class_exact: dict[float, dict[str, float]] = {}
    for thr in exact:
        tp = _match(det_key, rank, pair_det, pair_gt, pair_iou, len(gt_key), thr, p.remove_matched)
        aps = {labels[c]: average_precision(tp[by_class[c]], int(gt_count[c]), p.ap_method) for c in evaluated}
        per_class_exact[thr] = aps
        maps[thr] = float(np.mean(list(aps.values()))) if aps else float("nan")
    per_threshold = {round(t, 6): maps[t] for t in thresholds}
    per_class = {round(t, 6): per_class_exact[t] for t in thresholds}
    range_means = {name: float(np.mean([maps[t] for t in r])) for name, r in ranges.items()}
    for r in ranges.values():  # range members are reported per threshold too
        for t in r:
            per_threshold.setdefault(round(t, 6), maps[t])
            per_class.setdefault(round(t, 6), per_class_exact[t])
    logger.info("%s %s-mAP: %s %s", p.name, level, {k: round(v, 4) for k, v in per_threshold.items()}, range_means)
    return DenseMapResult(p.name, level, per_threshold, per_class, range_means)


# ----------------------------------------------------------------------------------------------- frame-mAP


def frame_map(
    dataset: DenseDataset,
    detections: pd.DataFrame,
    protocol: str | Protocol = "multisports",
    split: int = 0,
    thresholds: Sequence[float] | None = None,
) -> DenseMapResult:
    """Frame-mAP of per-frame detections (``DETECTION_COLUMNS``: video name, 1-based frame, pixel box,
    0-based label, score) against the ground-truth tubes of the test videos of ``split`` (0-based)."""
    p = get_protocol(protocol)
    thresholds = tuple(thresholds if thresholds is not None else p.frame_thresholds)
    missing = [c for c in DETECTION_COLUMNS if c not in detections.columns]
    if missing:
        raise ValueError(f"detections lack column(s) {missing}; expected {DETECTION_COLUMNS}")
    videos = dataset.videos("test", split)
    vindex = {v: i for i, v in enumerate(videos)}
    nl = len(dataset.labels)

    gt = dataset.gt_boxes(videos)
    gvid = gt["video"].map(vindex).to_numpy(dtype=np.int64)
    glab = gt["label"].to_numpy(dtype=np.int64)
    gframe = gt["frame"].to_numpy(dtype=np.int64)
    gboxes = gt[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)

    det = _checked_detections(detections, nl)
    dvid = det["video"].astype(str).map(vindex).fillna(-1).to_numpy(dtype=np.int64)
    if not p.unknown_videos_are_fp:
        keep = dvid >= 0
        det, dvid = det[keep], dvid[keep]
    dframe = np.floor(det["frame"].to_numpy(dtype=np.float64)).astype(np.int64)  # the references' int(frame)
    dlab = det["label"].to_numpy(dtype=np.int64)
    dscore = det["score"].to_numpy()
    if dscore.dtype.kind != "f":
        dscore = dscore.astype(np.float64)
    dboxes = det[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)

    fmax = int(max(gframe.max(initial=0), dframe.max(initial=0))) + 1
    gkey = (gvid * fmax + gframe) * nl + glab
    dkey = np.where(dvid >= 0, (dvid * fmax + dframe) * nl + dlab, -1 - np.arange(len(dvid)))

    def pair_iou(pd_: np.ndarray, pg: np.ndarray) -> np.ndarray:
        return iou_pairs(gboxes[pg], dboxes[pd_], p.area_offset)

    return _evaluate(p, "frame", dataset.labels, dlab, dscore, dkey, glab, gkey, pair_iou, thresholds, {})


def _checked_detections(detections: pd.DataFrame, num_labels: int) -> pd.DataFrame:
    """Detections with a known label and sane box; unknown labels are dropped with a warning."""
    lab = detections["label"].to_numpy()
    if not np.array_equal(lab, np.round(lab)):
        raise ValueError("detection labels must be integer class indices")
    outside = (lab < 0) | (lab >= num_labels)
    if outside.any():
        logger.warning("dropping %d detections with labels outside 0..%d", int(outside.sum()), num_labels - 1)
        detections = detections[~outside]
    b = detections[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
    s = detections["score"].to_numpy(dtype=np.float64)
    if not (np.isfinite(b).all() and np.isfinite(s).all()):
        raise ValueError("detections contain non-finite boxes or scores")
    inverted = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if inverted.any():
        i = int(np.flatnonzero(inverted)[0])
        raise ValueError(f"detection row {detections.index[i]!r} has an inverted box (x2 < x1 or y2 < y1)")
    return detections


# ----------------------------------------------------------------------------------------------- video-mAP


def _check_tubes(tubes: Sequence[Tube]) -> None:
    for i, t in enumerate(tubes):
        b = np.asarray(t.boxes)
        if b.ndim != 2 or b.shape[0] == 0 or b.shape[1] < 5:
            raise ValueError(f"tube {i} ({t.video!r}, label {t.label}): boxes must be a non-empty (n, >=5) array")
        if not np.isfinite(b[:, :5]).all():
            raise ValueError(f"tube {i} ({t.video!r}, label {t.label}): non-finite frame or box")
        if (np.diff(b[:, 0]) <= 0).any() or (b[:, 0] != np.round(b[:, 0])).any():
            raise ValueError(f"tube {i} ({t.video!r}, label {t.label}): frames must be increasing integers")


def video_map(
    dataset: DenseDataset,
    tubes: Sequence[Tube],
    protocol: str | Protocol = "multisports",
    split: int = 0,
    thresholds: Sequence[float] | None = None,
) -> DenseMapResult:
    """Video-mAP of scored tubes against the ground-truth tubes of the test videos of ``split`` (0-based).

    Under ``"act"`` the tubes first go through 3D NMS per video and class (``Protocol.nms3d``).
    ``thresholds`` defaults to the protocol's; the protocol's threshold ranges are always averaged.
    """
    p = get_protocol(protocol)
    thresholds = tuple(thresholds if thresholds is not None else p.video_thresholds)
    videos = dataset.videos("test", split)
    vindex = {v: i for i, v in enumerate(videos)}
    nl = len(dataset.labels)
    _check_tubes(tubes)

    dets = [t for t in tubes if 0 <= t.label < nl]
    if len(dets) < len(tubes):
        logger.warning("dropping %d tubes with labels outside 0..%d", len(tubes) - len(dets), nl - 1)
    if not p.unknown_videos_are_fp:
        dets = [t for t in dets if t.video in vindex]
    if p.nms3d is not None:
        dets = _nms_per_group(dets, vindex, p, p.nms3d)

    gt_arrays: list[np.ndarray] = []
    gt_vid: list[int] = []
    gt_lab: list[int] = []
    for iv, v in enumerate(videos):
        for label, lt in sorted(dataset.gttubes[v].items()):
            gt_arrays.extend(lt)
            gt_vid.extend([iv] * len(lt))
            gt_lab.extend([label] * len(lt))
    glab = np.asarray(gt_lab, dtype=np.int64)
    gkey = np.asarray(gt_vid, dtype=np.int64) * nl + glab
    dlab = np.array([t.label for t in dets], dtype=np.int64)
    dvid = np.array([vindex.get(t.video, -1) for t in dets], dtype=np.int64)
    dkey = np.where(dvid >= 0, dvid * nl + dlab, -1 - np.arange(len(dets)))
    dscore = np.array([t.score for t in dets], dtype=np.float64)
    gtab, dtab = _TubeTable.build(gt_arrays), _TubeTable.build([t.boxes for t in dets])

    def pair_iou(pd_: np.ndarray, pg: np.ndarray) -> np.ndarray:
        return _tube_iou_pairs(gtab, pg, dtab, pd_, p.area_offset, p.temporal_offset)

    return _evaluate(p, "video", dataset.labels, dlab, dscore, dkey, glab, gkey, pair_iou, thresholds, p.video_ranges)


def _nms_per_group(tubes: list[Tube], vindex: dict[str, int], p: Protocol, overlap: float) -> list[Tube]:
    """3D NMS per (video, class); result ordered as ACT builds its list: test videos in order, pick order."""
    if not tubes:
        return []
    n = len(tubes)
    names = pd.Series([t.video for t in tubes], dtype=object)
    unknown, _ = pd.factorize(names.where(~names.isin(vindex.keys())), sort=False)  # -1 for known videos
    vid = np.where(unknown >= 0, len(vindex) + unknown, names.map(vindex).fillna(-1).to_numpy(dtype=np.int64))
    labels = np.array([t.label for t in tubes], dtype=np.int64)
    gkey = vid * (int(labels.max()) + 1) + labels
    order = np.argsort(gkey, kind="stable")  # groups in video order; input (ltubes) order within a group
    bounds = np.flatnonzero(np.r_[True, gkey[order][1:] != gkey[order][:-1], True])
    local = np.empty(n, dtype=np.int64)
    local[order] = np.arange(n) - np.repeat(bounds[:-1], np.diff(bounds))
    group_of = np.empty(n, dtype=np.int64)
    group_of[order] = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))

    ia, ib = _pairs_by_key(gkey, gkey)
    upper = ia < ib
    ia, ib = ia[upper], ib[upper]
    table = _TubeTable.build([t.boxes for t in tubes])
    iou = _tube_iou_pairs(table, ia, table, ib, p.area_offset, p.temporal_offset)
    po = np.argsort(group_of[ia], kind="stable")
    ia, ib, iou = ia[po], ib[po], iou[po]
    pair_bounds = np.searchsorted(group_of[ia], np.arange(len(bounds)))
    scores = np.array([t.score for t in tubes], dtype=np.float64)
    kept: list[Tube] = []
    for g in range(len(bounds) - 1):
        members = order[bounds[g] : bounds[g + 1]]
        m = np.zeros((members.size, members.size))
        lo, hi = pair_bounds[g], pair_bounds[g + 1]
        m[local[ia[lo:hi]], local[ib[lo:hi]]] = iou[lo:hi]
        m[local[ib[lo:hi]], local[ia[lo:hi]]] = iou[lo:hi]
        kept.extend(tubes[members[i]] for i in _greedy_nms(m, scores[members], overlap))
    return kept


# ----------------------------------------------------------------------------------------------- files


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _thr(t: float) -> str:
    return f"{t:g}"


def evaluate_dense_files(
    ground_truth: str | Path,
    detections: Sequence[str | Path],
    protocol: str | Protocol = "multisports",
    split: int = 0,
    link: LinkParams | None = None,
    classes: str | Path | None = None,
) -> dict[str, Any]:
    """Frame-mAP and video-mAP of detection files, as the references' scripts compute them; a JSON-ready report.

    ``ground_truth``: an ACT/MOC ``gt.pkl`` (test-only files too) or corrected UCF101-24 annotations with
    ``classes``; ``detections``: files in any format of :mod:`stages.data.dense_formats` (at most one per-frame
    source and one tube source). Per-frame detections give frame-mAP; tubes give video-mAP; with ``link``
    and no tube source, the per-frame detections of the test videos are linked (MOC's linker) for video-mAP.
    ``split`` is 0-based. The report holds fractions (the references print percentages).
    """
    from cache_spec.errors import InputError
    from stages.data.dense_formats import DenseFormatError, read_dense_detections, read_dense_ground_truth

    p = get_protocol(protocol)
    dataset = read_dense_ground_truth(ground_truth, classes)
    videos = dataset.videos("test", split)
    found = read_dense_detections(detections, dataset, split)
    frames, tubes = found.frames, found.tubes
    linked = False
    try:  # what the readers let through and the metrics refuse (a table's inverted box, ...) is still bad input
        if tubes is None and link is not None and frames is not None:
            test_rows = frames[frames["video"].astype(str).isin(set(videos))]
            if len(test_rows) < len(frames):
                logger.info(
                    "linking the %d detections of test videos (%d others left out)",
                    len(test_rows),
                    len(frames) - len(test_rows),
                )
            tubes, linked = link_tubes(test_rows, link, nframes=dataset.nframes), True
        frame = frame_map(dataset, frames, p, split) if frames is not None else None
        video = video_map(dataset, tubes, p, split) if tubes is not None else None
    except ValueError as e:
        if isinstance(e, InputError):
            raise
        raise DenseFormatError(", ".join(str(d) for d in detections), str(e)) from e

    def ap(result: DenseMapResult | None, thr: float, name: str) -> float | None:
        if result is None:
            return None
        return _finite(result.per_class.get(round(thr, 6), {}).get(name))

    scored = frame or video
    evaluated = set(next(iter(scored.per_class.values()))) if scored is not None else set()
    per_class = []
    for i, name in enumerate(dataset.labels):
        row: dict[str, Any] = {"label": i, "name": name, "evaluated": name in evaluated}
        if not row["evaluated"]:
            row["reason"] = "ignored by the protocol" if name in p.ignored_labels else "no ground truth"
        row["frame_ap@0.5"] = ap(frame, 0.5, name)
        for t in p.video_thresholds:
            row[f"video_ap@{_thr(t)}"] = ap(video, t, name)
        per_class.append(row)
    return {
        "protocol": p.name,
        "ground_truth": str(ground_truth),
        "split": split + 1,
        "test_videos": len(videos),
        "detections": list(found.formats),
        "frame_detections": None if frames is None else int(len(frames)),
        "tubes": None if tubes is None else len(tubes),
        "tubes_linked": linked,
        "frame_map": None
        if frame is None
        else {_thr(t): _finite(frame.per_threshold[round(t, 6)]) for t in p.frame_thresholds},
        "video_map": None
        if video is None
        else {_thr(t): _finite(video.per_threshold[round(t, 6)]) for t in p.video_thresholds},
        "video_map_ranges": None if video is None else {k: _finite(v) for k, v in video.ranges.items()},
        "per_class": per_class,
    }


def format_dense_report(report: Mapping[str, Any]) -> str:
    """The report of :func:`evaluate_dense_files` as a text table: AP per class, then each mAP."""

    def number(value: float | None) -> str:
        return f"{'-':>12}" if value is None else f"{value:12.6f}"

    video_keys = [k for k in report["per_class"][0] if k.startswith("video_ap@")] if report["per_class"] else []
    columns = (["frame_ap@0.5"] if report["frame_map"] is not None else []) + (
        video_keys if report["video_map"] is not None else []
    )
    name_width = max([len(c["name"]) for c in report["per_class"]] + [4])
    headers = [c.replace("_ap", " AP") for c in columns]
    widths = [max(14, len(h) + 2) for h in headers]
    lines = [
        f"protocol {report['protocol']}: {report['ground_truth']}, test split {report['split']} "
        f"({report['test_videos']} videos); values are fractions (the references print percentages)",
        *(f"  detections: {d}" for d in report["detections"]),
        "",
        f"{'label':>5}  {'name':<{name_width}}" + "".join(f"{h:>{w}}" for h, w in zip(headers, widths, strict=True)),
    ]
    for c in report["per_class"]:
        values = "".join(f"{number(c[k]):>{w}}" for k, w in zip(columns, widths, strict=True))
        note = "" if c["evaluated"] else f"  (not in the mean: {c['reason']})"
        lines.append(f"{c['label']:>5}  {c['name']:<{name_width}}{values}{note}")
    lines.append("")
    for t, value in (report["frame_map"] or {}).items():
        lines.append(f"{'frame-mAP@' + t:<20}{number(value)}")
    for t, value in (report["video_map"] or {}).items():
        lines.append(f"{'video-mAP@' + t:<20}{number(value)}")
    for name, value in (report["video_map_ranges"] or {}).items():
        lines.append(f"{'video-mAP@' + name:<20}{number(value)}")
    return "\n".join(lines)
