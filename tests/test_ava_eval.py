"""AVA frame-mAP: hand-derived cases plus a property test against a plain per-keyframe loop.

The loop implementation below (``loop_frame_map``) transcribes the ActivityNet evaluator's semantics
keyframe by keyframe and class by class, with ``heapq`` for the per-keyframe cap, so that the vectorised
``frame_map`` can be checked on inputs full of ties.
"""

from __future__ import annotations

import heapq
import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeline.cli import app
from stages.data.ava import AvaFormatError
from stages.metrics.ava import _replay_heaps, evaluate_files, frame_map

GT_COLS = ["video_id", "timestamp", "x1", "y1", "x2", "y2", "action_id", "person_id"]
DET_COLS = ["video_id", "timestamp", "x1", "y1", "x2", "y2", "action_id", "score"]


def gt_df(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=GT_COLS[: len(rows[0])] if rows else GT_COLS)


def det_df(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=DET_COLS)


A = (0.0, 0.0, 0.5, 0.5)  # x1, y1, x2, y2
B = (0.5, 0.5, 1.0, 1.0)
FAR = (0.8, 0.0, 1.0, 0.2)  # no overlap with A or B


# --------------------------------------------------------------------------------------------------
# hand-derived cases


def test_perfect_detections_give_one():
    gt = gt_df([("v", 902, *A, 1, 0), ("v", 902, *B, 2, 1), ("v", 903, *A, 1, 0)])
    det = det_df([("v", 902, *A, 1, 0.9), ("v", 902, *B, 2, 0.3), ("v", 903, *A, 1, 0.2)])
    res = frame_map(gt, det, [1, 2])
    assert res.per_class_ap == {1: 1.0, 2: 1.0}
    assert res.mean_ap == 1.0


def test_duplicate_detection_of_one_box_is_false_positive():
    # class 1: GT A and B. Ranked: A@0.9 TP, A@0.8 FP (A taken), B@0.7 TP.
    # precision 1, 1/2, 2/3; recall 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    gt = gt_df([("v", 902, *A, 1, 0), ("v", 902, *B, 1, 1)])
    det = det_df([("v", 902, *A, 1, 0.9), ("v", 902, *A, 1, 0.8), ("v", 902, *B, 1, 0.7)])
    assert frame_map(gt, det, [1]).per_class_ap[1] == pytest.approx(5 / 6)


def test_no_fallback_to_second_best_box():
    # GT P=(0,0,1,.5) and Q=(0,0,1,.6), IoU(P,Q)=.833. d1=P@.9 -> TP on P.
    # d2=(0,0,1,.52)@.8: IoU .962 with P (taken), .867 with Q -> still FP (no fallback).
    # precision 1, 1/2; recall 1/2, 1/2 -> AP = 1/2
    gt = gt_df([("v", 902, 0, 0, 1, 0.5, 1, 0), ("v", 902, 0, 0, 1, 0.6, 1, 1)])
    det = det_df([("v", 902, 0, 0, 1, 0.5, 1, 0.9), ("v", 902, 0, 0, 1, 0.52, 1, 0.8)])
    assert frame_map(gt, det, [1]).per_class_ap[1] == pytest.approx(0.5)


def test_top_50_cap_drops_low_scores_before_matching():
    # 50 detections of class 2 (no GT: nan) outscore the only class-1 detection, which the cap drops:
    # class 1 then has GT but no detections -> AP 0. With room for 51 it is a perfect TP.
    gt = gt_df([("v", 902, *A, 1, 0)])
    rows = [("v", 902, *FAR, 2, 0.5 + i / 200) for i in range(50)] + [("v", 902, *A, 1, 0.1)]
    det = det_df(rows)
    res = frame_map(gt, det, [1, 2])
    assert res.per_class_ap[1] == 0.0 and math.isnan(res.per_class_ap[2])
    assert res.mean_ap == 0.0
    assert frame_map(gt, det, [1, 2], max_detections_per_keyframe=51).per_class_ap[1] == 1.0
    assert frame_map(gt, det, [1, 2], max_detections_per_keyframe=0).per_class_ap[1] == 1.0


