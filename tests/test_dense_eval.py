"""Dense frame-/video-mAP: hand-derived cases per protocol, plus property tests against plain loops.

The loops below (``loop_frame_map``, ``loop_video_map``) transcribe the two evaluators' rules detection by
detection, ground truth by ground truth, so the vectorised code can be checked on inputs full of ties.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages.data.act import DenseDataset, dense_dataset_from_dict
from stages.metrics.dense import (
    PROTOCOLS,
    average_precision,
    default_protocol,
    frame_map,
    get_protocol,
    nms3d,
    tube_iou,
    video_map,
)
from stages.metrics.tubes import DETECTION_COLUMNS, Tube

BOX = (0.0, 0.0, 10.0, 10.0)
FAR = (20.0, 20.0, 40.0, 40.0)


def tube_rows(first: int, last: int, box=BOX, skip: tuple[int, ...] = ()) -> np.ndarray:
    frames = [f for f in range(first, last + 1) if f not in skip]
    return np.array([[f, *box] for f in frames], dtype=np.float64)


def make_ds(gttubes: dict, labels=("a", "b"), test=None, nframes: int = 20) -> DenseDataset:
    videos = sorted(gttubes)
    test = videos if test is None else test
    return dense_dataset_from_dict(
        {
            "labels": list(labels),
            "train_videos": [[v for v in videos if v not in test]],
            "test_videos": [list(test)],
            "nframes": {v: nframes for v in videos},
            "resolution": {v: (100, 100) for v in videos},
            "gttubes": gttubes,
        }
    )


def fdets(rows: list[tuple]) -> pd.DataFrame:
    """Rows (video, frame, x1, y1, x2, y2, label, score)."""
    return pd.DataFrame(rows, columns=DETECTION_COLUMNS)


def tube(video: str, label: int, score: float, rows: np.ndarray) -> Tube:
    return Tube(video, label, score, np.column_stack([rows, np.full(len(rows), 0.5)]))


# ----------------------------------------------------------------------------------------------- protocols


def test_default_protocol() -> None:
    assert default_protocol("MultiSports") == "multisports"
    assert default_protocol("UCF101-24") == default_protocol("ucf24") == default_protocol("JHMDB-21") == "act"
    with pytest.raises(ValueError, match="no default protocol"):
        default_protocol("ava")
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("voc")


def test_average_precision_by_hand() -> None:
    # ranked TP, FP, TP against 2 GT: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # VOC all-point: envelope 1 up to recall 1/2, 2/3 up to 1 -> 1/2 + 1/3 = 5/6.
    # ACT trapezoid from (0, 1): 1/2 * (1 + 1) / 2 + 0 + 1/2 * (1/2 + 2/3) / 2 = 1/2 + 7/24 = 19/24.
    tp = np.array([True, False, True])
    assert average_precision(tp, 2, "voc") == pytest.approx(5 / 6)
    assert average_precision(tp, 2, "trapezoid") == pytest.approx(19 / 24, abs=1e-7)
    assert average_precision(np.zeros(0, bool), 3, "voc") == 0.0
    assert average_precision(np.zeros(0, bool), 3, "trapezoid") == 0.0


# ----------------------------------------------------------------------------------------------- frame-mAP


@pytest.mark.parametrize("protocol", ["multisports", "act"])
def test_perfect_frame_detections(protocol: str) -> None:
    ds = make_ds({"v1": {0: [tube_rows(1, 5)]}, "v2": {1: [tube_rows(3, 9, FAR)], 0: [tube_rows(2, 4)]}})
    gt = ds.gt_boxes(ds.videos())
    det = fdets([(r.video, r.frame, r.x1, r.y1, r.x2, r.y2, r.label, 0.9) for r in gt.itertuples()])
    res = frame_map(ds, det, protocol)
    assert res.overall == 1.0 and res.per_class[0.5] == {"a": 1.0, "b": 1.0}


def test_plus_one_area_convention_differs() -> None:
    # GT (0,0,9,9), detection (0,0,4,9).
    # MultiSports (no +1): areas 81 and 36, intersection 36 -> 36/81 = .44 < .5: FP, AP 0.
    # ACT (+1): areas 100 and 50, intersection 5 x 10 = 50 -> 50/100 = .5 >= .5: TP, AP 1.
    ds = make_ds({"v": {0: [tube_rows(1, 1, (0, 0, 9, 9))]}}, labels=("a",))
    det = fdets([("v", 1, 0, 0, 4, 9, 0, 0.8)])
    assert frame_map(ds, det, "multisports").overall == 0.0
    assert frame_map(ds, det, "act").overall == 1.0


def test_matched_ground_truth_removed_vs_argmax_taken() -> None:
    # Frame with G1 = (0,0,10,10) and G2 = (2,0,12,10). D1 = G1 (score .9) takes G1 in both protocols.
    # D2 = (1,0,11,10) (score .8): IoU with G1 and with G2 tie (90/110 no +1; 110/132 with +1).
    # MultiSports: argmax over all boxes -> G1 (first on ties), already taken -> FP: precision 1, 1/2 at
    #   recall 1/2, 1/2 -> AP 1/2.
    # ACT: G1 was removed, best remaining is G2 (.83 >= .5) -> TP: AP 1.
    ds = make_ds({"v": {0: [tube_rows(1, 1, (0, 0, 10, 10)), tube_rows(1, 1, (2, 0, 12, 10))]}}, labels=("a",))
    det = fdets([("v", 1, 0, 0, 10, 10, 0, 0.9), ("v", 1, 1, 0, 11, 10, 0, 0.8)])
    assert frame_map(ds, det, "multisports").overall == pytest.approx(0.5)
    assert frame_map(ds, det, "act").overall == 1.0


def test_score_tie_broken_like_reference_argsort() -> None:
    # One GT box; a FP and a TP with the same score. The references rank with np.argsort(-score) over the
    # class's detections in input order: TP first -> AP 1; FP first -> precision 0, 1/2 at recall 0, 1 -> 1/2.
    ds = make_ds({"v": {0: [tube_rows(1, 1)]}}, labels=("a",))
    det = fdets([("v", 1, *FAR, 0, 0.5), ("v", 1, *BOX, 0, 0.5)])
    tp_first = int(np.argsort(-np.array([0.5, 0.5]))[0]) == 1
    expected = 1.0 if tp_first else 0.5
    assert frame_map(ds, det, "multisports").overall == expected


def test_frame_classes_ignored_labels_and_unknown_videos() -> None:
    # label 0 "a": one GT box, detected. label 1 "basketball save": GT, no detections (MultiSports ignores the
    # class by name; ACT gives AP 0). label 2 "c": no GT anywhere (MultiSports leaves it out; ACT counts 0).
    # A detection on "train" (not a test video) ranked first: MultiSports FP, ACT ignores it.
    labels = ("a", "basketball save", "c")
    ds = make_ds({"v": {0: [tube_rows(1, 1)], 1: [tube_rows(1, 1, FAR)]}, "train": {}}, labels=labels, test=["v"])
    det = fdets([("train", 1, *BOX, 0, 0.9), ("v", 1, *BOX, 0, 0.8)])
    ms = frame_map(ds, det, "multisports")
    assert ms.per_class[0.5] == {"a": pytest.approx(0.5)}  # FP then TP: precision 0, 1/2 at recall 0, 1
    act = frame_map(ds, det, "act")
    assert act.per_class[0.5] == {"a": 1.0, "basketball save": 0.0, "c": 0.0}
    assert act.overall == pytest.approx(1 / 3)


def test_frame_detection_validation() -> None:
    ds = make_ds({"v": {0: [tube_rows(1, 1)]}}, labels=("a",))
    with pytest.raises(ValueError, match="inverted box"):
        frame_map(ds, fdets([("v", 1, 5, 0, 4, 9, 0, 0.8)]))
    with pytest.raises(ValueError, match="lack column"):
        frame_map(ds, pd.DataFrame({"video": ["v"]}))
    res = frame_map(ds, fdets([("v", 1, *BOX, 7, 0.8)]))  # unknown label: dropped with a warning
    assert res.overall == 0.0


# ----------------------------------------------------------------------------------------------- video-mAP


def test_tube_iou_temporal_only_overlap() -> None:
    # GT frames 1..10, detection frames 6..15, same box: spatial IoU 1 on the overlap 6..10.
    # ACT: (10 - 6 + 1) / (15 - 1 + 1) = 5/15. MultiSports: (10 - 6) / (15 - 1) = 4/14.
    g, d = tube_rows(1, 10), tube_rows(6, 15)
    assert tube_iou(g, d, "act") == pytest.approx(1 / 3)
    assert tube_iou(g, d, "multisports") == pytest.approx(2 / 7)
    assert tube_iou(g, tube_rows(11, 15), "act") == 0.0  # disjoint in time
    assert tube_iou(g, tube_rows(10, 15), "multisports") == 0.0  # one shared frame: 0 / 14
    # so at threshold .3 the same detection is a TP under ACT and a FP under MultiSports
    ds = make_ds({"v": {0: [g]}}, labels=("a",))
    dets = [tube("v", 0, 0.9, d)]
    assert video_map(ds, dets, "act", thresholds=[0.3]).per_threshold[0.3] == 1.0
    assert video_map(ds, dets, "multisports", thresholds=[0.3]).per_threshold[0.3] == 0.0


def test_tube_iou_spatial_mean_and_plus_one() -> None:
    # frames 1..2 identical, frame 3: GT (0,0,10,10) vs detection (0,0,5,10): no +1 .5, with +1 66/121.
    g = tube_rows(1, 3)
    d = g.copy()
    d[2, 3] = 5
    assert tube_iou(g, d, "multisports") == pytest.approx((1 + 1 + 0.5) / 3)
    assert tube_iou(g, d, "act") == pytest.approx((1 + 1 + 66 / 121) / 3)


def test_ground_truth_gap_counts_zero() -> None:
    # GT skips frames 5, 6 (both references would reject it); detection covers 1..10 with the same box:
    # per-frame IoU 1 on 8 frames, 0 on the 2 missing ones -> .8, temporal IoU 1.
    g = tube_rows(1, 10, skip=(5, 6))
    assert tube_iou(g, tube_rows(1, 10), "act") == pytest.approx(0.8)
    assert tube_iou(g, tube_rows(1, 10), "multisports") == pytest.approx(0.8)


@pytest.mark.parametrize("protocol", ["multisports", "act"])
def test_perfect_tubes(protocol: str) -> None:
    ds = make_ds({"v1": {0: [tube_rows(1, 10)]}, "v2": {1: [tube_rows(3, 12, FAR), tube_rows(1, 4)]}})
    tubes = [tube(v, lab, 0.9, t) for v, d in ds.gttubes.items() for lab, ts in d.items() for t in ts]
    res = video_map(ds, tubes, protocol)
    assert all(v == 1.0 for v in res.per_threshold.values())
    assert all(v == 1.0 for v in res.ranges.values())


def test_duplicated_tube_is_fp_unless_nms_removes_it() -> None:
    # GT: one tube in v1, one in v2. Detections: v1's tube (.9), the same tube again (.8), v2's tube (.7).
    # MultiSports ranks TP, FP, TP -> AP 5/6 (see test_average_precision_by_hand).
    # ACT's 3D NMS removes the duplicate (IoU 1 > .3) first -> TP, TP -> AP 1; without NMS -> 19/24.
    t1, t2 = tube_rows(1, 10), tube_rows(1, 10, FAR)
    ds = make_ds({"v1": {0: [t1]}, "v2": {0: [t2]}}, labels=("a",))
    dets = [tube("v1", 0, 0.9, t1), tube("v1", 0, 0.8, t1), tube("v2", 0, 0.7, t2)]
    assert video_map(ds, dets, "multisports").overall == pytest.approx(5 / 6)
    assert video_map(ds, dets, "act").overall == 1.0
    no_nms = dataclasses.replace(PROTOCOLS["act"], nms3d=None)
    assert video_map(ds, dets, no_nms).overall == pytest.approx(19 / 24, abs=1e-7)


def test_nms3d_pick_order() -> None:
    # A (.9) frames 1..10; B (.5) frames 1..5 same box: IoU (5/10) * 1 = .5 > .3 -> suppressed by A;
    # C (.7) elsewhere: kept. Pick order: A, C.
    tubes = [
        tube("v", 0, 0.9, tube_rows(1, 10)),
        tube("v", 0, 0.5, tube_rows(1, 5)),
        tube("v", 0, 0.7, tube_rows(1, 10, FAR)),
    ]
    assert nms3d(tubes, 0.3) == [0, 2]
    assert nms3d([]) == []


def test_video_result_fields() -> None:
    ds = make_ds({"v": {0: [tube_rows(1, 10)]}}, labels=("a",))
    dets = [tube("v", 0, 0.9, tube_rows(1, 8))]  # IoU 8/10 (ACT), 7/9 (MultiSports)
    ms = video_map(ds, dets, "multisports")
    assert set(ms.per_threshold) == {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9}
    assert [ms.per_threshold[t] for t in (0.7, 0.8)] == [1.0, 0.0]  # 7/9 = .78
    assert ms.ranges["0.1:0.9"] == pytest.approx(7 / 9)  # 1 at 0.1..0.7, 0 at 0.8 and 0.9
    act = video_map(ds, dets, "act")
    assert act.per_threshold[0.8] == 1.0 and act.per_threshold[0.85] == 0.0
    assert act.ranges["0.5:0.95"] == pytest.approx(0.7)  # 0.5 .. 0.8 pass: 7 of 10 thresholds
    assert act.overall == act.per_threshold[0.5] == 1.0


def test_video_tube_validation() -> None:
    ds = make_ds({"v": {0: [tube_rows(1, 10)]}}, labels=("a",))
    bad = Tube("v", 0, 0.5, np.array([[2, *BOX, 0.5], [1, *BOX, 0.5]]))
    with pytest.raises(ValueError, match="increasing integers"):
        video_map(ds, [bad])


# ----------------------------------------------------------------------------------------------- loops


def _iou(a, b, off: float) -> float:
    w = max(0.0, min(a[2] + off, b[2] + off) - max(a[0], b[0]))
    h = max(0.0, min(a[3] + off, b[3] + off) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0] + off) * (a[3] - a[1] + off) + (b[2] - b[0] + off) * (b[3] - b[1] + off) - inter
    return inter / union


def _loop_ap(tps: list[bool], num_gt: int, method: str) -> float:
    if num_gt == 0:
        return 0.0
    tp = fp = 0
    prec, rec = [], []
    for t in tps:
        tp, fp = tp + t, fp + (not t)
        prec.append(tp / (tp + fp))
        rec.append(tp / num_gt)
    if method == "voc":
        mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
    pts = [(1.0, 0.0)] + [(float(np.float32(p)), float(np.float32(r))) for p, r in zip(prec, rec, strict=True)]
    return sum((pts[i][1] - pts[i - 1][1]) * (pts[i][0] + pts[i - 1][0]) / 2 for i in range(1, len(pts)))


def _loop_ranked_matching(items, gt: dict, iou_fn, thr: float, remove_matched: bool) -> list[bool]:
    """items: (key, score, payload) in input order; gt: key -> list of payloads."""
    scores = np.array([s for _, s, _ in items], dtype=np.float64)
    taken = {k: [False] * len(v) for k, v in gt.items()}
    remaining = {k: list(range(len(v))) for k, v in gt.items()}
    out = []
    for j in np.argsort(-scores):
        key, _, obj = items[j]
        ok = False
        if key in gt and not remove_matched:
            ious = [iou_fn(g, obj) for g in gt[key]]
            a = int(np.argmax(ious))
            if ious[a] >= thr and not taken[key][a]:
                taken[key][a] = ok = True
        elif key in gt and remaining[key]:
            ious = [iou_fn(gt[key][g], obj) for g in remaining[key]]
            a = int(np.argmax(ious))
            if ious[a] >= thr:
                remaining[key].pop(a)
                ok = True
        out.append(ok)
    return out


def _classes(ds: DenseDataset, p) -> list[int]:
    return [c for c, name in enumerate(ds.labels) if name not in p.ignored_labels]


def loop_frame_map(ds: DenseDataset, det: pd.DataFrame, protocol: str, thr: float) -> dict[str, float]:
    p = get_protocol(protocol)
    vlist = ds.videos()
    vidx = {v: i for i, v in enumerate(vlist)}
    aps = {}
    for c in _classes(ds, p):
        gt = defaultdict(list)
        for iv, v in enumerate(vlist):
            for t in ds.gttubes[v].get(c, []):
                for row in t:
                    gt[(iv, int(row[0]))].append(tuple(row[1:5]))
        num_gt = sum(len(b) for b in gt.values())
        if num_gt == 0 and not p.count_classes_without_gt:
            continue
        items = [
            ((vidx.get(r.video, -1), int(r.frame)), r.score, (r.x1, r.y1, r.x2, r.y2))
            for r in det.itertuples()
            if r.label == c and (r.video in vidx or p.unknown_videos_are_fp)
        ]
        tps = _loop_ranked_matching(items, gt, lambda g, b: _iou(g, b, p.area_offset), thr, p.remove_matched)
        aps[ds.labels[c]] = _loop_ap(tps, num_gt, p.ap_method)
    return aps


def _loop_tube_iou(g: np.ndarray, d: np.ndarray, p) -> float:
    gs, ge, ds_, de = int(g[0, 0]), int(g[-1, 0]), int(d[0, 0]), int(d[-1, 0])
    tmin, tmax = max(gs, ds_), min(ge, de)
    if tmax < tmin:
        return 0.0
    gb = {int(r[0]): r[1:5] for r in g}
    db = {int(r[0]): r[1:5] for r in d}
    per_frame = [_iou(gb[f], db[f], p.area_offset) if f in gb and f in db else 0.0 for f in range(tmin, tmax + 1)]
    union = max(ge, de) - min(gs, ds_) + p.temporal_offset
    if union == 0:
        return math.nan
    return sum(per_frame) / len(per_frame) * (tmax - tmin + p.temporal_offset) / union


def loop_video_map(ds: DenseDataset, tubes: list[Tube], protocol, thr: float) -> dict[str, float]:
    p = get_protocol(protocol)
    vlist = ds.videos()
    if p.nms3d is not None:  # per video in test order, per class: greedy by score, pick order
        kept = []
        for v in vlist:
            for c in range(len(ds.labels)):
                group = [t for t in tubes if t.video == v and t.label == c]
                order = list(np.argsort([t.score for t in group]))
                while order:
                    i = order.pop()
                    kept.append(group[i])
                    order = [j for j in order if _loop_tube_iou(group[j].boxes, group[i].boxes, p) <= p.nms3d]
        tubes = kept
    aps = {}
    for c in _classes(ds, p):
        gt = {v: list(ds.gttubes[v][c]) for v in vlist if ds.gttubes[v].get(c)}
        num_gt = sum(len(x) for x in gt.values())
        if num_gt == 0 and not p.count_classes_without_gt:
            continue
        items = [
            (t.video, t.score, t.boxes) for t in tubes if t.label == c and (t.video in vlist or p.unknown_videos_are_fp)
        ]
        tps = _loop_ranked_matching(items, gt, lambda g, d: _loop_tube_iou(g, d, p), thr, p.remove_matched)
        aps[ds.labels[c]] = _loop_ap(tps, num_gt, p.ap_method)
    return aps


# ----------------------------------------------------------------------------------------------- properties

LABELS = ("a", "basketball save", "c")  # the middle one is ignored by MultiSports
NFRAMES = 4
# boxes drawn mostly from a palette of mutually overlapping boxes, so that detections often overlap several
# ground-truth boxes (IoUs between .3 and .8, with exact ties) and matching order matters
PALETTE = [(0, 0, 4, 4), (1, 0, 5, 4), (0, 1, 4, 5), (1, 1, 5, 5), (0, 0, 4, 3), (2, 0, 6, 4), (0, 0, 6, 6)]


@st.composite
def small_box(draw):
    if draw(st.booleans()):
        return draw(st.sampled_from(PALETTE))
    x1, y1 = draw(st.integers(0, 5)), draw(st.integers(0, 5))
    return (x1, y1, x1 + draw(st.integers(1, 4)), y1 + draw(st.integers(1, 4)))


@st.composite
def small_tube(draw):
    first = draw(st.integers(1, NFRAMES))
    last = draw(st.integers(first, NFRAMES))
    boxes = [draw(small_box()) for _ in range(last - first + 1)]
    return np.array([[f, *b] for f, b in zip(range(first, last + 1), boxes, strict=True)], dtype=np.float64)


@st.composite
def dense_ground_truth(draw) -> DenseDataset:
    gttubes = {}
    for v in ("v0", "v1", "train"):
        per_label = {}
        for c in range(len(LABELS)):
            tubes = draw(st.lists(small_tube(), max_size=3))
            if tubes:
                per_label[c] = tubes
        gttubes[v] = per_label
    return make_ds(gttubes, labels=LABELS, test=["v0", "v1"], nframes=NFRAMES)


scores = st.sampled_from([0.1, 0.2, 0.3, 0.5])  # few values: many ties
videos = st.sampled_from(["v0", "v0", "v1", "train"])  # "train" is outside the test split
labels = st.sampled_from([0, 0, 0, 1, 2])


def _near(draw, box: tuple) -> tuple:
    """The box itself, a palette box, or the box shifted by one unit: overlapping it, often at IoU >= .3."""
    kind = draw(st.sampled_from(["same", "palette", "shift"]))
    if kind == "same":
        return tuple(box)
    if kind == "palette":
        return draw(st.sampled_from(PALETTE))
    dx, dy = draw(st.integers(-1, 1)), draw(st.integers(-1, 1))
    return (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)


@st.composite
def frame_case(draw) -> tuple[DenseDataset, pd.DataFrame]:
    """Ground truth and detections, half of them placed on ground-truth boxes (same or another label)."""
    ds = draw(dense_ground_truth())
    gt = ds.gt_boxes(["v0", "v1", "train"])
    rows = []
    for _ in range(draw(st.integers(0, 40))):
        if len(gt) and draw(st.booleans()):
            r = gt.iloc[draw(st.integers(0, len(gt) - 1))]
            label = int(r.label) if draw(st.integers(0, 3)) else draw(labels)
            rows.append((r.video, int(r.frame), *_near(draw, (r.x1, r.y1, r.x2, r.y2)), label, draw(scores)))
        else:
            rows.append((draw(videos), draw(st.integers(1, NFRAMES)), *draw(small_box()), draw(labels), draw(scores)))
    return ds, fdets(rows)


@st.composite
def video_case(draw) -> tuple[DenseDataset, list[Tube]]:
    """Ground truth and tubes, half of them copies of ground-truth tubes trimmed in time and perturbed."""
    ds = draw(dense_ground_truth())
    gts = [(v, c, t) for v, d in ds.gttubes.items() for c, ts in d.items() for t in ts]
    tubes = []
    for _ in range(draw(st.integers(0, 14))):
        if gts and draw(st.booleans()):
            v, c, t = gts[draw(st.integers(0, len(gts) - 1))]
            lo = draw(st.integers(0, len(t) - 1))
            hi = draw(st.integers(lo, len(t) - 1))
            rows = np.array([[r[0], *_near(draw, r[1:5])] for r in t[lo : hi + 1]], dtype=np.float64)
            label = c if draw(st.integers(0, 3)) else draw(labels)
            tubes.append(tube(v, label, draw(scores), rows))
        else:
            tubes.append(tube(draw(videos), draw(labels), draw(scores), draw(small_tube())))
    return ds, tubes


ACT_NO_NMS = dataclasses.replace(PROTOCOLS["act"], nms3d=None)  # so that duplicates reach the matching
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(frame_case(), st.sampled_from(["multisports", "act"]), st.sampled_from([0.3, 0.5]))
def test_frame_map_matches_loop(case: tuple[DenseDataset, pd.DataFrame], protocol: str, thr: float) -> None:
    ds, det = case
    expected = loop_frame_map(ds, det, protocol, thr)
    got = frame_map(ds, det, protocol, thresholds=[thr])
    assert got.per_class[thr].keys() == expected.keys()
    for name, ap in expected.items():
        assert got.per_class[thr][name] == pytest.approx(ap, abs=1e-6), name
    if expected:
        assert got.per_threshold[thr] == pytest.approx(np.mean(list(expected.values())), abs=1e-6)


@SETTINGS
@given(video_case(), st.sampled_from(["multisports", "act", ACT_NO_NMS]), st.sampled_from([0.2, 0.5]))
def test_video_map_matches_loop(case: tuple[DenseDataset, list[Tube]], protocol, thr: float) -> None:
    ds, tubes = case
    expected = loop_video_map(ds, tubes, protocol, thr)
    got = video_map(ds, tubes, protocol, thresholds=[thr])
    assert got.per_class[thr].keys() == expected.keys()
    for name, ap in expected.items():
        assert got.per_class[thr][name] == pytest.approx(ap, abs=1e-6), name


# ----------------------------------------------------------------------------------------------- pinned


def pinned_case() -> tuple[DenseDataset, pd.DataFrame, list[Tube]]:
    """4 test videos, 3 classes, 30 frames: jittered detections with scores on a 0.1 grid (ties), duplicates,
    wrong classes, random false positives, and trimmed / shifted tube copies. Integer arithmetic on a
    seeded generator, so the input is the same on every machine."""
    rng = np.random.default_rng(7)
    gttubes: dict = {f"v{i}": {} for i in range(5)}
    for i, v in enumerate(gttubes):
        for k in range(2):
            c = (i + k) % 3
            s = int(rng.integers(1, 10))
            e = int(rng.integers(s + 8, 31))
            x, y = int(rng.integers(0, 150)), int(rng.integers(0, 80))
            rows = [[f, x + 2 * (f - s), y, x + 2 * (f - s) + 50, y + 70] for f in range(s, e + 1)]
            gttubes[v].setdefault(c, []).append(np.array(rows, dtype=np.float64))
    ds = make_ds(gttubes, labels=("a", "b", "c"), test=["v0", "v1", "v2", "v3"], nframes=30)
    gt = ds.gt_boxes(["v0", "v1", "v2", "v3", "v4"])
    rows = []
    for r in gt.itertuples():
        for dup in range(int(rng.integers(0, 3))):
            j = rng.integers(-6, 7, 4)
            label = r.label if dup == 0 or rng.random() < 0.5 else int(rng.integers(0, 3))
            box = [r.x1 + j[0], r.y1 + j[1], max(r.x2 + j[2], r.x1 + j[0] + 1), max(r.y2 + j[3], r.y1 + j[1] + 1)]
            rows.append((r.video, r.frame, *box, label, int(rng.integers(1, 10)) / 10))
    for _ in range(150):
        x, y = int(rng.integers(0, 200)), int(rng.integers(0, 120))
        v, f, c = f"v{int(rng.integers(0, 5))}", int(rng.integers(1, 31)), int(rng.integers(0, 3))
        rows.append(
            (v, f, x, y, x + int(rng.integers(10, 80)), y + int(rng.integers(10, 80)), c, int(rng.integers(0, 6)) / 10)
        )
    det = fdets(rows)
    tubes = []
    for v, per_label in gttubes.items():
        for c, ts in per_label.items():
            for g in ts:
                for _ in range(int(rng.integers(1, 4))):
                    lo, hi = int(rng.integers(0, 5)), len(g) - int(rng.integers(0, 5))
                    t = g[lo:hi].copy()
                    t[:, 1:5] += rng.integers(-8, 9, (len(t), 4))
                    label = c if rng.random() < 0.8 else int(rng.integers(0, 3))
                    tubes.append(tube(v, label, int(rng.integers(1, 10)) / 10, t))
        for _ in range(2):
            s = int(rng.integers(1, 20))
            t = tube_rows(s, s + int(rng.integers(3, 11)), (10.0, 10.0, 70.0, 90.0))
            tubes.append(tube(v, int(rng.integers(0, 3)), int(rng.integers(0, 5)) / 10, t))
    return ds, det, tubes


# Outputs of the reference evaluators on pinned_case() (MultiSports' evaluate_multisports.py; MOC-Detector's
# ACT.py frameAP / videoAP with its 3D NMS), as fractions: see the module docstring of stages.metrics.dense.
PINNED_REFERENCE: dict = {
    "ms_frame": 0.37765188984852044,
    "act_frame": 0.41242160797119143,
    "ms_video": {0.2: 0.6851851851851852, 0.5: 0.3587962962962963, "0.1:0.9": 0.35210905349794236},
    "act_video": {0.2: 0.880555648803711, 0.5: 0.25000001907348635, 0.75: 0.0, "0.5:0.95": 0.06388889408111571},
}


def test_pinned_case_matches_reference_outputs() -> None:
    ds, det, tubes = pinned_case()
    ref = PINNED_REFERENCE
    assert frame_map(ds, det, "multisports").overall == pytest.approx(ref["ms_frame"], abs=1e-12)
    assert frame_map(ds, det, "act").overall == pytest.approx(ref["act_frame"], abs=1e-6)  # ref: float32 mean
    ms, act = video_map(ds, tubes, "multisports"), video_map(ds, tubes, "act")
    for t in (0.2, 0.5):
        assert ms.per_threshold[t] == pytest.approx(ref["ms_video"][t], abs=1e-12)
    assert ms.ranges["0.1:0.9"] == pytest.approx(ref["ms_video"]["0.1:0.9"], abs=1e-12)
    for t in (0.2, 0.5, 0.75):
        assert act.per_threshold[t] == pytest.approx(ref["act_video"][t], abs=1e-6)
    assert act.ranges["0.5:0.95"] == pytest.approx(ref["act_video"]["0.5:0.95"], abs=1e-6)
