"""Dense files as the references ship and write them: built byte-for-byte in their format, read, scored.

Each case builds a file the way its producer writes it (MultiSports' test-only ground truth and detection pickles;
ACT's Python-2 ``UCF101v2-GT.pkl``; MOC's ``frame_detections.pkl``, ``<video>_tubes.pkl`` and tubelet folders;
the corrected UCF101-24 ``pyannot.pkl`` with ``numpy.str_`` names and uint8/uint16 boxes), runs it through
``pipeline dense-eval`` or the readers, and checks the number against the reference's rules worked by hand in
the comment above the assertion.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app, run
from stages.data.act import DenseDatasetError, read_dense_dataset
from stages.data.dense_formats import (
    DenseFormatError,
    dense_dataset_from_pyannot,
    frame_detections_from_rows,
    main,
    read_dense_ground_truth,
    read_detections,
    read_moc_tubelets,
    read_pyannot,
    tubes_from_video_detections,
)
from stages.metrics.dense import evaluate_dense_files, frame_map, video_map
from stages.metrics.tubes import DETECTION_COLUMNS, Tube, tubes_to_frame

# ----------------------------------------------------------------------------------------------- writers


class _LegacyPickler(pickle._Pickler):
    """Pickles as numpy 1.x did (``numpy.core.multiarray`` names), the way the shipped files were written."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


class _Python2Pickler(_LegacyPickler):
    """What Python 2's cPickle wrote at protocol 2: every str (and array payload) as a byte string, builtins
    under ``__builtin__``. Python 3 reads it only with an encoding; MOC and we use latin-1."""

    dispatch = dict(_LegacyPickler.dispatch)

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core").replace("builtins", "__builtin__")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def dump(obj: Any, path: Path, protocol: int = 4, pickler: type | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if pickler is None:
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
    else:
        buf = io.BytesIO()
        pickler(buf, protocol=protocol).dump(obj)
        path.write_bytes(buf.getvalue())
    return path


def rows(first: int, last: int, box: tuple, score: float | None = None, dtype: Any = np.float64) -> np.ndarray:
    """Tube rows frame, x1, y1, x2, y2 (+ score) for frames first..last."""
    frames = np.arange(first, last + 1)
    out = np.column_stack([frames, np.tile(box, (len(frames), 1))])
    if score is not None:
        out = np.column_stack([out, np.full(len(frames), score)])
    return out.astype(dtype)