def test_cap_counts_invalid_boxes_then_drops_them():
    # The reference caps first and removes boxes with x1 >= x2 afterwards: 50 invalid boxes with higher
    # scores push the TP out, then vanish themselves -> AP 0.
    gt = gt_df([("v", 902, *A, 1, 0)])
    rows = [("v", 902, 0.5, 0.0, 0.5, 0.5, 1, 0.9)] * 50 + [("v", 902, *A, 1, 0.1)]
    assert frame_map(gt, det_df(rows), [1]).per_class_ap[1] == 0.0
    # with the cap lifted the invalid boxes are simply ignored
    assert frame_map(gt, det_df(rows), [1], max_detections_per_keyframe=0).per_class_ap[1] == 1.0


def test_class_with_gt_but_no_detections_counts_as_zero():
    gt = gt_df([("v", 902, *A, 1, 0), ("v", 902, *B, 2, 1)])
    det = det_df([("v", 902, *A, 1, 0.9)])
    res = frame_map(gt, det, [1, 2])
    assert res.per_class_ap == {1: 1.0, 2: 0.0}
    assert res.mean_ap == 0.5


def test_class_with_detections_but_no_gt_is_nan_and_not_averaged():
    gt = gt_df([("v", 902, *A, 1, 0)])
    det = det_df([("v", 902, *A, 1, 0.9), ("v", 902, *B, 3, 0.95)])
    res = frame_map(gt, det, [1, 3])
    assert res.per_class_ap[1] == 1.0 and math.isnan(res.per_class_ap[3])
    assert res.mean_ap == 1.0


def test_classes_outside_label_map_are_ignored_everywhere():
    # class 99: its GT does not count, its detections neither score nor take slots in the top 50.
    gt = gt_df([("v", 902, *A, 1, 0), ("v", 902, *B, 99, 1)])
    rows = [("v", 902, *B, 99, 0.9)] * 60 + [("v", 902, *A, 1, 0.1)]
    res = frame_map(gt, det_df(rows), [1, 2])
    assert set(res.per_class_ap) == {1, 2}
    assert res.per_class_ap[1] == 1.0 and math.isnan(res.per_class_ap[2])


def test_excluded_keyframes_count_neither_way():
    # kf 903 holds an unmatched GT box and a high-scoring FP. Without exclusion, class 1 ranks
    # FP@.9, TP@.5 with 2 GT: precision 0, 1/2; recall 0, 1/2 -> AP = 1/2 * 1/2 = 1/4.
    gt = gt_df([("v", 902, *A, 1, 0), ("v", 903, *B, 1, 0)])
    det = det_df([("v", 902, *A, 1, 0.5), ("v", 903, *FAR, 1, 0.9)])
    assert frame_map(gt, det, [1]).per_class_ap[1] == pytest.approx(0.25)
    excluded = pd.DataFrame({"video_id": ["v"], "timestamp": [903]})
    assert frame_map(gt, det, [1], excluded=excluded).per_class_ap[1] == 1.0


def test_detections_on_keyframes_outside_groundtruth():
    # Reference (get_ava_performance.py): detections on keyframes absent from the GT file are ignored;
    # a keyframe present in the GT file only through a row outside the label map (or an empty row) is
    # evaluated, so its detections are false positives.
    gt = gt_df([("v", 902, *A, 1, 0)])
    det = det_df([("v", 902, *A, 1, 0.5), ("v", 904, *A, 1, 0.9)])
    assert frame_map(gt, det, [1]).per_class_ap[1] == 1.0
    # kf 904 now annotated with a class-99 row: FP@.9 then TP@.5 -> precision 0, 1/2; recall 0, 1 -> 1/2
    gt2 = gt_df([("v", 902, *A, 1, 0), ("v", 904, *B, 99, 0)])
    assert frame_map(gt2, det, [1]).per_class_ap[1] == pytest.approx(0.5)
    # the same with an "empty keyframe" row (video_id,timestamp only -> NaN action)
    gt3 = gt_df([("v", 902, *A, 1, 0), ("v", 904, *[np.nan] * 4, np.nan, np.nan)])
    assert frame_map(gt3, det, [1]).per_class_ap[1] == pytest.approx(0.5)


def test_iou_exactly_at_threshold_is_a_match():
    # det (0,0,1,.5) vs GT (0,0,1,1): intersection .5, union 1 -> IoU exactly .5 -> TP
    gt = gt_df([("v", 902, 0, 0, 1, 1, 1, 0)])
    assert frame_map(gt, det_df([("v", 902, 0, 0, 1, 0.5, 1, 0.9)]), [1]).per_class_ap[1] == 1.0
    # (0,0,1,.4): IoU .4 -> FP -> AP 0; and a threshold just above .5 rejects the exact-.5 box
    assert frame_map(gt, det_df([("v", 902, 0, 0, 1, 0.4, 1, 0.9)]), [1]).per_class_ap[1] == 0.0
    res = frame_map(gt, det_df([("v", 902, 0, 0, 1, 0.5, 1, 0.9)]), [1], iou_threshold=0.5000001)
    assert res.per_class_ap[1] == 0.0


