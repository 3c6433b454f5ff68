"""Class-agnostic person detection AP and recall on AVA keyframes (how good are the boxes extraction uses)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from stages.data.ava import BOX_COLUMNS
from stages.metrics.ava import voc_average_precision
from stages.metrics.boxes import iou_pairs


def _keyframe_codes(frames: Sequence[pd.DataFrame]) -> list[np.ndarray]:
    """One integer per (video_id, timestamp), shared across the frames (timestamps compared to the microsecond)."""
    keys = []
    for f in frames:
        micros = np.rint(pd.to_numeric(f["timestamp"]).to_numpy(dtype=np.float64) * 1e6).astype(np.int64)
        keys.append(f["video_id"].astype(str).to_numpy(dtype=object) + "@" + micros.astype(str).astype(object))
    codes, _ = pd.factorize(np.concatenate(keys) if keys else np.array([], dtype=object))
    bounds = np.cumsum([0] + [len(f) for f in frames])
    return [codes[bounds[i] : bounds[i + 1]].astype(np.int64) for i in range(len(frames))]


def _best_gt(
    det_key: np.ndarray, det_box: np.ndarray, gt_key: np.ndarray, gt_box: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per detection, its highest-IoU GT box in the same keyframe (first on ties) and that IoU; -1 / 0 if none.

    ``gt_key`` must be sorted. All (detection, same-keyframe GT) pairs are formed at once.
    """
    lo = np.searchsorted(gt_key, det_key, side="left")
    n_gt = np.searchsorted(gt_key, det_key, side="right") - lo
    best = np.full(len(det_key), -1, dtype=np.int64)
    best_iou = np.zeros(len(det_key), dtype=np.float64)
    has = np.flatnonzero(n_gt > 0)
    if has.size == 0:
        return best, best_iou
    counts = n_gt[has]
    pair_det = np.repeat(has, counts)
    seg = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pair_gt = lo[pair_det] + np.arange(len(pair_det)) - np.repeat(seg, counts)
    iou = iou_pairs(det_box[pair_det], gt_box[pair_gt])
    iou = np.where(iou > 0, iou, 0.0)  # an empty or inverted pair (union <= 0) overlaps nothing
    seg_max = np.maximum.reduceat(iou, seg)
    hit = np.flatnonzero(iou == np.repeat(seg_max, counts))
    first = hit[np.append(True, pair_det[hit][1:] != pair_det[hit][:-1])]
    best[has], best_iou[has] = pair_gt[first], seg_max
    return best, best_iou


def evaluate_detections(
    predicted: pd.DataFrame,
    groundtruth: pd.DataFrame,
    iou: float = 0.5,
    max_dets: int = 100,
    excluded: pd.DataFrame | None = None,
) -> dict[str, float]:
    """Class-agnostic person AP (VOC all-point) at ``iou`` and recall with at most ``max_dets`` boxes per keyframe.

    Ground truth: every distinct box of a keyframe is one actor (AVA repeats an actor's box once per action).
    Only keyframes present in the ground truth are evaluated (detections elsewhere are ignored); ``excluded``
    keyframes are dropped on both sides. Per keyframe the top ``max_dets`` detections by score are kept (for AP
    and recall alike; ``max_dets <= 0`` keeps all). Matching, VOC/AVA style: in descending score order each
    detection takes its highest-IoU actor (no +1 in areas); it is a true positive iff that IoU >= ``iou`` and no
    higher-scored detection took the actor already (no fallback to the second-best actor), so a duplicate is a
    false positive. Ties in score keep input order. Returns ``person_ap`` and ``person_ar`` (nan without ground
    truth) with the counts behind them.
    """
    need = ["video_id", "timestamp", *BOX_COLUMNS]
    for name, frame, cols in (("predicted", predicted, [*need, "score"]), ("groundtruth", groundtruth, need)):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} lacks columns {missing}")
    if excluded is None:
        excluded = pd.DataFrame({"video_id": pd.Series([], dtype=str), "timestamp": pd.Series([], dtype=np.int64)})
    g_key, d_key, x_key = _keyframe_codes([groundtruth, predicted, excluded])
    n_keys = int(max((k.max() + 1 for k in (g_key, d_key, x_key) if k.size), default=0))
    is_excluded = np.zeros(n_keys, dtype=bool)
    is_excluded[x_key] = True
    annotated = np.zeros(n_keys, dtype=bool)
    annotated[g_key[~is_excluded[g_key]]] = True

    g_box_all = groundtruth[BOX_COLUMNS].to_numpy(dtype=np.float64)
    gt = pd.DataFrame(g_box_all, columns=BOX_COLUMNS).assign(key=g_key)[annotated[g_key]].drop_duplicates()
    gt = gt.dropna(subset=BOX_COLUMNS)  # a video_id,timestamp row: an evaluated keyframe without actors
    gt = gt.sort_values("key", kind="stable")
    gt_key, gt_box = gt["key"].to_numpy(np.int64), gt[BOX_COLUMNS].to_numpy(np.float64)

    score_all = pd.to_numeric(predicted["score"]).to_numpy(dtype=np.float64)
    rows = np.flatnonzero(annotated[d_key])
    rows = rows[np.lexsort((rows, -score_all[rows], d_key[rows]))]  # keyframe, then score (desc), then input
    key, score = d_key[rows], score_all[rows]
    box = predicted[BOX_COLUMNS].to_numpy(dtype=np.float64)[rows]
    if np.isnan(score).any() or np.isnan(box).any() or np.isnan(gt_box).any():
        raise ValueError("boxes or scores contain NaN")
    new_key = np.append(True, key[1:] != key[:-1]) if key.size else np.array([], dtype=bool)
    starts = np.flatnonzero(new_key)
    rank = np.arange(len(key)) - np.repeat(starts, np.diff(np.append(starts, len(key))))
    if max_dets > 0:
        capped = rank < max_dets
        key, score, box = key[capped], score[capped], box[capped]

    best, best_iou = _best_gt(key, box, gt_key, gt_box)
    candidates = np.flatnonzero((best >= 0) & (best_iou >= iou))
    _, first_claim = np.unique(best[candidates], return_index=True)  # rows are in score order per keyframe
    tp = np.zeros(len(key), dtype=bool)
    tp[candidates[first_claim]] = True

    num_gt = len(gt_key)
    order = np.argsort(-score, kind="stable")
    cum_tp = np.cumsum(tp[order])
    if num_gt:
        precision = cum_tp / np.arange(1, len(order) + 1)
        ap = voc_average_precision(precision, cum_tp / num_gt)
        ar = float(tp.sum()) / num_gt
    else:
        ap = ar = float("nan")
    return {
        "person_ap": ap,
        "person_ar": ar,
        "num_gt": num_gt,
        "num_detections": len(key),
        "true_positives": int(tp.sum()),
        "keyframes": int(annotated.sum()),
        "iou": float(iou),
        "max_dets": int(max_dets),
    }