def dense_eval(*args: str) -> str:
    result = CliRunner().invoke(app, ["dense-eval", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def report(*args: str) -> dict:
    out = dense_eval(*args, "--json")
    return json.loads(out[out.index("{") :])


# ----------------------------------------------------------------------------------------------- MultiSports

A = "aerobic_gymnastics/v_crsi07chcV8_c004"
B = "basketball/v_-6Os86HzwCs_c001"
BOX_A, BOX_B, BOX_IGNORED = (10, 10, 50, 50), (100, 100, 140, 160), (300, 300, 400, 400)


def multisports_gt(tmp_path: Path) -> Path:
    """The official test-set ground truth: no 'train_videos'; 'aerobic kick jump' is one of the six classes the
    evaluator leaves out."""
    gt = {
        "labels": ["aerobic push up", "basketball dribble", "aerobic kick jump"],
        "test_videos": [[A, B]],
        "nframes": {A: 20, B: 20},
        "resolution": {A: (720, 1280), B: (720, 1280)},
        "gttubes": {A: {0: [rows(1, 10, BOX_A)], 2: [rows(1, 10, BOX_IGNORED)]}, B: {1: [rows(5, 14, BOX_B)]}},
    }
    return dump(gt, tmp_path / "multisports_GT.pkl")


def multisports_detections(tmp_path: Path) -> tuple[Path, Path]:
    # frame_detections.pkl: "a list; every item a numpy array of shape (8,)" [video_index, frame, label, score, box]
    frame_rows = [
        np.array([0, 1, 0, 0.9, *BOX_A], dtype=np.float64),  # TP
        np.array([0, 1, 0, 0.8, *BOX_A], dtype=np.float64),  # its best box is taken: FP (no fallback)
        np.array([1, 5, 0, 0.7, *BOX_B], dtype=np.float64),  # no 'push up' in video B: FP
        np.array([1, 5, 1, 0.6, *BOX_B], dtype=np.float64),  # TP
        np.array([1, 6, 1, 0.95, 120, 100, 160, 160], dtype=np.float64),  # IoU 1200 / 3600 = 1/3: FP
        np.array([0, 1, 2, 0.99, *BOX_IGNORED], dtype=np.float64),  # an ignored class
    ]
    # video_detections.pkl: {label: [(video, tube score, rows frame, x1, y1, x2, y2, box score)]}
    video = {
        0: [(A, 0.9, rows(1, 10, BOX_A, 0.9)), (A, 0.5, rows(1, 5, BOX_A, 0.5))],
        1: [(B, 0.8, rows(5, 11, BOX_B, 0.8))],
        2: [(A, 0.99, rows(1, 10, BOX_IGNORED, 0.99))],
    }
    return dump(frame_rows, tmp_path / "frame_detections.pkl"), dump(video, tmp_path / "video_detections.pkl")


def test_multisports_test_only_ground_truth_and_detection_pickles(tmp_path: Path) -> None:
    gt = multisports_gt(tmp_path)
    frames, video = multisports_detections(tmp_path)
    r = report("--gt", str(gt), "-d", str(frames), "-d", str(video), "--protocol", "multisports")
    # frame AP, VOC all-point, 10 GT boxes per class:
    #   push up: ranked 0.9 TP, 0.8 FP, 0.7 FP -> precision 1 up to recall 0.1 -> AP 0.1
    #   dribble: ranked 0.95 FP (IoU 1/3), 0.6 TP -> recall 0.1 at precision 0.5 -> AP 0.05
    #   kick jump: left out -> frame-mAP (0.1 + 0.05) / 2 = 0.075
    assert r["frame_map"] == {"0.5": pytest.approx(0.075)}
    # video: push up: the full tube TP (IoU 1), the 5-frame one FP after full recall -> AP 1 at every threshold.
    #   dribble: frames 5..11 in GT 5..14: temporal IoU (11-5)/(14-5) = 6/9 = 0.667 (no +1 in MultiSports),
    #   spatial 1 -> TP at 0.2 and 0.5 -> AP 1; over 0.1:0.9 it is TP at 0.1..0.6 (6 thresholds) and FP at
    #   0.7, 0.8, 0.9 -> mAP (6 * 1 + 3 * 0.5) / 9 = 0.833333
    assert r["video_map"] == {"0.2": pytest.approx(1.0), "0.5": pytest.approx(1.0)}
    assert r["video_map_ranges"] == {"0.1:0.9": pytest.approx(7.5 / 9)}
    assert [c["evaluated"] for c in r["per_class"]] == [True, True, False]
    assert r["per_class"][1]["frame_ap@0.5"] == pytest.approx(0.05)
    assert r["frame_detections"] == 6 and r["tubes"] == 4 and r["test_videos"] == 2


def test_multisports_frame_rows_as_one_array_and_the_table(tmp_path: Path) -> None:
    gt = multisports_gt(tmp_path)
    frames, video = multisports_detections(tmp_path)
    stacked = dump(np.stack(pickle.loads(frames.read_bytes())), tmp_path / "stacked.pkl")  # what the code indexes
    assert report("--gt", str(gt), "-d", str(stacked), "--protocol", "multisports")["frame_map"]["0.5"] == (
        pytest.approx(0.075)
    )
    out = dense_eval("--gt", str(gt), "-d", str(frames), "-d", str(video), "--protocol", "multisports")
    assert "frame-mAP@0.5           0.075000" in out
    assert "video-mAP@0.1:0.9       0.833333" in out
    assert "    2  aerobic kick jump" in out and "(not in the mean" in out


def test_multisports_train_split_of_the_test_only_file_is_refused(tmp_path: Path) -> None:
    gt = multisports_gt(tmp_path)
    ds = read_dense_dataset(gt)
    assert ds.videos("test") == (A, B) and ds.absent == {"train_videos"}
    with pytest.raises(DenseDatasetError) as err:
        ds.videos("train")
    assert str(err.value) == (
        f"{gt}: no 'train_videos' in this file (it has ['test_videos'] only), so its train split cannot be read; "
        "MultiSports' test-set ground truth has no train list: train from the train/val file"
    )


def test_frame_rows_index_the_test_list_and_keep_the_score_dtype() -> None:
    frame_rows = np.array([[1, 3, 0, 0.5, 1, 2, 3, 4], [7, 1, 1, 0.25, 0, 0, 1, 1]], dtype=np.float32)
    det = frame_detections_from_rows(frame_rows, ["a", "b"], "f.pkl")
    assert list(det.columns) == DETECTION_COLUMNS and det["video"].tolist() == ["b", "<test video 7>"]
    assert det["score"].dtype == np.float32 and det["frame"].tolist() == [3, 1]  # ties rank as in the reference


# ----------------------------------------------------------------------------------------------- ACT / MOC

V_A, V_B, V_C = "Basketball/v_Basketball_g01_c01", "Basketball/v_Basketball_g02_c01", "Biking/v_Biking_g01_c01"
BOX_0, BOX_1 = (10, 10, 49, 49), (100, 100, 139, 159)  # +1 pixel areas: 40 x 40 and 40 x 60


def act_gt_python2(tmp_path: Path) -> Path:
    """ACT's UCF101v2-GT.pkl as shipped: a Python 2 cPickle (protocol 2, byte strings, float32 tubes)."""
    gt = {
        "labels": ["Basketball", "Biking"],
        "train_videos": [[V_A]],
        "test_videos": [[V_B, V_C]],
        "nframes": {V_A: 20, V_B: 20, V_C: 20},
        "resolution": {V_A: (240, 320), V_B: (240, 320), V_C: (240, 320)},
        "gttubes": {
            V_A: {0: [rows(1, 20, BOX_0, dtype=np.float32)]},
            V_B: {0: [rows(1, 10, BOX_0, dtype=np.float32)]},
            V_C: {1: [rows(1, 11, BOX_1, dtype=np.float32)]},
        },
    }
    path = dump(gt, tmp_path / "UCF101v2-GT.pkl", protocol=2, pickler=_Python2Pickler)
    assert b"U\nBasketball" in path.read_bytes() and b"cnumpy.core.multiarray\n_reconstruct" in path.read_bytes()
    with pytest.raises(UnicodeDecodeError):  # a Python 2 file: plain Python 3 decoding fails on its arrays
        pickle.loads(path.read_bytes())
    return path


def moc_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "moc_inference"
    # frame_detections.pkl: float32 (N, 8) rows <video_index> <frame> <label> <score> <x1> <y1> <x2> <y2>
    frame_rows = np.array(
        [
            [0, 1, 0, 0.9, *BOX_0],  # TP
            [0, 1, 0, 0.8, *BOX_0],  # the frame's GT box was removed by the TP above: FP
            [0, 2, 0, 0.7, *BOX_0],  # TP
            [1, 3, 1, 0.5, *BOX_1],  # TP
        ],
        dtype=np.float32,
    )
    dump(frame_rows, folder / "frame_detections.pkl")
    # BuildTubes output, one file per video: {label: [[rows (n, 6) float32, score], ...]}
    dump(
        {0: [[rows(1, 10, BOX_0, 0.9, np.float32), 0.9], [rows(3, 10, BOX_0, 0.8, np.float32), 0.8]], 1: []},
        folder / f"{V_B}_tubes.pkl",
        protocol=3,
    )
    dump({0: [], 1: [[rows(1, 7, BOX_1, 0.7, np.float32), 0.7]]}, folder / f"{V_C}_tubes.pkl", protocol=3)
    return folder


def test_act_python2_ground_truth_and_moc_inference_folder(tmp_path: Path) -> None:
    gt = act_gt_python2(tmp_path)
    ds = read_dense_dataset(gt)
    assert ds.labels == ("Basketball", "Biking") and ds.videos("train") == (V_A,) and ds.videos("test") == (V_B, V_C)
    r = report("--gt", str(gt), "-d", str(moc_folder(tmp_path)), "--protocol", "act")
    # frame AP, ACT's trapezoid from (recall 0, precision 1), matched GT removed:
    #   Basketball (10 GT boxes): 0.9 TP (r .1, p 1), 0.8 FP (r .1, p .5), 0.7 TP (r .2, p 2/3)
    #     -> .1 * (1 + 1) / 2 + 0 + .1 * (.5 + 2/3) / 2 = 0.158333
    #   Biking (11 GT boxes): 0.5 TP (r 1/11, p 1) -> 1/11 = 0.090909;  frame-mAP 0.124621
    assert r["frame_map"]["0.5"] == pytest.approx((0.1 + 0.1 * (0.5 + 2 / 3) / 2 + 1 / 11) / 2, rel=1e-6)
    # video: 3D NMS 0.3 first: Basketball's 0.8 tube (frames 3..10) has IoU (10-3+1)/(10-1+1) = 0.8 with the
    #   0.9 tube -> removed; the 0.9 tube matches its GT exactly -> AP 1 everywhere.
    #   Biking: frames 1..7 in GT 1..11 -> (7-1+1)/(11-1+1) = 7/11 = 0.636 (+1 in ACT): TP at 0.2, 0.5, FP at 0.75
    #   -> mAP 1, 1, 0.5; over 0.5:0.95 TP at 0.5, 0.55, 0.6 only -> (3 * 1 + 7 * 0.5) / 10 = 0.65
    assert r["video_map"] == {"0.2": pytest.approx(1.0), "0.5": pytest.approx(1.0), "0.75": pytest.approx(0.5)}
    assert r["video_map_ranges"] == {"0.5:0.95": pytest.approx(0.65)}
    assert r["tubes"] == 3 and len(r["detections"]) == 2


def test_moc_tubelets_become_frame_detections_as_load_frame_detections_builds_them(tmp_path: Path) -> None:
    gt = act_gt_python2(tmp_path)
    folder = tmp_path / "moc_k2"
    empty = np.zeros((0, 9), dtype=np.float32)  # K = 2: (x1, y1, x2, y2) * 2, score
    shifted = (15, 10, 54, 49)  # IoU with BOX_0 (+1 areas): 35 * 40 / (2 * 1600 - 1400) = 0.778 > 0.6
    tubelets = {
        (V_B, 1): np.array([[*BOX_0, *BOX_0, 0.9]], dtype=np.float32),  # frames 1, 2
        (V_B, 2): np.array([[*shifted, *BOX_0, 0.85]], dtype=np.float32),  # frames 2 (shifted), 3
        (V_B, 4): np.array([[*BOX_0, *BOX_0, 0.6]], dtype=np.float32),  # frames 4, 5
        (V_B, 15): np.array([[*BOX_0, *BOX_0, 0.5]], dtype=np.float32),  # frames 15, 16: no GT there
    }
    for v in (V_B, V_C):
        for start in range(1, 20 - 2 + 2):  # one file per start frame 1..nframes - K + 1, labels counted from 1
            dump({1: tubelets.get((v, start), empty), 2: empty}, folder / v / f"{start:05d}.pkl", protocol=3)
    det = read_moc_tubelets(folder, read_dense_dataset(gt), (V_B, V_C))
    # frame 2 holds the 0.9 box and the shifted 0.85 one: MOC's soft rescoring -> 0.85 * (1 - 0.778) = 0.189
    f2 = det[det["frame"] == 2]["score"].to_numpy()
    np.testing.assert_allclose(f2, [0.9, 0.85 * (1 - 1400 / 1800)], rtol=1e-6)
    assert det["score"].dtype == np.float32 and len(det) == 8
    r = report("--gt", str(gt), "-d", str(folder), "--protocol", "act")
    # Basketball (10 GT boxes): 0.9 f1 TP, 0.9 f2 TP, 0.85 f3 TP, 0.6 f4 TP, 0.6 f5 TP, 0.5 f15 / f16 FP,
    #   0.189 shifted f2 FP (GT removed) -> precision 1 up to recall 0.5 -> AP 0.5 (unrescored, the shifted box
    #   would rank at 0.85 among the TPs: 0.43 or 0.46). Biking: no detections -> AP 0. frame-mAP 0.25.
    assert r["frame_map"]["0.5"] == pytest.approx(0.25, rel=1e-6)
    assert r["video_map"] is None and r["per_class"][1]["frame_ap@0.5"] == 0.0


def test_moc_folder_without_a_videos_tube_file(tmp_path: Path) -> None:
    gt = act_gt_python2(tmp_path)
    folder = moc_folder(tmp_path)
    (folder / f"{V_C}_tubes.pkl").unlink()
    with pytest.raises(DenseFormatError) as err:
        read_detections(folder, read_dense_dataset(gt))
    assert str(err.value) == (
        f"{folder}: no MOC tube file for 1 of 2 test videos (first: {folder / (V_C + '_tubes.pkl')}); run MOC's "
        "`ACT.py --task BuildTubes` over this folder first, or pass --link to link its frame detections"
    )


# ----------------------------------------------------------------------------------------------- UCF101-24 pyannot

U_B, U_C, U_A = "Basketball/v_Basketball_g02_c01", "Biking/v_Biking_g01_c01", "Basketball/v_Basketball_g01_c01"


def pyannot(boxes_b: Any = None, **tube_b: Any) -> dict:
    """The corrected annotations' structure: numpy.str_ names, uint8/uint16 'numf' and boxes x, y, w, h,
    Python int 'sf' (0-based) / 'ef' (exclusive) / 'label'."""
    b = boxes_b if boxes_b is not None else np.tile(np.array([250, 10, 60, 40], dtype=np.uint8), (10, 1))
    return {
        np.str_(U_B): {
            "annotations": [{"label": 0, "ef": 10, "boxes": b, "sf": 0, **tube_b}],
            "numf": np.uint8(20),
            "label": 0,
        },
        np.str_(U_C): {
            "annotations": [
                {"label": 1, "ef": 15, "boxes": np.tile(np.array([100, 100, 40, 60], np.uint16), (10, 1)), "sf": 5}
            ],
            "numf": np.uint16(300),
            "label": 1,
        },
        np.str_(U_A): {
            "annotations": [{"label": 0, "ef": 5, "boxes": np.tile(np.array([1, 1, 8, 8], np.uint8), (5, 1)), "sf": 0}],
            "numf": np.uint8(5),
            "label": 0,
        },
    }


def write_pyannot(tmp_path: Path, data: dict | None = None, name: str = "pyannot.pkl") -> Path:
    path = dump(pyannot() if data is None else data, tmp_path / name, protocol=3, pickler=_LegacyPickler)
    assert path.read_bytes()[:2] == b"\x80\x03" and b"cnumpy.core.multiarray\nscalar" in path.read_bytes()
    return path


def test_pyannot_frames_and_boxes_in_act_conventions(tmp_path: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("Basketball\nBiking\n")
    ds = read_pyannot(write_pyannot(tmp_path), classes, train_list=None, test_list=None)
    assert all(type(v) is str for v in ds.nframes) and ds.nframes == {U_B: 20, U_C: 300, U_A: 5}
    assert ds.resolution[U_B] == (240, 320)
    # sf 0, ef 10 -> ACT frames 1..10; x + w = 250 + 60 = 310 (54 if added in uint8), y + h = 50
    np.testing.assert_array_equal(ds.gttubes[U_B][0][0], rows(1, 10, (250, 10, 310, 50)))
    # sf 5, ef 15 -> frames 6..15; uint16 boxes
    np.testing.assert_array_equal(ds.gttubes[U_C][1][0], rows(6, 15, (100, 100, 140, 160)))


def test_pyannot_converted_and_scored_with_the_projects_tables(tmp_path: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("Basketball\nBiking\n")
    test_list = tmp_path / "testlist01.txt"
    test_list.write_text(f"{U_B}\n{U_C}\nBasketball/v_removed_g99_c01\n")  # the corrected set dropped a few
    gt = tmp_path / "ucf24" / "dense" / "gt.pkl"
    with pytest.raises(SystemExit):  # argparse: --out is required
        main(["pyannot", str(write_pyannot(tmp_path)), "--classes", str(classes)])
    assert main(["pyannot", str(tmp_path / "pyannot.pkl"), "--classes", str(classes), "--test-list", str(test_list),
                 "--out", str(gt)]) == 0  # fmt: skip
    ds = read_dense_dataset(gt)
    assert ds.videos("test") == (U_B, U_C) and ds.videos("train") == (U_A,)  # train: the rest
    # the project's own tables: per-frame detections (DETECTION_COLUMNS) as CSV, tubes as evaluate writes them
    frames = pd.DataFrame(
        [
            (U_B, 10, 250, 10, 310, 50, 0, 0.9),  # frame 10 = the tube's last (ef 10, exclusive, 0-based): TP
            (U_B, 11, 250, 10, 310, 50, 0, 0.8),  # frame 11 has no box: FP
            (U_C, 6, 100, 100, 140, 160, 1, 0.7),  # frame 6 = sf 5 + 1: TP
            (U_C, 5, 100, 100, 140, 160, 1, 0.6),  # frame 5 is before the tube: FP
        ],
        columns=DETECTION_COLUMNS,
    )
    frames.to_csv(tmp_path / "frames.csv", index=False)
    tubes = [
        Tube(U_B, 0, 0.9, rows(1, 10, (250, 10, 310, 50), 0.9)),
        Tube(U_C, 1, 0.8, rows(6, 13, (101, 100, 141, 160), 0.8)),
    ]
    tubes_to_frame(tubes).to_parquet(tmp_path / "tubes.parquet", index=False)
    r = report("--gt", str(gt), "-d", str(tmp_path / "frames.csv"), "-d", str(tmp_path / "tubes.parquet"),
               "--protocol", "act")  # fmt: skip
    # frame (ACT): each class 10 GT boxes, ranked TP then FP -> (r .1, p 1), (r .1, p .5) -> AP 0.1; mAP 0.1
    assert r["frame_map"]["0.5"] == pytest.approx(0.1, rel=1e-6)
    # video: Basketball exact -> AP 1. Biking: spatial (+1) 40 * 61 / (2 * 41 * 61 - 40 * 61) = 0.952381, temporal
    #   (13-6+1)/(15-6+1) = 0.8 -> 0.761905: TP at 0.2, 0.5, 0.75 and 0.5..0.75 of 0.5:0.95, FP at 0.8..0.95 (4)
    #   -> mAP 1, 1, 1; over 0.5:0.95 (6 * 1 + 4 * 0.5) / 10 = 0.8
    assert r["video_map"] == {"0.2": pytest.approx(1.0), "0.5": pytest.approx(1.0), "0.75": pytest.approx(1.0)}
    assert r["video_map_ranges"] == {"0.5:0.95": pytest.approx(0.8)}


def test_pyannot_with_class_names_wrapper(tmp_path: Path) -> None:
    wrapped = {"db": pyannot(), "trainvideos": [np.str_(U_A)], "classes": ["Basketball", "Biking"]}
    path = write_pyannot(tmp_path, wrapped, "pyannot_with_class_names.pkl")
    ds = read_dense_ground_truth(path)  # classes and the train list from the file; test = the rest
    assert ds.labels == ("Basketball", "Biking") and ds.videos("train") == (U_A,) and ds.videos("test") == (U_B, U_C)
    # the wrapper can also be the "second file" that names the classes of a plain pyannot.pkl
    plain = read_pyannot(write_pyannot(tmp_path), classes=path)
    assert plain.labels == ds.labels


def _pyannot_error(tmp_path: Path, data: dict) -> str:
    path = write_pyannot(tmp_path, data)
    with pytest.raises(DenseFormatError) as err:
        read_pyannot(path, ["Basketball", "Biking"])
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    return str(err.value)[len(str(path)) + 2 :]


def test_pyannot_bad_input_messages(tmp_path: Path) -> None:
    assert _pyannot_error(tmp_path, pyannot(sf="0")) == (
        f"video '{U_B}' annotation 0: 'sf' must be an integer, got str '0'"
    )
    overflowed = np.tile(np.array([200 - 256, 10, 60, 40], dtype=np.int8), (10, 1))  # 200 stored in int8: -56
    assert _pyannot_error(tmp_path, pyannot(overflowed)) == (
        f"video '{U_B}' annotation 0: 'boxes' row 0 (frame 1) has x = -56, negative: a value that overflowed its "
        "integer type (int8)"
    )
    wrapped = np.tile(np.array([65500, 10, 60, 40], dtype=np.uint16), (10, 1))
    assert _pyannot_error(tmp_path, pyannot(wrapped)) == (
        f"video '{U_B}' annotation 0: 'boxes' row 0 (frame 1): x + w = 65560 beyond the frame's width 320 (uint16 "
        "values that overflowed, or pass the videos' resolution)"
    )
    long_video = pyannot(ef=300, boxes=np.tile(np.array([1, 1, 8, 8], np.uint8), (300, 1)))
    long_video[np.str_(U_B)]["numf"] = np.uint8(300 % 256)  # 300 frames written as uint8: 44
    assert _pyannot_error(tmp_path, long_video) == (
        f"video '{U_B}' annotation 0: 'ef' 300 is past the video's 'numf' 44 frames; 'numf' is uint8, which cannot "
        "hold 300: it overflowed its integer type"
    )
    assert _pyannot_error(tmp_path, pyannot(np.zeros((9, 4), np.uint8))) == (
        f"video '{U_B}' annotation 0: 'boxes' has shape (9, 4), expected (10, 4): x, y, w, h per frame sf..ef-1"
    )


def test_pyannot_as_gt_pkl_points_at_the_converter(tmp_path: Path) -> None:
    with pytest.raises(DenseDatasetError, match=r"looks like the corrected UCF101-24 annotations.*dense_formats"):
        read_dense_dataset(write_pyannot(tmp_path))


# ----------------------------------------------------------------------------------------------- bad input


def test_ground_truth_keys_of_the_wrong_type(tmp_path: Path) -> None:
    gt = pickle.loads(multisports_gt(tmp_path).read_bytes())
    gt["nframes"] = {0: 20, 1: 20}
    with pytest.raises(DenseDatasetError) as err:
        read_dense_dataset(dump(gt, tmp_path / "bad.pkl"))
    assert str(err.value) == f"{tmp_path / 'bad.pkl'}: 'nframes': video names must be strings, got int"
    with pytest.raises(DenseDatasetError) as err:
        read_dense_dataset(dump({**gt, 3: []}, tmp_path / "bad.pkl"))
    assert str(err.value) == f"{tmp_path / 'bad.pkl'}: top-level key 3 (int) is not a string"


def test_detection_pickles_of_the_wrong_shape_or_key_type(tmp_path: Path) -> None:
    ds = read_dense_dataset(multisports_gt(tmp_path))
    bad = dump(np.zeros((3, 7)), tmp_path / "f.pkl")
    with pytest.raises(DenseFormatError) as err:
        read_detections(bad, ds)
    assert str(err.value) == (
        f"{bad}: expected rows of 8 values ['video_index', 'frame', 'label', 'score', 'x1', 'y1', 'x2', 'y2'], "
        "got shape (3, 7)"
    )
    bad = dump({"0": [(A, 0.9, rows(1, 3, BOX_A, 0.9))]}, tmp_path / "v.pkl")
    with pytest.raises(DenseFormatError) as err:
        read_detections(bad, ds)
    assert str(err.value) == f"{bad}: label key '0' (str) is not an integer class index"
    bad = dump({0: [(A, 0.9, np.zeros((0, 6)))]}, tmp_path / "v.pkl")
    with pytest.raises(DenseFormatError, match="label 0 tube 0: expected tube rows"):
        read_detections(bad, ds)
    bad = dump({"boxes": [1, 2]}, tmp_path / "x.pkl")
    with pytest.raises(DenseFormatError, match="not a dense detection file: .* got a dict with keys"):
        read_detections(bad, ds)
    with pytest.raises(DenseFormatError, match="one video's MOC tube file"):
        read_detections(dump({0: [[rows(1, 3, BOX_A, 0.9), 0.9]]}, tmp_path / "t.pkl"), ds)


def test_cli_prints_one_line_for_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gt = multisports_gt(tmp_path)
    bad = dump(np.zeros((3, 7)), tmp_path / "f.pkl")
    with pytest.raises(SystemExit) as exit_:
        run(["dense-eval", "--gt", str(gt), "-d", str(bad), "--protocol", "multisports"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: {bad}: expected rows of 8 values ['video_index', 'frame', 'label', 'score', 'x1', 'y1', 'x2', "
        "'y2'], got shape (3, 7) (-v shows the traceback)"
    )
    result = CliRunner().invoke(app, ["dense-eval", "--gt", str(gt), "-d", str(bad), "--protocol", "voc"])
    assert result.exit_code == 2 and "'voc' is not one of 'multisports', 'act'" in result.output


def test_link_turns_frame_detections_into_tubes(tmp_path: Path) -> None:
    gt = multisports_gt(tmp_path)
    frame_rows = [np.array([0, f, 0, 0.9, *BOX_A]) for f in range(1, 21)]  # 20 frames of one box
    r = report("--gt", str(gt), "-d", str(dump(frame_rows, tmp_path / "f.pkl")), "--protocol", "multisports", "--link")
    # one 'push up' tube over frames 1..20 vs GT 1..10: temporal (10-1)/(20-1) = 9/19 = 0.47 -> TP at 0.2 (AP 1),
    #   FP at 0.5 (AP 0); 'dribble' has GT and no tube: AP 0 -> video-mAP 0.5 and 0
    assert r["tubes_linked"] and r["tubes"] == 1
    assert r["video_map"] == {"0.2": pytest.approx(0.5), "0.5": pytest.approx(0.0)}


def test_readers_agree_with_the_metrics_directly(tmp_path: Path) -> None:
    """The CLI adds nothing: the same numbers from the readers and frame_map / video_map."""
    gt = multisports_gt(tmp_path)
    frames, video = multisports_detections(tmp_path)
    ds = read_dense_dataset(gt)
    det = read_detections(frames, ds).frames
    tubes = tubes_from_video_detections(pickle.loads(video.read_bytes()), video)
    assert det is not None
    assert frame_map(ds, det, "multisports").overall == pytest.approx(0.075)
    assert video_map(ds, tubes, "multisports").ranges["0.1:0.9"] == pytest.approx(7.5 / 9)
    r = evaluate_dense_files(gt, [frames, video], "multisports")
    assert r["frame_map"]["0.5"] == pytest.approx(0.075)


def test_pyannot_structure_without_classes_is_refused() -> None:
    with pytest.raises(DenseFormatError, match="no class names"):
        dense_dataset_from_pyannot(pyannot(), source="p.pkl")


def test_dense_eval_imports_no_torch(tmp_path: Path) -> None:
    gt = multisports_gt(tmp_path)
    frames, _ = multisports_detections(tmp_path)
    code = (
        "import sys; from pipeline.cli import app; "
        f"app(['dense-eval', '--gt', {str(gt)!r}, '-d', {str(frames)!r}, '--protocol', 'multisports'], "
        "standalone_mode=False); "
        "print(sorted(m for m in ('torch', 'torchvision', 'zarr') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_flatten_gives_the_plain_video_names_the_layout_takes(tmp_path: Path) -> None:
    out = tmp_path / "data" / "dense" / "gt.pkl"
    assert main(["flatten", str(act_gt_python2(tmp_path)), "--out", str(out)]) == 0
    ds = read_dense_dataset(out)
    assert ds.videos("test") == ("Basketball__v_Basketball_g02_c01", "Biking__v_Biking_g01_c01")
    assert ds.videos("train") == ("Basketball__v_Basketball_g01_c01",)
    np.testing.assert_array_equal(ds.gttubes["Biking__v_Biking_g01_c01"][1][0], rows(1, 11, BOX_1))
    assert main(["flatten", str(multisports_gt(tmp_path)), "--out", str(out)]) == 0
    assert read_dense_dataset(out).absent == {"train_videos"}  # a test-only file stays test-only


def test_a_table_the_metrics_refuse_is_an_input_error(tmp_path: Path) -> None:
    gt = multisports_gt(tmp_path)
    table = tmp_path / "frames.csv"
    pd.DataFrame([(A, 1, 50, 10, 10, 50, 0, 0.9)], columns=DETECTION_COLUMNS).to_csv(table, index=False)
    with pytest.raises(DenseFormatError) as err:
        evaluate_dense_files(gt, [table], "multisports")
    assert str(err.value) == f"{table}: detection row 0 has an inverted box (x2 < x1 or y2 < y1)"
