"""AVA frame-mAP@0.5 with the ActivityNet challenge evaluator's semantics, vectorised in numpy.

The reference (``activitynet/ActivityNet``, ``Evaluation/get_ava_performance.py`` plus its
``ava/object_detection_evaluation.py``, ``per_image_evaluation.py`` and ``metrics.py``) loops over
keyframes in Python and takes minutes on AVA v2.2 val; this module gives the same numbers in seconds.
Rules reproduced, each of them observable in the reference:

* Only classes in ``class_ids`` (the label map) are read, for ground truth and detections alike.
* A keyframe is evaluated iff it appears in the ground truth, whatever its rows say: a keyframe whose
  ground-truth rows are all outside the label map (or "empty" rows with no action, which the reference
  CSV writes as ``video_id,timestamp``) still scores its detections, all as false positives.
  Detections on keyframes absent from the ground truth are ignored. Excluded keyframes (the older
  reference's exclusion file) are dropped from both sides first.
* Per keyframe, at most ``max_detections_per_keyframe`` detections over all classes are kept. The
  reference pushes ``(score, action_id, y1, x1, y2, x2)`` tuples through a size-capped ``heapq`` in file
  order and replaces the heap's smallest tuple only on a strictly higher score, then sorts the heap
  array stably by descending score. Tie order therefore depends on the heap's internal layout, which
  this module reproduces by simulating ``heapq`` for every keyframe that has tied scores (all keyframes
  at once, one vectorised step per row rank). The same applies to ground-truth rows (no cap), whose
  "score" is the 8th CSV column, i.e. ``person_id``, when present: it orders ground-truth boxes and so
  decides ``argmax`` ties between equally overlapping boxes.
* Detection boxes with ``y1 >= y2`` or ``x1 >= x2`` are dropped after the cap (they still take a slot).
* Per keyframe and class, detections in that order each take their highest-IoU ground-truth box
  (first one on ties); a detection is a true positive iff that IoU >= the threshold and no earlier
  detection took the box. There is no fallback to the second-best box. IoU has no +1 in areas.
  Duplicate ground-truth rows are separate boxes (the second copy can never be matched).
* Per class, scores are concatenated keyframe by keyframe (keyframes in order of their first detection
  row) and ranked with ``np.argsort(scores)[::-1]``, so ties are broken exactly as the reference does
  on the same machine. AP is PASCAL VOC all-point AP; a class with ground truth but no detections has
  AP 0, a class without ground truth has AP nan and is left out of the mean.

:func:`evaluate_files` does the reference script's whole job (label map, ground-truth and detection CSVs in,
per-class AP and mAP out) with readers that accept what the reference accepts; ``pipeline ava-eval`` prints it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.data.ava import read_annotations, read_detections, read_excluded_timestamps, read_label_map
from stages.metrics.boxes import iou_pairs

logger = logging.getLogger(__name__)

BOX_COLUMNS = ("x1", "y1", "x2", "y2")
MAX_PR_POINTS = 200


@dataclass(frozen=True)
class FrameMapResult:
    """Frame-level AP per class, per category and overall, plus precision-recall curves."""

    mean_ap: float
    per_class_ap: dict[int, float]
    per_category_map: dict[str, float]
    pr_curves: pd.DataFrame


# --------------------------------------------------------------------------------------------------
# keyframe keys


def _timestamp_micros(ts: pd.Series) -> np.ndarray:
    """Timestamps as integer microseconds: the reference keys frames on ``'%.6f' % timestamp``."""
    if pd.api.types.is_integer_dtype(ts.dtype):
        return ts.to_numpy(dtype=np.int64) * 1_000_000
    values = _floats(ts)
    return np.rint(values * 1e6).astype(np.int64)


def _floats(column: pd.Series) -> np.ndarray:
    """A numeric column as float64, missing values (NaN, NA of the nullable dtypes) as NaN."""
    return pd.to_numeric(column).to_numpy(dtype=np.float64, na_value=np.nan)


def _frame_codes(frames: Sequence[pd.DataFrame]) -> list[np.ndarray]:
    """One integer code per (video_id, timestamp), shared by all the given frames.

    Video ids are factorised frame by frame and only the (few) distinct ids are merged: no copy of the id column.
    """
    per_frame = [pd.factorize(f["video_id"].astype(str)) for f in frames]
    uniques = [np.asarray(u, dtype=object) for _, u in per_frame]
    merged, _ = pd.factorize(np.concatenate(uniques))
    offsets = np.cumsum([0] + [len(u) for u in uniques])
    vcode = np.concatenate([merged[offsets[i] : offsets[i + 1]][c] for i, (c, _) in enumerate(per_frame)])
    ts = np.concatenate([_timestamp_micros(f["timestamp"]) for f in frames]).astype(np.int64)
    order = np.lexsort((ts, vcode))
    new = np.ones(len(order), dtype=bool)
    new[1:] = (vcode[order][1:] != vcode[order][:-1]) | (ts[order][1:] != ts[order][:-1])
    codes = np.empty(len(order), dtype=np.int64)
    codes[order] = np.cumsum(new) - 1
    bounds = np.cumsum([0] + [len(f) for f in frames])
    return [codes[bounds[i] : bounds[i + 1]] for i in range(len(frames))]


# --------------------------------------------------------------------------------------------------
# heapq replay: which rows survive the per-keyframe cap and in which order the reference lists them


def _dense_rank(keys: Sequence[np.ndarray]) -> np.ndarray:
    """Dense rank of row tuples (first key most significant), so tuple '<' becomes integer '<'."""
    n = len(keys[0])
    order = np.lexsort(tuple(reversed(keys)))
    new = np.zeros(n, dtype=bool)
    if n:
        new[0] = True
        for k in keys:
            ks = k[order]
            new[1:] |= ks[1:] != ks[:-1]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.cumsum(new)
    return rank


def _sift_to_root(
    heap: np.ndarray,
    base: np.ndarray,
    pos: np.ndarray,
    item: np.ndarray,
    rank: np.ndarray,
) -> None:
    """``heapq._siftdown(heap, 0, pos)`` for many heaps at once (one per entry of ``base``)."""
    pos = pos.copy()
    item_rank = rank[item]
    act = np.arange(len(pos))
    while act.size:
        act = act[pos[act] > 0]
        p = pos[act]
        parent = (p - 1) >> 1
        prow = heap[base[act] + parent]
        less = item_rank[act] < rank[prow]
        act, p, parent, prow = act[less], p[less], parent[less], prow[less]
        heap[base[act] + p] = prow
        pos[act] = parent
    heap[base + pos] = item


def _replace_root(
    heap: np.ndarray,
    base: np.ndarray,
    size: np.ndarray,
    item: np.ndarray,
    rank: np.ndarray,
) -> None:
    """``heapq.heapreplace`` (bottom-up ``_siftup`` then ``_siftdown``) for many heaps at once."""
    pos = np.zeros(len(base), dtype=np.int64)
    act = np.arange(len(base))
    while act.size:
        child = 2 * pos[act] + 1
        keep = child < size[act]
        act, child = act[keep], child[keep]
        right = child + 1
        has_right = right < size[act]
        left_row = heap[base[act] + child]
        right_row = heap[base[act] + np.where(has_right, right, child)]
        child = np.where(has_right & ~(rank[left_row] < rank[right_row]), right, child)
        heap[base[act] + pos[act]] = heap[base[act] + child]
        pos[act] = child
    _sift_to_root(heap, base, pos, item, rank)


def _replay_heaps(
    group: np.ndarray, rank: np.ndarray, score: np.ndarray, capacity: int
) -> tuple[np.ndarray, np.ndarray]:
    """Replay the reference's per-keyframe heap over rows in file order.

    Returns (kept, heap position) per row; one loop step per row rank within a keyframe, all keyframes
    advanced together.
    """
    n = len(group)
    kept = np.zeros(n, dtype=bool)
    hpos = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return kept, hpos
    order = np.argsort(group, kind="stable")
    _, start, count = np.unique(group[order], return_index=True, return_counts=True)
    by_count = np.argsort(-count, kind="stable")  # active heaps of round j are then a prefix
    start, count = start[by_count], count[by_count]
    slots = count if capacity <= 0 else np.minimum(count, capacity)
    base = np.concatenate([[0], np.cumsum(slots)[:-1]]).astype(np.int64)
    heap = np.full(int(slots.sum()), -1, dtype=np.int64)
    size = np.zeros(len(count), dtype=np.int64)
    n_active = np.searchsorted(-count, -np.arange(int(count[0])), side="left")  # count > j
    for j, k in enumerate(n_active):
        item = order[start[:k] + j]
        full = size[:k] >= capacity if capacity > 0 else np.zeros(k, dtype=bool)
        push = np.flatnonzero(~full)
        _sift_to_root(heap, base[push], size[push], item[push], rank)
        size[push] += 1
        if capacity > 0 and full.any():
            fidx = np.flatnonzero(full)
            higher = score[item[fidx]] > score[heap[base[fidx]]]
            rep = fidx[higher]
            _replace_root(heap, base[rep], size[rep], item[rep], rank)
    slot_heap = np.repeat(np.arange(len(count)), slots)
    slot_pos = np.arange(len(heap)) - base[slot_heap]
    valid = slot_pos < size[slot_heap]
    rows = heap[valid]
    kept[rows] = True
    hpos[rows] = slot_pos[valid]
    return kept, hpos


def _cap_and_order(
    group: np.ndarray, score: np.ndarray, tuple_keys: Sequence[np.ndarray], capacity: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows kept by the reference's per-keyframe heap and a tie-break key for its listing order.

    Keyframes without tied scores need no replay: the heap keeps the top ``capacity`` scores and the
    listing is by descending score. Keyframes with ties are replayed exactly.
    """
    n = len(group)
    order = np.lexsort((-score, group))
    gs, ss = group[order], score[order]
    same_group = np.zeros(n, dtype=bool)
    same_group[1:] = gs[1:] == gs[:-1]
    first = np.flatnonzero(~same_group)
    rank_in_group = np.arange(n) - np.repeat(first, np.diff(np.append(first, n)))
    kept = np.empty(n, dtype=bool)
    kept[order] = rank_in_group < capacity if capacity > 0 else True
    hpos = np.zeros(n, dtype=np.int64)

    tied = same_group & np.append(False, ss[1:] == ss[:-1])
    replay = np.isin(group, np.unique(gs[tied]))
    if replay.any():
        rows = np.flatnonzero(replay)
        rank = _dense_rank([k[rows] for k in tuple_keys])
        k_sub, p_sub = _replay_heaps(group[rows], rank, score[rows], capacity)
        kept[rows] = k_sub
        hpos[rows] = p_sub
        logger.debug("replayed heapq for %d keyframes with tied scores", len(np.unique(group[rows])))
    return kept, hpos