def test_duplicate_gt_rows_are_separate_boxes():
    # Two identical GT rows = 2 GT; each detection's argmax is always the first copy, so the second
    # detection is a FP: ranked TP, FP with 2 GT -> precision 1, 1/2; recall 1/2, 1/2 -> AP 1/2.
    gt = gt_df([("v", 902, *A, 1, 0), ("v", 902, *A, 1, 0)])
    det = det_df([("v", 902, *A, 1, 0.9), ("v", 902, *A, 1, 0.8)])
    assert frame_map(gt, det, [1]).per_class_ap[1] == pytest.approx(0.5)


def test_gt_order_for_equal_iou_follows_person_id_descending():
    # Reference quirk: the 8th GT column (person_id) is read as a "score" and GT boxes are listed by
    # descending score, so argmax ties go to the higher person_id. P=(0,0,.6,.5), Q=(0,0,.5,.6);
    # d1=(0,0,.5,.5)@.9 has IoU .833 with both; d2=Q@.8.
    # P has pid 0, Q pid 1 -> d1 takes Q, d2 (argmax Q) is FP: TP, FP -> AP 1/2.
    # Swap pids -> d1 takes P, d2 takes Q: TP, TP -> AP 1.
    det = det_df([("v", 902, 0, 0, 0.5, 0.5, 1, 0.9), ("v", 902, 0, 0, 0.5, 0.6, 1, 0.8)])
    gt = gt_df([("v", 902, 0, 0, 0.6, 0.5, 1, 0), ("v", 902, 0, 0, 0.5, 0.6, 1, 1)])
    assert frame_map(gt, det, [1]).per_class_ap[1] == pytest.approx(0.5)
    gt_swapped = gt_df([("v", 902, 0, 0, 0.6, 0.5, 1, 1), ("v", 902, 0, 0, 0.5, 0.6, 1, 0)])
    assert frame_map(gt_swapped, det, [1]).per_class_ap[1] == 1.0


def test_categories_and_pr_curves():
    gt = gt_df([("v", 902, *A, 1, 0), ("v", 902, *B, 2, 1), ("v", 903, *A, 20, 0)])
    det = det_df([("v", 902, *A, 1, 0.9)] + [("v", 903, *A, 20, s / 1000) for s in range(1, 400)])
    cats = {1: "pose", 2: "pose", 20: "object", 70: "person"}
    res = frame_map(gt, det, [1, 2, 20, 70], categories=cats)
    assert res.per_category_map["pose"] == 0.5  # AP 1 and 0
    assert res.per_category_map["object"] == 1.0  # top-scoring one is the TP
    assert math.isnan(res.per_category_map["person"])
    curve = res.pr_curves[res.pr_curves.class_id == 20]
    assert len(curve) <= 200
    # endpoints kept: first point (1 TP of 1) and last (50 kept detections after the cap, 1 TP)
    assert curve.precision.iloc[0] == 1.0 and curve.recall.iloc[0] == 1.0
    assert curve.precision.iloc[-1] == pytest.approx(1 / 50)
    assert list(res.pr_curves.columns) == ["class_id", "precision", "recall"]


def test_empty_inputs():
    gt = gt_df([("v", 902, *A, 1, 0)])
    res = frame_map(gt, det_df([]), [1, 2])
    assert res.per_class_ap[1] == 0.0 and math.isnan(res.per_class_ap[2])
    assert res.pr_curves.empty
    res = frame_map(gt_df([]), det_df([("v", 902, *A, 1, 0.9)]), [1])
    assert math.isnan(res.mean_ap)
    with pytest.raises(ValueError):
        frame_map(gt, det_df([]), [])


# --------------------------------------------------------------------------------------------------
# plain loop implementation of the reference semantics


def _iou(d: tuple, g: tuple) -> float:
    """IoU of (y1, x1, y2, x2) boxes, same floating-point operations as the reference."""
    ih = max(0.0, min(d[2], g[2]) - max(d[0], g[0]))
    iw = max(0.0, min(d[3], g[3]) - max(d[1], g[1]))
    inter = ih * iw
    area_d = (d[2] - d[0]) * (d[3] - d[1])
    area_g = (g[2] - g[0]) * (g[3] - g[1])
    return inter / (area_d + area_g - inter)


