"""MOC-style tube linking: hand-derived cases (boxes on integer grids, ``area_offset=0`` unless stated)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.metrics.tubes import DETECTION_COLUMNS, LinkParams, link_tubes, soft_nms, tubes_from_frame, tubes_to_frame

P0 = LinkParams(area_offset=0.0)


def dets(rows: list[tuple]) -> pd.DataFrame:
    """Rows (video, frame, x1, y1, x2, y2, label, score)."""
    return pd.DataFrame(rows, columns=DETECTION_COLUMNS)


def static(frames, box=(0, 0, 10, 10), score=0.5, label=0, video="v") -> list[tuple]:
    return [(video, f, *box, label, score) for f in frames]


# ----------------------------------------------------------------------------------------------- soft-NMS


def test_soft_nms_single_pass_linear() -> None:
    # A (score .9) vs B: inter 10x7=70, union 100 -> IoU .7 > .6: B re-weighted to .8 * (1 - .7) = .24 and
    # dropped as a suppressor. A vs D: 50/100 = .5 <= .6: D untouched, although IoU(B, D) = 50/70 > .6
    # (B no longer suppresses). C is far. New ranking A .9, D .7, C .5, B .24; top 3 kept.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 7], [50, 50, 60, 60], [0, 0, 10, 5]], dtype=float)
    keep, new = soft_nms(boxes, np.array([0.9, 0.8, 0.5, 0.7]), iou_threshold=0.6, top_k=3, area_offset=0.0)
    assert keep.tolist() == [0, 3, 2]
    np.testing.assert_allclose(new, [0.9, 0.24, 0.5, 0.7])


def test_soft_nms_plus_one_convention() -> None:
    # with +1: A = 11x11 = 121 px, B = 11x8 = 88 px, inter 88 -> IoU 88/121 = .727 (vs .7 without)
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 7]], dtype=float)
    _, new = soft_nms(boxes, np.array([0.9, 0.8]), 0.6, 10, area_offset=1.0)
    assert new[1] == pytest.approx(0.8 * (1 - 88 / 121))


def test_soft_nms_empty() -> None:
    keep, new = soft_nms(np.zeros((0, 4)), np.zeros(0), 0.6, 10)
    assert keep.size == 0 and new.size == 0


# ----------------------------------------------------------------------------------------------- linking


def test_two_crossing_tubes_stay_apart() -> None:
    # A moves right (x1 = 10f), B left (x1 = 220 - 10f), both 40x40, frames 1..21; they coincide at f = 11.
    # Consecutive boxes of one tube: inter 30, union 50 -> IoU .6 >= .5, so each tube can extend.
    # Frame 11: IoU(A, B) = 1 > .6, so soft-NMS re-weights B's box to .8 * (1 - 1) = 0. A (mean .9) is
    # served first and takes the best-scoring valid box, its own; B then takes the remaining box (IoU .6
    # with its frame-10 box) and keeps that box's own score 0. B's score: (20 * .8 + 0) / 21.
    rows = []
    for f in range(1, 22):
        rows.append(("v", f, 10 * f, 0, 10 * f + 40, 40, 0, 0.9))
        rows.append(("v", f, 220 - 10 * f, 0, 260 - 10 * f, 40, 0, 0.8))
    tubes = link_tubes(dets(rows), P0)
    assert len(tubes) == 2
    a, b = tubes
    assert a.score == pytest.approx(0.9) and b.score == pytest.approx(16 / 21)
    np.testing.assert_array_equal(a.boxes[:, 1], 10 * np.arange(1, 22))
    np.testing.assert_array_equal(b.boxes[:, 1], 220 - 10 * np.arange(1, 22))
    assert b.boxes[10, 5] == 0.0 and (np.delete(b.boxes[:, 5], 10) == 0.8).all()
    assert (a.start, a.end) == (1, 21)


def test_tube_takes_highest_score_not_highest_iou() -> None:
    # Frame 2 candidates for the tube ending in (0,0,10,10): P = same box (IoU 1, score .5) and
    # Q = (0,0,10,6) (IoU .6, score .8). IoU(P, Q) = .6 is not > .6, so no re-weighting. MOC takes the
    # best *score* among boxes with IoU >= .5: Q. P starts its own tube.
    rows = static([1], score=0.9) + [("v", 2, 0, 0, 10, 10, 0, 0.5), ("v", 2, 0, 0, 10, 6, 0, 0.8)]
    tubes = link_tubes(dets(rows), LinkParams(area_offset=0.0, min_length=1))
    assert len(tubes) == 2
    np.testing.assert_array_equal(tubes[0].boxes[:, 1:5], [[0, 0, 10, 10], [0, 0, 10, 6]])
    assert tubes[0].score == pytest.approx((0.9 + 0.8) / 2)
    assert tubes[1].start == 2 and tubes[1].score == 0.5


def test_gap_splits_tube_with_patience_one() -> None:
    # MOC's K = 1: frame 6 has no box, offset 6 - 5 = 1 >= K ends the tube; frame 7 starts a new one.
    rows = static([f for f in range(1, 21) if f != 6])
    tubes = link_tubes(dets(rows), LinkParams(area_offset=0.0, min_length=1))
    assert [(t.start, t.end) for t in tubes] == [(1, 5), (7, 20)]
    assert link_tubes(dets(rows), P0) == []  # 5 and 14 frames: both shorter than 15


def test_gap_bridged_with_patience_two_and_interpolated() -> None:
    # Box moves 1 px right per frame; frame 6 missing. With patience 2 the frame-7 box (7..17) is compared
    # with the frame-5 box (5..15): inter 8, union 12 -> .67 >= .5, linked. Frame 6 is filled with the box
    # halfway between (x1 = 6) and a NaN score; the tube score is the mean over linked boxes only.
    rows = [("v", f, f, 0, f + 10, 10, 0, 0.5 if f < 6 else 0.7) for f in range(1, 21) if f != 6]
    (t,) = link_tubes(dets(rows), LinkParams(area_offset=0.0, patience=2))
    assert (t.start, t.end, len(t.boxes)) == (1, 20, 20)
    np.testing.assert_array_equal(t.boxes[:, 1], np.arange(1, 21))
    assert np.isnan(t.boxes[5, 5]) and np.isnan(t.boxes[:, 5]).sum() == 1
    assert t.score == pytest.approx((5 * 0.5 + 14 * 0.7) / 19)


def test_short_tube_dropped_at_fifteen_frames() -> None:
    assert link_tubes(dets(static(range(1, 15))), P0) == []  # 14 frames
    (t,) = link_tubes(dets(static(range(1, 16))), P0)  # 15 frames
    assert (t.start, t.end) == (1, 15)


def test_low_scoring_tube_dropped() -> None:
    assert link_tubes(dets(static(range(1, 21), score=0.004)), P0) == []  # mean .004 < .005
    assert len(link_tubes(dets(static(range(1, 21), score=0.006)), P0)) == 1


def test_score_tie_between_candidates_follows_argsort() -> None:
    # Tube box (0,0,10,10); candidates P = (0,0,10,8), Q = (0,2,10,10), both IoU .8 with it and score .7;
    # IoU(P, Q) = 60/100 = .6 (no re-weighting). MOC ranks by argsort(scores)[::-1] and takes the first
    # best-scoring valid box in that order, so the tie goes to whichever box numpy's argsort puts last.
    rows = static([1], score=0.9) + [("v", 2, 0, 0, 10, 8, 0, 0.7), ("v", 2, 0, 2, 10, 10, 0, 0.7)]
    tubes = link_tubes(dets(rows), LinkParams(area_offset=0.0, min_length=1))
    winner = int(np.argsort(np.array([0.7, 0.7]))[::-1][0])
    expected = [[0, 0, 10, 8], [0, 2, 10, 10]][winner]
    np.testing.assert_array_equal(tubes[0].boxes[1, 1:5], expected)
    assert len(tubes) == 2 and tubes[1].boxes[0, 1:5].tolist() == [[0, 0, 10, 8], [0, 2, 10, 10]][1 - winner]


def test_labels_and_videos_are_linked_separately() -> None:
    rows = static(range(1, 16), label=1, video="b") + static(range(1, 16), label=0, video="a")
    rows += static(range(1, 16), label=1, video="a")
    tubes = link_tubes(dets(rows), P0)
    assert [(t.video, t.label) for t in tubes] == [("b", 1), ("a", 0), ("a", 1)]


def test_top_k_limits_boxes_per_frame() -> None:
    # 12 disjoint boxes per frame; only the 10 best-scoring survive soft-NMS, so 10 tubes
    rows = [("v", f, 20 * i, 0, 20 * i + 10, 10, 0, 0.1 + 0.05 * i) for f in range(1, 16) for i in range(12)]
    tubes = link_tubes(dets(rows), P0)
    assert len(tubes) == 10 and sorted(int(t.boxes[0, 1]) for t in tubes) == [20 * i for i in range(2, 12)]


def test_nframes_checks_and_runs_to_video_end() -> None:
    rows = static(range(1, 16))
    with pytest.raises(ValueError, match="beyond its 10 frames"):
        link_tubes(dets(rows), P0, nframes={"v": 10})
    with pytest.raises(ValueError, match="no nframes entry"):
        link_tubes(dets(rows), P0, nframes={"w": 10})
    (t,) = link_tubes(dets(rows), P0, nframes={"v": 40})
    assert (t.start, t.end) == (1, 15)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="lack column"):
        link_tubes(pd.DataFrame({"video": ["v"]}))
    with pytest.raises(ValueError, match="frames must be integers"):
        link_tubes(dets([("v", 1.5, 0, 0, 1, 1, 0, 0.5)]))
    assert link_tubes(dets([])) == []


def test_tube_table_round_trip() -> None:
    rows = static(range(1, 16)) + static(range(3, 20), box=(50, 50, 60, 60), score=0.7, label=2, video="w")
    tubes = link_tubes(dets(rows), P0)
    table = tubes_to_frame(tubes)
    assert len(table) == 15 + 17 and table["tube_score"].iloc[-1] == pytest.approx(0.7)
    back = tubes_from_frame(table)
    assert [(t.video, t.label, t.score) for t in back] == [(t.video, t.label, t.score) for t in tubes]
    for a, b in zip(back, tubes, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    assert tubes_to_frame([]).empty