# --------------------------------------------------------------------------------------------------
# matching and AP


def _match(
    det_key: np.ndarray, det_box: np.ndarray, gt_key: np.ndarray, gt_box: np.ndarray, threshold: float
) -> np.ndarray:
    """True-positive flags for detections given in matching order; ``gt_key`` must be sorted.

    Each detection only ever looks at its argmax-IoU box, so "the first detection in order to claim a
    box wins" equals the reference's sequential loop.
    """
    n = len(det_key)
    lo = np.searchsorted(gt_key, det_key, side="left")
    hi = np.searchsorted(gt_key, det_key, side="right")
    n_gt = hi - lo
    has = np.flatnonzero(n_gt > 0)
    tp = np.zeros(n, dtype=bool)
    if has.size == 0:
        return tp
    counts = n_gt[has]
    pair_det = np.repeat(has, counts)
    seg_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pair_gt = lo[pair_det] + np.arange(len(pair_det)) - np.repeat(seg_start, counts)
    iou = iou_pairs(det_box[pair_det], gt_box[pair_gt])  # [y1, x1, y2, x2] as the reference
    best = np.maximum.reduceat(iou, seg_start)
    hit = np.flatnonzero(iou == np.repeat(best, counts))
    first_hit = hit[np.append(True, pair_det[hit][1:] != pair_det[hit][:-1])]
    best_gt = pair_gt[first_hit]  # one per entry of `has`, in order
    cand = best >= threshold
    cand_det, cand_gt = has[cand], best_gt[cand]
    _, first_claim = np.unique(cand_gt, return_index=True)
    tp[cand_det[first_claim]] = True
    return tp