def _voc_ap(precision: list[float], recall: list[float]) -> float:
    if not precision:
        return 0.0
    rec = [0.0, *recall, 1.0]
    prec = [0.0, *precision, 0.0]
    for i in range(len(prec) - 2, -1, -1):
        prec[i] = max(prec[i], prec[i + 1])
    steps = [i for i in range(1, len(rec)) if rec[i] != rec[i - 1]]
    return float(np.sum([(rec[i] - rec[i - 1]) * prec[i] for i in steps]))


def loop_frame_map(gt_rows, det_rows, class_ids, excluded=(), thr=0.5, cap=50) -> dict[int, float]:
    """Per-class AP, one keyframe and one class at a time (rows: GT_COLS / DET_COLS tuples)."""
    classes = set(class_ids)
    excluded = {(v, t) for v, t in excluded}
    annotated: set = set()
    gt_heaps: dict = defaultdict(list)
    for v, t, x1, y1, x2, y2, a, pid in gt_rows:
        if (v, t) in excluded:
            continue
        annotated.add((v, t))
        if a == a and a in classes:  # a == a: not NaN
            heapq.heappush(gt_heaps[(v, t)], (pid, a, y1, x1, y2, x2))
    num_gt = defaultdict(int)
    for heap in gt_heaps.values():
        for item in heap:
            num_gt[item[1]] += 1

    det_heaps: dict = {}
    for v, t, x1, y1, x2, y2, a, s in det_rows:
        if a not in classes:
            continue
        heap = det_heaps.setdefault((v, t), [])
        if cap < 1 or len(heap) < cap:
            heapq.heappush(heap, (s, a, y1, x1, y2, x2))
        elif s > heap[0][0]:
            heapq.heapreplace(heap, (s, a, y1, x1, y2, x2))

    scores: dict = defaultdict(list)
    labels: dict = defaultdict(list)
    for key, heap in det_heaps.items():
        if key in excluded or key not in annotated:
            continue
        dets = [d for d in sorted(heap, key=lambda d: -d[0]) if d[2] < d[4] and d[3] < d[5]]
        gts = sorted(gt_heaps.get(key, []), key=lambda g: -g[0])
        for c in sorted(classes):
            cg = [g[2:] for g in gts if g[1] == c]
            taken = [False] * len(cg)
            for d in (d for d in dets if d[1] == c):
                tp = False
                if cg:
                    ious = [_iou(d[2:], g) for g in cg]
                    j = ious.index(max(ious))
                    if ious[j] >= thr and not taken[j]:
                        taken[j] = tp = True
                scores[c].append(d[0])
                labels[c].append(tp)

    aps = {}
    for c in class_ids:
        if num_gt[c] == 0:
            aps[c] = float("nan")
            continue
        order = np.argsort(np.array(scores[c], dtype=float))[::-1]
        precision, recall, n_tp = [], [], 0
        for rank, i in enumerate(order, start=1):
            n_tp += labels[c][i]
            precision.append(n_tp / rank)
            recall.append(n_tp / num_gt[c])
        aps[c] = _voc_ap(precision, recall)
    return aps


def _assert_same(result: dict[int, float], expected: dict[int, float]) -> None:
    assert result.keys() == expected.keys()
    for c, e in expected.items():
        r = result[c]
        assert (math.isnan(r) and math.isnan(e)) or abs(r - e) < 1e-12, (c, r, e)


KEYS = [("a", 902), ("a", 903), ("b", 902), ("c", 905)]
COORD = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]) | st.floats(0, 1).map(lambda x: round(x, 2))
SCORE = st.sampled_from([0.5, 0.9]) | st.floats(0, 1).map(lambda x: round(x, 2))  # many ties


@st.composite
def gt_rows(draw):
    rows = []
    for _ in range(draw(st.integers(0, 14))):
        v, t = draw(st.sampled_from(KEYS))
        if draw(st.integers(0, 9)) == 0:
            rows.append((v, t, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan))  # empty keyframe row
            continue
        x1, y1 = draw(COORD), draw(COORD)
        x2, y2 = min(1.0, x1 + draw(COORD)), min(1.0, y1 + draw(COORD))
        row = (v, t, x1, y1, x2, y2, draw(st.integers(1, 4)), draw(st.integers(0, 2)))  # id 4: outside the map
        rows.append(row)
        if draw(st.booleans()) and draw(st.booleans()):
            rows.append(row)
    return rows