def _precision_recall(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative precision/recall in the reference's rank order (``argsort`` reversed, ties included)."""
    order = np.argsort(np.ascontiguousarray(scores))[::-1]
    tp_sorted = tp[order].astype(int)
    cum_tp = np.cumsum(tp_sorted)
    cum_fp = np.cumsum(1 - tp_sorted)
    precision = cum_tp.astype(float) / (cum_tp + cum_fp)
    recall = cum_tp.astype(float) / num_gt
    return precision, recall


def voc_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """PASCAL VOC all-point AP: area under the precision envelope; 0 when there are no detections."""
    if precision.size == 0:
        return 0.0
    rec = np.concatenate([[0.0], recall, [1.0]])
    prec = np.concatenate([[0.0], precision, [0.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    idx = np.flatnonzero(rec[1:] != rec[:-1]) + 1
    return float(np.sum((rec[idx] - rec[idx - 1]) * prec[idx]))


def _mean_ap(ids: np.ndarray, aps: np.ndarray) -> float:
    """Mean over classes with ground truth; summed like the reference's ``np.nanmean`` over ids 1..max."""
    if np.isnan(aps).all():
        return float("nan")
    if ids[0] >= 1 and ids[-1] <= 1_000_000:
        full = np.full(int(ids[-1]), np.nan)
        full[ids - 1] = aps
        return float(np.nanmean(full))
    return float(np.mean(aps[~np.isnan(aps)]))


def _downsample(n: int, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` evenly spread points, first and last included."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.rint(np.linspace(0, n - 1, max_points)).astype(np.int64))


# --------------------------------------------------------------------------------------------------
# public entry point


def _require(df: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}")


def frame_map(
    groundtruth: pd.DataFrame,
    detections: pd.DataFrame,
    class_ids: Sequence[int],
    categories: Mapping[int, str] | None = None,
    excluded: pd.DataFrame | None = None,
    iou_threshold: float = 0.5,
    max_detections_per_keyframe: int = 50,
) -> FrameMapResult:
    """AVA frame-mAP with the ActivityNet evaluator's semantics (see the module docstring).

    ``groundtruth``: video_id, timestamp, x1, y1, x2, y2, action_id, optional person_id. Rows whose
    action_id is missing (NaN) only mark the keyframe as annotated. ``detections``: the same box columns,
    action_id and score. Coordinates are normalised corners, as in the AVA CSVs. ``excluded``: video_id,
    timestamp of keyframes to ignore on both sides. ``max_detections_per_keyframe`` <= 0 disables the cap.
    Row order matters only for exact tie-breaking, as in the reference (keep CSV order).
    """
    cols = ("video_id", "timestamp", *BOX_COLUMNS, "action_id")
    _require(groundtruth, cols, "groundtruth")
    _require(detections, (*cols, "score"), "detections")
    ids = np.unique(np.asarray(list(class_ids), dtype=np.int64))
    if ids.size == 0:
        raise ValueError("class_ids is empty")
    if excluded is None:
        excluded = pd.DataFrame(
            {
                "video_id": pd.Series([], dtype=str),
                "timestamp": pd.Series([], dtype=float),
            }
        )
    _require(excluded, ("video_id", "timestamp"), "excluded")

    gt_frame, det_frame, ex_frame = _frame_codes([groundtruth, detections, excluded])
    n_frames = int(max([c.max() + 1 for c in (gt_frame, det_frame, ex_frame) if c.size], default=0))
    is_excluded = np.zeros(n_frames, dtype=bool)
    is_excluded[ex_frame] = True
    annotated = np.zeros(n_frames, dtype=bool)
    annotated[gt_frame[~is_excluded[gt_frame]]] = True

    # ground truth: whitelisted, non-excluded rows
    gt_action = _floats(groundtruth["action_id"])
    g_rows = np.flatnonzero(np.isin(gt_action, ids) & annotated[gt_frame])
    g_cls = np.searchsorted(ids, gt_action[g_rows].astype(np.int64))
    g_img = gt_frame[g_rows]
    g_box = groundtruth[["y1", "x1", "y2", "x2"]].to_numpy(dtype=np.float64, na_value=np.nan)[g_rows]
    if "person_id" in groundtruth.columns:
        g_score = _floats(groundtruth["person_id"])[g_rows]
        g_score = np.where(np.isnan(g_score), 1.0, g_score)
    else:
        g_score = np.ones(len(g_rows))
    if np.isnan(g_box).any():
        raise ValueError("ground-truth boxes contain NaN")
    if ((g_box[:, 0] > g_box[:, 2]) | (g_box[:, 1] > g_box[:, 3])).any():
        raise ValueError("ground-truth boxes need x1 <= x2 and y1 <= y2 (the reference rejects them too)")
    num_gt = np.bincount(g_cls, minlength=len(ids))

    # detections: whitelisted rows on annotated, non-excluded keyframes
    det_action = _floats(detections["action_id"])
    d_rows = np.flatnonzero(np.isin(det_action, ids) & annotated[det_frame])
    d_cls = np.searchsorted(ids, det_action[d_rows].astype(np.int64))
    d_img = det_frame[d_rows]
    d_box = detections[["y1", "x1", "y2", "x2"]].to_numpy(dtype=np.float64, na_value=np.nan)[d_rows]
    d_score = _floats(detections["score"])[d_rows]
    if np.isnan(d_score).any() or np.isnan(d_box).any():
        raise ValueError("detections contain NaN scores or coordinates")
    logger.debug("frame_map: %d gt boxes, %d detections on annotated keyframes", len(g_rows), len(d_rows))

    # reference order: ground truth per keyframe by (-person_id, heap position)
    _, g_hpos = _cap_and_order(g_img, g_score, [g_score, g_cls, *g_box.T], 0)
    g_key = g_cls.astype(np.int64) * n_frames + g_img
    g_order = np.lexsort((g_hpos, -g_score, g_key))
    g_key, g_box = g_key[g_order], g_box[g_order]

    # detections: cap per keyframe, drop invalid boxes, then keyframes by first appearance
    kept, d_hpos = _cap_and_order(d_img, d_score, [d_score, d_cls, *d_box.T], max_detections_per_keyframe)
    kept &= (d_box[:, 0] < d_box[:, 2]) & (d_box[:, 1] < d_box[:, 3])
    first_seen = np.full(n_frames, len(d_img), dtype=np.int64)
    np.minimum.at(first_seen, d_img, np.arange(len(d_img)))
    sel = np.flatnonzero(kept)
    d_order = sel[np.lexsort((d_hpos[sel], -d_score[sel], first_seen[d_img[sel]], d_cls[sel]))]
    d_cls, d_img, d_box, d_score = d_cls[d_order], d_img[d_order], d_box[d_order], d_score[d_order]
    d_key = d_cls.astype(np.int64) * n_frames + d_img

    tp = _match(d_key, d_box, g_key, g_box, iou_threshold)

    per_class_ap: dict[int, float] = {}
    curves: list[pd.DataFrame] = []
    bounds = np.searchsorted(d_cls, np.arange(len(ids) + 1))
    for c, class_id in enumerate(ids.tolist()):
        if num_gt[c] == 0:
            per_class_ap[class_id] = float("nan")
            continue
        lo, hi = bounds[c], bounds[c + 1]
        precision, recall = _precision_recall(d_score[lo:hi], tp[lo:hi], int(num_gt[c]))
        per_class_ap[class_id] = voc_average_precision(precision, recall)
        if precision.size:
            keep = _downsample(precision.size, MAX_PR_POINTS)
            curves.append(
                pd.DataFrame(
                    {"class_id": class_id, "precision": precision[keep], "recall": recall[keep]},
                )
            )

    mean_ap = _mean_ap(ids, np.array(list(per_class_ap.values()), dtype=np.float64))

    per_category: dict[str, float] = {}
    if categories is not None:
        for name in dict.fromkeys(categories.values()):
            vals = [per_class_ap[i] for i in per_class_ap if categories.get(i) == name]
            vals = [v for v in vals if not np.isnan(v)]
            per_category[name] = float(np.mean(vals)) if vals else float("nan")

    pr = (
        pd.concat(curves, ignore_index=True)
        if curves
        else pd.DataFrame({"class_id": pd.Series([], dtype=np.int64), "precision": [], "recall": []})
    )
    return FrameMapResult(mean_ap, per_class_ap, per_category, pr)


# --------------------------------------------------------------------------------------------------
# files in, report out: the ActivityNet script's job (``pipeline ava-eval``)


def evaluate_files(
    label_map: str | Path,
    groundtruth: str | Path,
    detections: str | Path,
    excluded: str | Path | None = None,
) -> dict[str, Any]:
    """Score an AVA detection CSV as ``get_ava_performance.py -l -g -d [-e]`` does; a JSON-ready report.

    The readers accept what the ActivityNet evaluator accepts (see ``stages.data.ava``); ``excluded`` is the older
    evaluator's ``-e`` file. Returns ``map`` (the reference's ``PascalBoxes_Precision/mAP@0.5IOU``), ``per_class``
    (id, name, category, ap; ap None without ground truth), ``per_category`` and the input paths.
    """
    labels = read_label_map(label_map)
    gt = read_annotations(groundtruth, labels)
    det = read_detections(detections, labels)
    ex = read_excluded_timestamps(excluded) if excluded is not None else None
    result = frame_map(gt, det, labels.ids, labels.categories, ex)
    logger.info("%s: %d ground-truth rows, %d detections in the label map's classes", groundtruth, len(gt), len(det))

    def finite(value: float) -> float | None:
        return None if np.isnan(value) else float(value)

    return {
        "map": finite(result.mean_ap),
        "iou_threshold": 0.5,
        "per_category": {c: finite(v) for c, v in result.per_category_map.items()},
        "per_class": [
            {"id": i, "name": labels.names[i], "category": labels.categories[i], "ap": finite(ap)}
            for i, ap in result.per_class_ap.items()
        ],
        "label_map": str(label_map),
        "groundtruth": str(groundtruth),
        "detections": str(detections),
        "excluded": None if excluded is None else str(excluded),
    }


def format_report(report: Mapping[str, Any]) -> str:
    """The report of :func:`evaluate_files` as a text table: AP per class, mAP per category, then the mAP."""

    def number(value: float | None) -> str:
        return f"{'-':>8}" if value is None else f"{value:.6f}"

    name_width = max([len(c["name"]) for c in report["per_class"]] + [4])
    lines = [f"{'id':>4}  {'category':<8}  {'name':<{name_width}}  AP@{report['iou_threshold']}"]
    for c in report["per_class"]:
        note = "" if c["ap"] is not None else "  (no ground truth)"
        lines.append(f"{c['id']:>4}  {c['category']:<8}  {c['name']:<{name_width}}  {number(c['ap'])}{note}")
    lines.append("")
    for category, value in report["per_category"].items():
        lines.append(f"mAP {category:<8} {number(value)}")
    lines.append(f"mAP@{report['iou_threshold']}IOU {number(report['map'])}")
    return "\n".join(lines)