@st.composite
def det_rows(draw, gts):
    boxes = [r[2:6] for r in gts if r[6] == r[6]]
    rows = []
    for _ in range(draw(st.integers(0, 30))):
        v, t = draw(st.sampled_from(KEYS))
        if boxes and draw(st.booleans()):
            box = draw(st.sampled_from(boxes))
            if draw(st.booleans()):
                box = tuple(round(x + draw(st.sampled_from([-0.05, 0.0, 0.05])), 2) for x in box)
        else:
            box = (draw(COORD), draw(COORD), draw(COORD), draw(COORD))  # may be invalid
        rows.append((v, t, *box, draw(st.sampled_from([1, 1, 2, 3, 4])), draw(SCORE)))
    return rows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_matches_loop_implementation(data):
    gts = data.draw(gt_rows())
    dets = data.draw(det_rows(gts))
    excluded = data.draw(st.lists(st.sampled_from(KEYS), max_size=2))
    cap = data.draw(st.sampled_from([0, 2, 4, 50]))
    thr = data.draw(st.sampled_from([0.5, 0.3]))
    class_ids = [1, 2, 3]
    expected = loop_frame_map(gts, dets, class_ids, excluded, thr, cap)
    ex = pd.DataFrame(excluded, columns=["video_id", "timestamp"]) if excluded else None
    gt = pd.DataFrame(gts, columns=GT_COLS)
    result = frame_map(
        gt,
        det_df(dets),
        class_ids,
        excluded=ex,
        iou_threshold=thr,
        max_detections_per_keyframe=cap,
    )
    _assert_same(result.per_class_ap, expected)
    valid = [v for v in expected.values() if not math.isnan(v)]
    assert (math.isnan(result.mean_ap) and not valid) or result.mean_ap == pytest.approx(np.mean(valid))


def _prior_baseline(seed: int, n_kf: int, n_cls: int) -> tuple[list, list]:
    """Every person box scored for every class with the class prior: ties everywhere, > 50 per keyframe."""
    rng = np.random.default_rng(seed)
    prior = np.round(rng.dirichlet(np.ones(n_cls)), 3)
    gts, dets = [], []
    for k in range(n_kf):
        v, t = f"v{k // 10}", 900 + k % 10
        for pid in range(int(rng.integers(1, 7))):
            x, y = np.round(rng.random(2) * 0.5, 2)
            box = (x, y, round(x + 0.3, 2), round(y + 0.4, 2))
            for c in rng.choice(n_cls, int(rng.integers(1, 4)), replace=False):
                gts.append((v, t, *box, int(c) + 1, pid))
            jit = tuple(round(b + rng.normal(0, 0.03), 2) for b in box)
            dets.extend((v, t, *jit, c + 1, float(prior[c])) for c in range(n_cls))
    order = rng.permutation(len(dets))
    return gts, [dets[i] for i in order]


@pytest.mark.parametrize("seed", [0, 1])
def test_prior_baseline_ties_match_loop(seed):
    gts, dets = _prior_baseline(seed, n_kf=150, n_cls=15)
    ids = list(range(1, 16))
    result = frame_map(pd.DataFrame(gts, columns=GT_COLS), det_df(dets), ids)
    _assert_same(result.per_class_ap, loop_frame_map(gts, dets, ids))


class _RankOnly:
    """Heap item that compares like the reference's tuples: equal ranks are equal, not tie-broken."""

    def __init__(self, rank: int, row: int) -> None:
        self.rank, self.row = rank, row

    def __lt__(self, other: _RankOnly) -> bool:
        return self.rank < other.rank


@pytest.mark.parametrize("capacity", [0, 1, 5, 50])
def test_heap_replay_equals_heapq(capacity):
    rng = np.random.default_rng(capacity)
    n = 3000
    group = rng.integers(0, 40, n)
    score = rng.integers(0, 8, n).astype(float)  # heavy ties
    rank = score.astype(np.int64) * 4 + rng.integers(0, 4, n)  # tuple order: score first, then the rest
    kept, pos = _replay_heaps(group, rank, score, capacity)
    heaps: dict = defaultdict(list)
    for i in range(n):
        h = heaps[group[i]]
        if capacity < 1 or len(h) < capacity:
            heapq.heappush(h, _RankOnly(rank[i], i))
        elif score[i] > score[h[0].row]:
            heapq.heapreplace(h, _RankOnly(rank[i], i))
    assert kept.sum() == sum(len(h) for h in heaps.values())
    for g, h in heaps.items():
        rows = np.flatnonzero((group == g) & kept)
        assert rows[np.argsort(pos[rows])].tolist() == [item.row for item in h]


# --------------------------------------------------------------------------------------------------
# whole files, as the official evaluator reads them (readers + frame_map), and the `pipeline ava-eval` command

LABEL_MAP = 'item {\n  name: "stand"\n  id: 12\n}\nitem {\n  name: "carry/hold (an object)"\n  id: 17\n}\n'
LABEL_MAP += 'item {\n  name: "watch (a person)"\n  id: 80\n}\n'
A_TEXT, B_TEXT, FAR_TEXT = "0.0,0.0,0.5,0.5", "0.5,0.5,1.0,1.0", "0.8,0.0,1.0,0.2"


def _files(tmp_path, gt_lines: list[str], det_lines: list[str]) -> tuple:
    paths = tmp_path / "label_map.pbtxt", tmp_path / "gt.csv", tmp_path / "det.csv"
    paths[0].write_text(LABEL_MAP)
    paths[1].write_text("".join(f"{line}\n" for line in gt_lines))
    paths[2].write_text("".join(f"{line}\n" for line in det_lines))
    return paths


def _map(tmp_path, gt_lines: list[str], det_lines: list[str]) -> float:
    report = evaluate_files(*_files(tmp_path, gt_lines, det_lines))
    assert [c["id"] for c in report["per_class"]] == [12, 17, 80]
    return report["map"]


def test_file_keyframe_without_actors_scores_its_detections_as_false_positives(tmp_path):
    # 'v,0903' marks an annotated keyframe without actors. Class 12 has 1 GT box; ranked detections:
    # 0.9 on 0903 (FP), 0.5 on 0902 (TP) -> precision 0, 1/2; recall 0, 1 -> AP = 1 * 1/2 = 0.5.
    # Only class 12 has ground truth, so mAP = 0.5. Without the 0903 row, 0903 is not in the ground truth and
    # its detection is ignored: AP 1.
    det = [f"v,0902,{A_TEXT},12,0.5", f"v,0903,{A_TEXT},12,0.9"]
    assert _map(tmp_path, [f"v,0902,{A_TEXT},12,0", "v,0903"], det) == pytest.approx(0.5)
    assert _map(tmp_path, [f"v,0902,{A_TEXT},12,0"], det) == 1.0


def test_file_ids_outside_the_label_map_are_skipped(tmp_path, caplog):
    # GT ids 99 and 13 are not in the map: skipped (one warning per file). Keyframe 0904 is annotated only by a
    # skipped row, yet stays evaluated (the official all_keys holds it): its class-12 detection is a FP.
    # Detection of class 99 (0.95) is skipped, on 0905 (not in the GT) ignored. Class 12, 1 GT box:
    # ranked 0.9 FP (0904), 0.5 TP -> precision 0, 1/2; recall 0, 1 -> AP = 0.5 = mAP.
    gt = [f"v,0902,{A_TEXT},12,0", f"v,0902,{B_TEXT},99,1", f"v,0904,{B_TEXT},13,0"]
    det = [f"v,0902,{A_TEXT},12,0.5", f"v,0902,{B_TEXT},99,0.95", f"v,0904,{A_TEXT},12,0.9", f"v,0905,{A_TEXT},12,0.99"]
    with caplog.at_level("WARNING"):
        assert _map(tmp_path, gt, det) == pytest.approx(0.5)
    skipped = [r.getMessage() for r in caplog.records if "not in the label map" in r.getMessage()]
    assert len(skipped) == 2 and "skipped 2 rows" in skipped[0] and "(ids 13, 99)" in skipped[0]


def test_file_duplicate_groundtruth_rows_are_two_boxes(tmp_path):
    # The same row twice = 2 GT boxes of class 12; one perfect detection: precision 1 at recall 1/2 -> AP 1/2.
    gt = [f"v,0902,{A_TEXT},12,0"] * 2
    assert _map(tmp_path, gt, [f"v,0902,{A_TEXT},12,0.9"]) == pytest.approx(0.5)


def test_file_fractional_timestamps(tmp_path):
    # Keys are '%.6f' of the timestamp: 903.50 is keyframe 903.5, 902 is 0902, 903.4 is no GT keyframe (ignored).
    # Class 12, 2 GT boxes: ranked 0.9 TP (903.5), 0.3 TP (0902) -> AP 1. (Truncating to whole seconds would put
    # the 0.95 detection on keyframe 903 with the 0.9 one: TP, FP, TP -> AP 1/2 + 1/2 * 2/3 = 5/6.)
    gt = [f"v,903.5,{A_TEXT},12,0", f"v,0902,{B_TEXT},12,1"]
    det = [f"v,903.50,{A_TEXT},12,0.9", f"v,903.4,{A_TEXT},12,0.95", f"v,902,{B_TEXT},12,0.3"]
    assert _map(tmp_path, gt, det) == 1.0


def test_file_quoted_fields(tmp_path):
    # The ids-outside-the-map case with every field quoted (csv.reader unquotes them): the same AP 0.5.
    def quote(line: str) -> str:
        return ",".join(f'"{f}"' for f in line.split(","))

    gt = [f"v,0902,{A_TEXT},12,0", f"v,0904,{B_TEXT},13,0"]
    det = [f"v,0902,{A_TEXT},12,0.5", f"v,0904,{A_TEXT},12,0.9"]
    assert _map(tmp_path, [quote(x) for x in gt], [quote(x) for x in det]) == pytest.approx(0.5)


def test_file_seven_column_groundtruth_and_detections(tmp_path):
    # GT without person_id (7 fields): 2 boxes of class 12 on 0902. Detections: FAR@0.95 FP, A@0.9 TP, B@0.8 TP
    # -> precision 0, 1/2, 2/3; recall 0, 1/2, 1 -> AP = 1/2 * 2/3 + 1/2 * 2/3 = 2/3.
    gt = [f"v,0902,{A_TEXT},12", f"v,0902,{B_TEXT},12"]
    det = [f"v,0902,{FAR_TEXT},12,0.95", f"v,0902,{A_TEXT},12,0.9", f"v,0902,{B_TEXT},12,0.8"]
    assert _map(tmp_path, gt, det) == pytest.approx(2 / 3)
    # a 7-field detection scores 1.0: A (1.0) TP ranks above FAR@0.99 FP -> precision 1 at recall 1 -> AP 1
    gt = [f"v,0902,{A_TEXT},12,0"]
    assert _map(tmp_path, gt, [f"v,0902,{FAR_TEXT},12,0.99", f"v,0902,{A_TEXT},12"]) == 1.0


def test_file_detection_boxes_outside_the_frame_or_inverted(tmp_path):
    # (-0.01, -0.01, 0.5, 0.5) vs GT (0, 0, 0.5, 0.5): IoU = 0.25 / 0.2601 = 0.961 -> TP. The inverted box
    # (x1 = x2 = 0.5) at 0.95 is dropped after the cap and counts neither way -> AP 1.
    gt = [f"v,0902,{A_TEXT},12,0"]
    det = ["v,0902,-0.01,-0.01,0.5,0.5,12,0.9", "v,0902,0.5,0.0,0.5,0.5,12,0.95"]
    assert _map(tmp_path, gt, det) == 1.0
    # 50 inverted boxes above the TP fill the per-keyframe cap of 50, then are dropped: no detection left -> AP 0
    det = ["v,0902,0.5,0.0,0.4,0.5,12,0.99"] * 50 + [f"v,0902,{A_TEXT},12,0.9"]
    assert _map(tmp_path, gt, det) == 0.0


def test_ava_eval_command(tmp_path):
    # Case of test_file_ids_outside_the_label_map_are_skipped plus an excluded keyframe: excluding 0904 removes
    # its FP -> class 12 ranks 0.5 TP alone -> AP 1.
    gt = [f"v,0902,{A_TEXT},12,0", f"v,0904,{B_TEXT},13,0"]
    det = [f"v,0902,{A_TEXT},12,0.5", f"v,0904,{A_TEXT},12,0.9"]
    lm, g, d = (str(p) for p in _files(tmp_path, gt, det))
    runner = CliRunner()
    result = runner.invoke(app, ["ava-eval", "-l", lm, "-g", g, "-d", d])
    assert result.exit_code == 0, result.output
    assert "mAP@0.5IOU 0.500000" in result.output
    assert "  12  pose      stand" in result.output and "(no ground truth)" in result.output
    result = runner.invoke(app, ["ava-eval", "-l", lm, "-g", g, "-d", d, "--json"])
    report = json.loads(result.output[result.output.index("{") :])
    assert report["map"] == pytest.approx(0.5)
    assert report["per_class"][0] == {"id": 12, "name": "stand", "category": "pose", "ap": pytest.approx(0.5)}
    assert report["per_class"][1]["ap"] is None and report["per_category"]["person"] is None
    excluded = tmp_path / "excluded.csv"
    excluded.write_text("v,0904\n")
    result = runner.invoke(app, ["ava-eval", "-l", lm, "-g", g, "-d", d, "-e", str(excluded), "--json"])
    assert json.loads(result.output[result.output.index("{") :])["map"] == 1.0
    # a malformed row is an input error naming file and line
    Path(d).write_text(f"v,0902,{A_TEXT},12,0.5\nv,0902,{A_TEXT},12,high\n")
    result = runner.invoke(app, ["ava-eval", "-l", lm, "-g", g, "-d", d])
    assert isinstance(result.exception, AvaFormatError)
    assert str(result.exception).startswith(f"{d}:2: non-numeric score 'high'")


def test_ava_eval_imports_no_torch(tmp_path):
    lm, g, d = (str(p) for p in _files(tmp_path, [f"v,0902,{A_TEXT},12,0"], [f"v,0902,{A_TEXT},12,0.5"]))
    code = (
        "import sys; from pipeline.cli import app; "
        f"app(['ava-eval', '-l', {lm!r}, '-g', {g!r}, '-d', {d!r}], standalone_mode=False); "
        "print(sorted(m for m in ('torch', 'torchvision', 'zarr') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _row_text(row: tuple, quoted: bool) -> str:
    fields = [str(f) for f in row]
    return ",".join(f'"{f}"' for f in fields) if quoted else ",".join(fields)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_files_match_loop_implementation(tmp_path_factory, data):
    # Random files in every accepted form (2/7/8-field GT rows, ids outside the map, duplicates, fractional and
    # zero-padded timestamps, 7-field detections, boxes outside [0, 1] or inverted, quoting) against the loop.
    # The reader refuses empty GT boxes (x1 == x2) of the map's classes (the official evaluator would score them as
    # boxes nothing matches), so the rows here leave them out; rows of id 4 (outside the map) are never checked.
    gts = [r for r in data.draw(gt_rows()) if r[6] != r[6] or r[6] == 4 or (r[2] < r[4] and r[3] < r[5])]
    dets = data.draw(det_rows(gts))
    class_ids = [1, 2, 3]
    frac = data.draw(st.booleans())
    quoted = data.draw(st.booleans())

    def t_text(t: int) -> str:
        return f"{t + 0.5}" if frac else f"{t:04d}"

    gt_lines, gt_loop = [], []
    for v, t, x1, y1, x2, y2, a, pid in gts:
        if a != a:
            gt_lines.append(_row_text((v, t_text(t)), quoted))
            gt_loop.append((v, t, x1, y1, x2, y2, a, pid))
        elif a == 4 or data.draw(st.booleans()):
            gt_lines.append(_row_text((v, t_text(t), x1, y1, x2, y2, a, pid), quoted))
            gt_loop.append((v, t, x1, y1, x2, y2, a, pid))
        else:  # 7 fields: the official evaluator's score is then 1.0
            gt_lines.append(_row_text((v, t_text(t), x1, y1, x2, y2, a), quoted))
            gt_loop.append((v, t, x1, y1, x2, y2, a, 1.0))
    det_lines, det_loop = [], []
    for v, t, *box, a, s in dets:
        shifted = [round(b - 0.02, 2) if b == 0.0 else b for b in box]  # some boxes reach outside [0, 1]
        if data.draw(st.integers(0, 2)) == 0:  # 7 fields: score 1.0
            det_lines.append(_row_text((v, t_text(t), *shifted, a), quoted))
            det_loop.append((v, t, *shifted, a, 1.0))
        else:
            det_lines.append(_row_text((v, t_text(t), *shifted, a, s), quoted))
            det_loop.append((v, t, *shifted, a, s))
    tmp = tmp_path_factory.mktemp("files")
    lm = tmp / "lm.pbtxt"
    lm.write_text("".join(f'item {{\n  name: "c{i}"\n  id: {i}\n}}\n' for i in class_ids))
    (tmp / "gt.csv").write_text("".join(f"{x}\n" for x in gt_lines))
    (tmp / "det.csv").write_text("".join(f"{x}\n" for x in det_lines))
    report = evaluate_files(lm, tmp / "gt.csv", tmp / "det.csv")
    expected = loop_frame_map(gt_loop, det_loop, class_ids)
    _assert_same({c["id"]: (math.nan if c["ap"] is None else c["ap"]) for c in report["per_class"]}, expected)
