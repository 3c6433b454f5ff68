"""Dense ground truth and detections in the formats the reference code writes and the data sets ship.

A researcher holds the references' files, not ours; these readers take them as they are (restricted unpickler,
never plain pickle) and hand back the project's structures: a :class:`~stages.data.act.DenseDataset`, per-frame
detections (``stages.metrics.tubes.DETECTION_COLUMNS``) and :class:`~stages.metrics.tubes.Tube` lists. Every
reader keeps the file's order, because the evaluators break score ties by input order.

Ground truth
    * ACT/MOC ``gt.pkl`` (MultiSports' ``multisports_GT.pkl``, also its test-only file; ACT's Python-2
      ``UCF101v2-GT.pkl`` and ``JHMDB-GT.pkl``): :func:`stages.data.act.read_dense_dataset`, as it is.
    * The corrected UCF101-24 annotations (``gurkirt/corrected-UCF101-Annots``, ``pyannot.pkl``): per video
      (``numpy.str_`` names) ``{"annotations": [{"sf", "ef", "label", "boxes"}, ...], "numf", "label"}``.
      ``sf`` is the tube's first frame counted from 0 and ``ef`` its exclusive end (frames ``sf .. ef-1``,
      image ``{f + 1:05d}.jpg``); ``boxes`` holds one row ``x, y, w, h`` per frame in pixels of the 320x240
      videos, stored as uint8 or uint16, so ``x + w`` must be computed in a wider type (250 + 60 is 54 in
      uint8); ``numf`` (uint8/uint16) is the frame count; ``label`` indexes a class list that is not in the
      file (``pyannot_with_class_names.pkl`` wraps the same dict under ``db`` with ``classes`` and
      ``trainvideos``). :func:`dense_dataset_from_pyannot` converts to ACT's convention: frames ``sf + 1 .. ef``
      (1-based, inclusive), boxes ``x1 = x, y1 = y, x2 = x + w, y2 = y + h`` in float64.

Detections
    * Per-frame rows ``[video_index, frame, label, score, x1, y1, x2, y2]`` (``FRAME_ROW_FIELDS``): MultiSports'
      ``frame_detections.pkl`` (an (N, 8) array or a list of 8-vectors) and MOC's (the same in float32);
      ``video_index`` counts from 0 in ``test_videos[split]``, frames from 1, labels from 0, boxes in pixels.
    * MultiSports' ``video_detections.pkl``: ``{label: [(video, tube score, rows), ...]}``, rows
      ``frame, x1, y1, x2, y2, box score``.
    * A MOC inference folder: ``<video>/<start frame:05d>.pkl`` tubelets ``{label + 1: (N, 4K + 1)}`` with
      rows ``(x1, y1, x2, y2) * K, score``; ``<video>_tubes.pkl`` from MOC's BuildTubes
      ``{label: [[rows (n, 6), score], ...]}``; ``frame_detections.pkl`` as above.
    * The project's tables, CSV or Parquet: per-frame detections (``DETECTION_COLUMNS``) or tube rows
      (``TUBE_ROW_COLUMNS``, what ``pipeline evaluate --dataset dense`` writes to ``tubes.parquet``).

``python -m stages.data.dense_formats pyannot pyannot.pkl --classes CLASSES --out <paths.data>/dense/gt.pkl``
writes the corrected UCF101-24 annotations as the ACT/MOC ``gt.pkl`` the pipeline reads; ``flatten GT --out``
(or ``--flat-names __``) renames ``class/video`` to ``class__video``, the plain names the video layout takes.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cache_spec.errors import InputError
from stages.data.act import (
    SPLIT_KEYS,
    DenseDataset,
    DenseDatasetError,
    dense_dataset_from_dict,
    dense_dataset_to_dict,
    looks_like_pyannot,
    write_dense_dataset,
)
from stages.data.safe_pickle import UnsafePickleError, load_pickle
from stages.metrics.tubes import DETECTION_COLUMNS, TUBE_ROW_COLUMNS, Tube, tubes_from_frame

logger = logging.getLogger(__name__)

FRAME_ROW_FIELDS = ("video_index", "frame", "label", "score", "x1", "y1", "x2", "y2")
UCF24_RESOLUTION = (240, 320)  # (height, width) of every UCF101 video; the corrected annotations do not store it
MOC_FRAME_NMS = 0.6  # MOC's load_frame_detections: per-frame soft rescoring threshold
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".parquet": None, ".pq": None}


class DenseFormatError(DenseDatasetError):
    """A dense detection or annotation file is malformed; the message starts with the file and names the key."""


# ----------------------------------------------------------------------------------------------- helpers


def _load(path: Path) -> Any:
    """Unpickle with the restricted unpickler; unreadable files become one-line errors naming them."""
    try:
        return load_pickle(path)
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError) as e:
        raise DenseFormatError(path, f"not a readable pickle ({type(e).__name__}: {e})") from e


def _text(obj: Any, source: Any, where: str) -> str:
    """A name as plain str (Python 2 byte strings decoded as latin-1, numpy.str_ unwrapped)."""
    if isinstance(obj, bytes):
        obj = obj.decode("latin-1")
    if not isinstance(obj, str):
        raise DenseFormatError(source, f"{where}: expected a name (string), got {type(obj).__name__} {obj!r}")
    return str(obj)


def _int(obj: Any, source: Any, where: str) -> int:
    """An integer (Python or numpy, not bool), or an error naming the key and what it holds."""
    if isinstance(obj, (bool, np.bool_)) or not isinstance(obj, (int, np.integer)):
        raise DenseFormatError(source, f"{where} must be an integer, got {type(obj).__name__} {obj!r}")
    return int(obj)


def _describe(obj: Any) -> str:
    if isinstance(obj, np.ndarray):
        return f"an array of shape {obj.shape} ({obj.dtype})"
    if isinstance(obj, Mapping):
        keys = list(obj)[:5]
        return f"a dict with keys {keys}{' ...' if len(obj) > 5 else ''}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items" + (f", the first {_describe(obj[0])}" if obj else "")
    return f"a {type(obj).__name__}"


# ----------------------------------------------------------------------------------------------- frame rows


def _rows_array(rows: Any, source: Any) -> np.ndarray:
    if isinstance(rows, (list, tuple)):
        if not rows:
            return np.zeros((0, 8))
        try:
            arr = np.stack([np.asarray(r) for r in rows])
        except ValueError as e:
            raise DenseFormatError(source, f"frame detection rows of different lengths ({e})") from None
    elif isinstance(rows, np.ndarray):
        arr = rows.reshape(0, 8) if rows.size == 0 else rows
    else:
        raise DenseFormatError(source, f"expected frame detection rows {list(FRAME_ROW_FIELDS)}, got {_describe(rows)}")
    if arr.ndim != 2 or arr.shape[1] != 8:
        raise DenseFormatError(source, f"expected rows of 8 values {list(FRAME_ROW_FIELDS)}, got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise DenseFormatError(source, f"frame detection rows are not numeric ({arr.dtype})") from None
    return arr


def frame_detections_from_rows(rows: Any, videos: Sequence[str], source: Any = None) -> pd.DataFrame:
    """Per-frame detections (``DETECTION_COLUMNS``) from rows ``FRAME_ROW_FIELDS``, ``video_index`` into ``videos``.

    The score keeps the file's dtype (MOC writes float32): the references rank ties with ``np.argsort`` on
    that array. A video index outside ``videos`` gets the name ``<test video i>``: the references count such
    rows as false positives, which the ``multisports`` protocol does too (``act`` ignores unknown videos).
    """
    arr = _rows_array(rows, source)
    if not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise DenseFormatError(source, f"row {i}: non-finite value in {arr[i].tolist()}")
    for col, name in ((0, "video_index"), (1, "frame"), (2, "label")):
        values = arr[:, col]
        bad = values != np.round(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DenseFormatError(source, f"row {i}: {name} {values[i]!r} is not an integer")
    if (arr[:, 1] < 1).any():
        i = int(np.flatnonzero(arr[:, 1] < 1)[0])
        raise DenseFormatError(source, f"row {i}: frame {int(arr[i, 1])} < 1 (frames count from 1)")
    index = arr[:, 0].astype(np.int64)
    inside = (index >= 0) & (index < len(videos))
    names = np.empty(len(index), dtype=object)
    if len(videos):
        names[inside] = np.asarray(videos, dtype=object)[index[inside]]
    names[~inside] = [f"<test video {i}>" for i in index[~inside]]
    if not inside.all():
        logger.warning(
            "%s: %d detection rows name video indices outside 0..%d (the %d test videos): scored as unknown videos",
            source,
            int((~inside).sum()),
            len(videos) - 1,
            len(videos),
        )
    score = arr[:, 3] if arr.dtype.kind == "f" else arr[:, 3].astype(np.float64)
    return pd.DataFrame(
        {
            "video": names,
            "frame": arr[:, 1].astype(np.int64),
            "x1": arr[:, 4].astype(np.float64),
            "y1": arr[:, 5].astype(np.float64),
            "x2": arr[:, 6].astype(np.float64),
            "y2": arr[:, 7].astype(np.float64),
            "label": arr[:, 2].astype(np.int64),
            "score": score,
        }
    )[DETECTION_COLUMNS]


# ----------------------------------------------------------------------------------------------- tubes


def _tube_rows(boxes: Any, source: Any, where: str) -> np.ndarray:
    """A tube's rows as float64 ``(n, 6)``: frame, x1, y1, x2, y2, box score (NaN where the file has none)."""
    try:
        rows = np.array(boxes, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DenseFormatError(source, f"{where}: tube boxes are not a numeric array ({e})") from None
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] < 5:
        raise DenseFormatError(
            source, f"{where}: expected tube rows (n, 6) of frame, x1, y1, x2, y2, score, got shape {rows.shape}"
        )
    if not np.isfinite(rows[:, :5]).all():
        raise DenseFormatError(source, f"{where}: non-finite frame or box")
    frames = rows[:, 0]
    if (frames != np.round(frames)).any() or (np.diff(frames) <= 0).any() or frames[0] < 1:
        raise DenseFormatError(source, f"{where}: frames must be increasing integers from 1, got {frames[:5]} ...")
    if rows.shape[1] == 5:
        rows = np.column_stack([rows, np.full(len(rows), np.nan)])
    return rows[:, :6]


def _label_key(key: Any, source: Any, where: str = "") -> int:
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
        raise DenseFormatError(source, f"{where}label key {key!r} ({type(key).__name__}) is not an integer class index")
    return int(key)


def _score(obj: Any, source: Any, where: str) -> float:
    try:
        value = float(obj)
    except (TypeError, ValueError):
        raise DenseFormatError(source, f"{where}: tube score {obj!r} is not a number") from None
    if not np.isfinite(value):
        raise DenseFormatError(source, f"{where}: tube score {value} is not finite")
    return value


def tubes_from_video_detections(obj: Any, source: Any = None) -> list[Tube]:
    """MultiSports' video detections ``{label: [(video, score, rows)]}`` (or a list indexed by label) as Tubes.

    Labels in the file's order, tubes in list order: the evaluator ranks each class's list with
    ``np.argsort(-score)``, so ties go to the earlier tube.
    """
    if isinstance(obj, Mapping):
        items = list(obj.items())
    elif isinstance(obj, (list, tuple)):
        items = list(enumerate(obj))
    else:
        raise DenseFormatError(source, f"expected a dict label -> list of (video, score, boxes), got {_describe(obj)}")
    tubes: list[Tube] = []
    for key, entries in items:
        label = _label_key(key, source)
        if not isinstance(entries, (list, tuple)):
            raise DenseFormatError(source, f"label {label}: expected a list of (video, score, boxes) tubes")
        for j, entry in enumerate(entries):
            where = f"label {label} tube {j}"
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                raise DenseFormatError(source, f"{where}: expected (video, score, boxes), got {_describe(entry)}")
            video, score, boxes = entry
            tubes.append(
                Tube(
                    _text(video, source, where),
                    label,
                    _score(score, source, where),
                    _tube_rows(boxes, source, where),
                )
            )
    return tubes


def moc_tube_path(folder: Path, video: str) -> Path:
    """Where MOC's BuildTubes writes a video's tubes."""
    return Path(folder) / f"{video}_tubes.pkl"


def read_moc_tubes(folder: str | Path, videos: Sequence[str]) -> list[Tube]:
    """MOC's BuildTubes output ``<folder>/<video>_tubes.pkl`` = ``{label: [[rows (n, 6), score], ...]}``.

    In the order ACT.py's videoAP gathers them: test videos in order, labels ascending, tubes in file order
    (its 3D NMS then keeps them in pick order; ``video_map`` does the same under ``act``).
    """
    folder = Path(folder)
    missing = [v for v in videos if not moc_tube_path(folder, v).is_file()]
    if missing:
        raise DenseFormatError(
            folder,
            f"no MOC tube file for {len(missing)} of {len(videos)} test videos (first: "
            f"{moc_tube_path(folder, missing[0])}); run MOC's `ACT.py --task BuildTubes` over this folder first, "
            "or pass --link to link its frame detections",
        )
    tubes: list[Tube] = []
    for v in videos:
        path = moc_tube_path(folder, v)
        res = _load(path)
        if not isinstance(res, Mapping):
            raise DenseFormatError(path, f"expected MOC's tubes {{label: [[rows, score], ...]}}, got {_describe(res)}")
        for key in sorted(res, key=lambda k: _label_key(k, path)):
            entries = res[key]
            if not isinstance(entries, (list, tuple)):
                raise DenseFormatError(path, f"label {key}: expected a list of [rows, score] tubes")
            for j, entry in enumerate(entries):
                where = f"label {key} tube {j}"
                if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                    raise DenseFormatError(path, f"{where}: expected [rows, score], got {_describe(entry)}")
                rows, score = entry
                tubes.append(Tube(v, int(key), _score(score, path, where), _tube_rows(rows, path, where)))
    logger.info("%s: %d MOC tubes of %d videos", folder, len(tubes), len(videos))
    return tubes


# ----------------------------------------------------------------------------------------------- MOC tubelets


def _moc_rescore(boxes: np.ndarray, overlap: float) -> np.ndarray:
    """MOC's per-frame ``nms2d``: scores down-weighted, nothing removed (float32 in, float32 out).

    Going down the scores, the current box multiplies the score of every remaining box whose IoU (``+1``
    pixel areas) with it exceeds ``overlap`` by ``1 - IoU``, and those boxes leave the suppressor list.
    """
    x1, y1, x2, y2, scores = (boxes[:, i] for i in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)[::-1]
    weight = np.ones_like(scores)
    while order.size > 0:
        i, rest = order[0], order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        hit = iou > overlap
        weight[rest[hit]] = 1 - iou[hit]
        order = rest[~hit]
    return scores * weight


def _tubelet_k(path: Path, dets: Any) -> int:
    if not isinstance(dets, Mapping) or not dets:
        raise DenseFormatError(path, f"expected MOC tubelets {{label + 1: (N, 4K + 1) array}}, got {_describe(dets)}")
    cols = np.asarray(next(iter(dets.values()))).shape[-1]
    if (cols - 1) % 4 or cols < 5:
        raise DenseFormatError(path, f"tubelet rows of {cols} values: expected 4K + 1 ((x1, y1, x2, y2) * K, score)")
    return (cols - 1) // 4


def read_moc_tubelets(folder: str | Path, dataset: DenseDataset, videos: Sequence[str]) -> pd.DataFrame:
    """Per-frame detections from MOC's tubelet files, as MOC's ``load_frame_detections`` builds them.

    Video ``v`` has one file per start frame ``i = 1 .. nframes - K + 1``: ``<folder>/<v>/<i:05d>.pkl`` =
    ``{label + 1: (N, 4K + 1)}``. Box ``k`` of a tubelet becomes a detection of frame ``i + k`` with the
    tubelet's score; then, per frame and label, MOC's soft rescoring at 0.6 (:func:`_moc_rescore`). Rows:
    videos in test order, frames ascending, within a frame by start frame, label key and row, in float32.
    """
    folder = Path(folder)
    num_labels = len(dataset.labels)
    first = folder / videos[0] / "00001.pkl" if videos else None
    if first is None or not first.is_file():
        raise DenseFormatError(folder, f"no MOC tubelet file {first}: MOC writes <video>/<start frame:05d>.pkl")
    k_len = _tubelet_k(first, _load(first))
    logger.info("%s: MOC tubelets of K = %d frames", folder, k_len)
    out: list[np.ndarray] = []
    for iv, v in enumerate(videos):
        n = dataset.nframes[v]
        per_frame: list[list[np.ndarray]] = [[] for _ in range(n + 1)]
        for start in range(1, n - k_len + 2):
            path = folder / v / f"{start:05d}.pkl"
            if not path.is_file():
                raise DenseFormatError(
                    path,
                    f"missing: MOC writes one tubelet file per start frame 1..{n - k_len + 1} of {v!r} (K = {k_len})",
                )
            dets = _load(path)
            if not isinstance(dets, Mapping):
                raise DenseFormatError(path, f"expected MOC tubelets {{label + 1: array}}, got {_describe(dets)}")
            for key, raw in dets.items():
                label = _label_key(key, path)
                if not 1 <= label <= num_labels:
                    raise DenseFormatError(
                        path, f"label key {label} outside 1..{num_labels} (MOC counts labels from 1)"
                    )
                a = np.asarray(raw)
                if a.ndim != 2 or a.shape[1] != 4 * k_len + 1 or a.dtype.kind not in "iuf":
                    raise DenseFormatError(
                        path, f"label {label}: expected numeric (N, {4 * k_len + 1}) tubelets, got {_describe(a)}"
                    )
                a = a.astype(np.float32)
                for k in range(k_len):
                    per_frame[start + k].append(
                        np.column_stack([a[:, 4 * k : 4 * k + 4], a[:, -1], np.full(len(a), label - 1)])
                    )
        for f in range(1, n + 1):
            if not per_frame[f]:
                continue
            d = np.concatenate(per_frame[f]).astype(np.float32)
            for c in range(num_labels):
                mask = d[:, 5] == c
                if mask.any():
                    d[mask, 4] = _moc_rescore(d[mask, :5], MOC_FRAME_NMS)
            ones = np.ones(len(d), dtype=np.float32)
            out.append(np.column_stack([iv * ones, f * ones, d[:, 5], d[:, 4], d[:, :4]]))
    rows = np.concatenate(out).astype(np.float32) if out else np.zeros((0, 8), np.float32)
    logger.info("%s: %d per-frame detections from MOC tubelets of %d videos", folder, len(rows), len(videos))
    return frame_detections_from_rows(rows, videos, folder)


# ----------------------------------------------------------------------------------------------- tables


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV / TSV / Parquet table (video names kept as strings)."""
    path = Path(path)
    sep = TABLE_SUFFIXES.get(path.suffix.lower(), ",")
    try:
        if sep is None:
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=sep, dtype={"video": str})
    except (ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DenseFormatError(path, f"not a readable table ({type(e).__name__}: {e})") from e


def _from_table(table: pd.DataFrame, path: Path) -> DenseDetections:
    if all(c in table.columns for c in TUBE_ROW_COLUMNS):
        try:
            tubes = tubes_from_frame(table)
            for i, t in enumerate(tubes):
                _tube_rows(t.boxes, path, f"tube {i} ({t.video!r}, label {t.label})")
        except (ValueError, TypeError) as e:
            if isinstance(e, DenseFormatError):
                raise
            raise DenseFormatError(path, f"bad tube rows ({e})") from e
        return DenseDetections(tubes=tubes, formats=(f"{path} (tube table, {len(tubes)} tubes)",))
    if all(c in table.columns for c in DETECTION_COLUMNS):
        frames = table[DETECTION_COLUMNS].reset_index(drop=True)
        frames["video"] = frames["video"].astype(str)
        return DenseDetections(frames=frames, formats=(f"{path} (frame detection table, {len(frames)} rows)",))
    raise DenseFormatError(
        path,
        f"columns {list(table.columns)}: a tube table has {TUBE_ROW_COLUMNS}, "
        f"a frame detection table {DETECTION_COLUMNS}",
    )


# ----------------------------------------------------------------------------------------------- sniffing


@dataclass(frozen=True)
class DenseDetections:
    """What detection files hold: per-frame detections and/or tubes, and a line per file saying what it was."""

    frames: pd.DataFrame | None = None
    tubes: list[Tube] | None = None
    formats: tuple[str, ...] = ()


def detection_kind(obj: Any) -> str | None:
    """What an unpickled detection object is: "frame", "video", "moc_tubes", "moc_tubelets" or None."""
    if isinstance(obj, np.ndarray):
        return "frame"
    if isinstance(obj, (list, tuple)):
        first = obj[0] if obj else None
        if first is None or isinstance(first, np.ndarray):
            return "frame"  # MultiSports' list of (8,) rows, or an empty list
        if isinstance(first, (list, tuple)) and not (first and isinstance(first[0], (list, tuple))):
            return "frame"  # rows as lists of numbers
        obj = dict(enumerate(obj))  # a list indexed by label
    if isinstance(obj, Mapping):
        values = [v for v in obj.values() if not (isinstance(v, (list, tuple)) and not v)]
        if not values:
            return "video"
        first = values[0]
        if isinstance(first, np.ndarray):
            return "moc_tubelets"
        if isinstance(first, (list, tuple)) and isinstance(first[0], (list, tuple)):
            return {3: "video", 2: "moc_tubes"}.get(len(first[0]))
    return None


def _read_moc_folder(folder: Path, dataset: DenseDataset, videos: Sequence[str]) -> DenseDetections:
    frames: pd.DataFrame | None = None
    tubes: list[Tube] | None = None
    formats: list[str] = []
    rows_file = folder / "frame_detections.pkl"
    if rows_file.is_file():  # ACT.py's frameAP reads it when present
        frames = frame_detections_from_rows(_load(rows_file), videos, rows_file)
        formats.append(f"{rows_file} (MOC frame detections, {len(frames)} rows)")
    elif videos and (folder / videos[0] / "00001.pkl").is_file():
        frames = read_moc_tubelets(folder, dataset, videos)
        formats.append(f"{folder} (MOC tubelets -> {len(frames)} frame detections)")
    if any(moc_tube_path(folder, v).is_file() for v in videos):
        tubes = read_moc_tubes(folder, videos)
        formats.append(f"{folder} (MOC tubes, {len(tubes)})")
    if frames is None and tubes is None:
        raise DenseFormatError(
            folder,
            "no MOC output for the test videos here: expected frame_detections.pkl, tubelet files "
            f"<video>/00001.pkl or <video>_tubes.pkl (first test video {videos[0] if videos else None!r})",
        )
    return DenseDetections(frames=frames, tubes=tubes, formats=tuple(formats))


def read_detections(path: str | Path, dataset: DenseDataset, split: int = 0) -> DenseDetections:
    """One detection file (or MOC folder) in any format of the module docstring, against ``dataset``'s test
    videos of the 0-based ``split`` (the index space of frame rows)."""
    path = Path(path)
    videos = dataset.videos("test", split)
    if path.is_dir():
        return _read_moc_folder(path, dataset, videos)
    if path.suffix.lower() in TABLE_SUFFIXES:
        return _from_table(read_table(path), path)
    obj = _load(path)
    kind = detection_kind(obj)
    if kind == "frame":
        frames = frame_detections_from_rows(obj, videos, path)
        return DenseDetections(frames=frames, formats=(f"{path} (frame detection rows, {len(frames)})",))
    if kind == "video":
        tubes = tubes_from_video_detections(obj, path)
        return DenseDetections(tubes=tubes, formats=(f"{path} (MultiSports video detections, {len(tubes)} tubes)",))
    if kind in ("moc_tubes", "moc_tubelets"):
        what = "tube file (BuildTubes output)" if kind == "moc_tubes" else "tubelet file"
        raise DenseFormatError(path, f"one video's MOC {what}: pass the MOC inference folder that holds them all")
    raise DenseFormatError(
        path,
        f"not a dense detection file: expected frame rows {list(FRAME_ROW_FIELDS)} (an (N, 8) array or a list), "
        f"MultiSports video detections {{label: [(video, score, boxes)]}}, a MOC inference folder or a "
        f"CSV/Parquet table; got {_describe(obj)}",
    )


def read_dense_detections(paths: Sequence[str | Path], dataset: DenseDataset, split: int = 0) -> DenseDetections:
    """Several detection files merged: at most one may give per-frame detections and one tubes."""
    frames: pd.DataFrame | None = None
    tubes: list[Tube] | None = None
    formats: list[str] = []
    for path in paths:
        one = read_detections(path, dataset, split)
        for name, mine, theirs in (("per-frame detections", frames, one.frames), ("tubes", tubes, one.tubes)):
            if mine is not None and theirs is not None:
                raise DenseFormatError(path, f"a second source of {name} (after {formats}): pass one")
        frames = one.frames if one.frames is not None else frames
        tubes = one.tubes if one.tubes is not None else tubes
        formats.extend(one.formats)
    return DenseDetections(frames=frames, tubes=tubes, formats=tuple(formats))


# ----------------------------------------------------------------------------------------------- UCF101-24


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file (one per line) or a pickle (a list, or a dict with ``classes``)."""
    path = Path(path)
    if path.suffix.lower() in (".pkl", ".pickle"):
        obj = _load(path)
        names = obj.get("classes") if isinstance(obj, Mapping) else obj
        if not isinstance(names, (list, tuple)):
            raise DenseFormatError(
                path, f"expected a list of class names or a dict with 'classes', got {_describe(obj)}"
            )
        return [_text(n, path, f"class {i}") for i, n in enumerate(names)]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_video_list(path: str | Path) -> list[str]:
    """A split list (``testlist01.txt``): one video name per line, e.g. ``Basketball/v_Basketball_g01_c01``."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def _pyannot_tube(
    ann: Any, v: str, j: int, numf: int, numf_raw: Any, classes: Sequence[str], hw: tuple[int, int], source: Any
) -> tuple[int, np.ndarray]:
    """One corrected-UCF101-24 tube as ``(label, rows (frame 1-based, x1, y1, x2, y2))``."""
    where = f"video {v!r} annotation {j}"
    if not isinstance(ann, Mapping):
        raise DenseFormatError(source, f"{where}: expected a dict with 'sf', 'ef', 'label', 'boxes'")
    missing = [k for k in ("sf", "ef", "label", "boxes") if k not in ann]
    if missing:
        raise DenseFormatError(source, f"{where}: missing key(s) {missing}; a tube has 'sf', 'ef', 'label', 'boxes'")
    sf, ef = _int(ann["sf"], source, f"{where}: 'sf'"), _int(ann["ef"], source, f"{where}: 'ef'")
    label = _int(ann["label"], source, f"{where}: 'label'")
    if not 0 <= sf < ef:
        raise DenseFormatError(
            source,
            f"{where}: 'sf' {sf}, 'ef' {ef}: need 0 <= sf < ef (sf the first frame from 0, ef the end, excluded)",
        )
    if ef > numf:
        overflow = ""
        if isinstance(numf_raw, np.integer) and ef > np.iinfo(numf_raw.dtype).max:
            overflow = f"; 'numf' is {numf_raw.dtype}, which cannot hold {ef}: it overflowed its integer type"
        raise DenseFormatError(source, f"{where}: 'ef' {ef} is past the video's 'numf' {numf} frames{overflow}")
    if not 0 <= label < len(classes):
        raise DenseFormatError(source, f"{where}: 'label' {label} outside 0..{len(classes) - 1} (the class names)")
    boxes = ann["boxes"]
    arr = np.asarray(boxes)
    if arr.dtype.kind not in "iuf":
        raise DenseFormatError(source, f"{where}: 'boxes' must be numeric x, y, w, h rows, got {_describe(arr)}")
    if arr.shape != (ef - sf, 4):
        raise DenseFormatError(
            source, f"{where}: 'boxes' has shape {arr.shape}, expected ({ef - sf}, 4): x, y, w, h per frame sf..ef-1"
        )
    wide = arr.astype(np.int64) if arr.dtype.kind in "iu" else arr.astype(np.float64)  # never add w to x in uint8
    if arr.dtype.kind == "f" and not np.isfinite(wide).all():
        raise DenseFormatError(source, f"{where}: 'boxes' holds non-finite values")
    if (wide < 0).any():
        r, c = (int(i[0]) for i in np.nonzero(wide < 0))
        cause = f": a value that overflowed its integer type ({arr.dtype})" if arr.dtype.kind == "i" else ""
        raise DenseFormatError(
            source,
            f"{where}: 'boxes' row {r} (frame {sf + r + 1}) has {'xywh'[c]} = {wide[r, c]}, negative{cause}",
        )
    x2, y2 = wide[:, 0] + wide[:, 2], wide[:, 1] + wide[:, 3]
    for end, limit, what in ((x2, hw[1], "x + w"), (y2, hw[0], "y + h")):
        if (end > limit).any():
            r = int(np.flatnonzero(end > limit)[0])
            raise DenseFormatError(
                source,
                f"{where}: 'boxes' row {r} (frame {sf + r + 1}): {what} = {end[r]} beyond the frame's "
                f"{'width' if what == 'x + w' else 'height'} {limit} ({arr.dtype} values that overflowed, "
                "or pass the videos' resolution)",
            )
    frames = np.arange(sf + 1, ef + 1, dtype=np.float64)  # 0-based sf .. ef-1 -> ACT's 1-based sf+1 .. ef
    rows = np.column_stack([frames, wide[:, 0], wide[:, 1], x2, y2]).astype(np.float64)
    return label, rows


def dense_dataset_from_pyannot(
    data: Any,
    classes: Sequence[str] | None = None,
    train_videos: Sequence[str] | None = None,
    test_videos: Sequence[str] | None = None,
    resolution: tuple[int, int] = UCF24_RESOLUTION,
    source: str | Path | None = None,
) -> DenseDataset:
    """The corrected UCF101-24 annotations (``pyannot.pkl``, or its ``db``/``classes``/``trainvideos`` wrapper)
    as a :class:`DenseDataset` in ACT's conventions (see the module docstring).

    ``classes`` defaults to the file's own ``classes``; ``train_videos`` to its ``trainvideos``. Given one list,
    the other subset is the rest of the annotated videos; given none, every video is a test video.
    Listed videos without annotations (the corrected set dropped 9) are left out with a warning.
    """
    if not isinstance(data, Mapping):
        raise DenseFormatError(
            source, f"expected a dict video -> {{'annotations', 'numf', 'label'}}, got {_describe(data)}"
        )
    db = data
    if isinstance(data.get("db"), Mapping):
        db = data["db"]
        classes = classes if classes is not None else data.get("classes")
        if train_videos is None and data.get("trainvideos") is not None:
            train_videos = [_text(v, source, "'trainvideos'") for v in data["trainvideos"]]
    if classes is None:
        raise DenseFormatError(
            source, "no class names: pass them (a text file, one per line, or a pickle with 'classes')"
        )
    classes = [_text(c, source, f"class {i}") for i, c in enumerate(classes)]
    hw = (int(resolution[0]), int(resolution[1]))
    nframes: dict[str, int] = {}
    gttubes: dict[str, dict[int, list[np.ndarray]]] = {}
    for key, entry in db.items():
        v = _text(key, source, "video key")
        if not isinstance(entry, Mapping) or "annotations" not in entry or "numf" not in entry:
            raise DenseFormatError(
                source, f"video {v!r}: expected a dict with 'annotations' and 'numf', got {_describe(entry)}"
            )
        numf = _int(entry["numf"], source, f"video {v!r}: 'numf'")
        if numf < 1:
            raise DenseFormatError(source, f"video {v!r}: 'numf' {numf} is not a frame count")
        anns = entry["annotations"]
        if not isinstance(anns, (list, tuple)):
            raise DenseFormatError(source, f"video {v!r}: 'annotations' must be a list of tubes, got {_describe(anns)}")
        tubes: dict[int, list[np.ndarray]] = {}
        for j, ann in enumerate(anns):
            label, rows = _pyannot_tube(ann, v, j, numf, entry["numf"], classes, hw, source)
            tubes.setdefault(label, []).append(rows)
        nframes[v], gttubes[v] = numf, tubes

    names = list(nframes)
    if train_videos is None and test_videos is None:
        logger.warning(
            "%s: no split lists: all %d videos are test videos (pass a train or test list)", source, len(names)
        )
        test_videos = names
    elif test_videos is None:
        train_set = {str(v) for v in train_videos or ()}
        test_videos = [v for v in names if v not in train_set]
    elif train_videos is None:  # the corrected set ships testlist01.txt only: train on the rest
        test_set = {str(v) for v in test_videos}
        train_videos = [v for v in names if v not in test_set]
    lists: dict[str, list[list[str]]] = {}
    for key, listed in (("train_videos", train_videos), ("test_videos", test_videos)):
        if listed is None:
            continue
        names_listed = [str(v) for v in listed]
        kept = [v for v in names_listed if v in nframes]
        if len(kept) < len(names_listed):
            dropped = [v for v in names_listed if v not in nframes]
            logger.warning(
                "%s: %d video(s) of the %s list have no annotations, left out (first %r)",
                source,
                len(dropped),
                key,
                dropped[0],
            )
        lists[key] = [kept]
    out: dict[str, Any] = {
        "labels": classes,
        **lists,
        "nframes": nframes,
        "resolution": dict.fromkeys(nframes, hw),
        "gttubes": gttubes,
    }
    return dense_dataset_from_dict(out, source)


def read_pyannot(
    path: str | Path,
    classes: Sequence[str] | str | Path | None = None,
    train_list: str | Path | None = None,
    test_list: str | Path | None = None,
    resolution: tuple[int, int] = UCF24_RESOLUTION,
) -> DenseDataset:
    """Read ``pyannot.pkl`` (or ``pyannot_with_class_names.pkl``); ``classes`` a list or a file of names,
    ``train_list`` / ``test_list`` split files such as ``testlist01.txt``."""
    path = Path(path)
    names = read_class_names(classes) if isinstance(classes, (str, Path)) else classes
    ds = dense_dataset_from_pyannot(
        _load(path),
        names,
        read_video_list(train_list) if train_list is not None else None,
        read_video_list(test_list) if test_list is not None else None,
        resolution,
        path,
    )
    logger.info("%s: %d classes, %d videos, %d test", path, len(ds.labels), len(ds.nframes), len(ds.videos("test")))
    return ds


def read_dense_ground_truth(
    path: str | Path, classes: Sequence[str] | str | Path | None = None, resolution: tuple[int, int] = UCF24_RESOLUTION
) -> DenseDataset:
    """A ground-truth file as it comes: an ACT/MOC ``gt.pkl``, or corrected UCF101-24 annotations (converted)."""
    path = Path(path)
    data = _load(path)
    if isinstance(data, Mapping) and "gttubes" not in data and looks_like_pyannot(data):
        names = read_class_names(classes) if isinstance(classes, (str, Path)) else classes
        return dense_dataset_from_pyannot(data, names, resolution=resolution, source=path)
    ds = dense_dataset_from_dict(data, path)
    logger.info("%s: %d labels, %d videos", path, len(ds.labels), len(ds.nframes))
    return ds


# ----------------------------------------------------------------------------------------------- names


def flatten_video_names(ds: DenseDataset, sep: str = "__") -> DenseDataset:
    """The same ground truth with ``class/video`` names as ``class<sep>video``.

    The shipped files name videos by their folder (``Basketball/v_Basketball_g01_c01``); the pipeline's video
    layout takes plain names only (``stages.data.layout.plain_video_id``), so its copy of the ground truth is
    flattened and the frame folders are linked under the flat names. ``dense-eval`` needs no such copy.
    """
    rename = {v: v.replace("/", sep) for v in ds.nframes}
    flat = list(rename.values())
    if len(set(flat)) < len(flat):
        clash = next(v for v in flat if flat.count(v) > 1)
        raise DenseFormatError(ds.source, f"two videos flatten to {clash!r}: choose another separator than {sep!r}")
    data = dense_dataset_to_dict(ds)
    for key in SPLIT_KEYS:
        if key in data:
            data[key] = [[rename[v] for v in split] for split in data[key]]
    for key in ("nframes", "resolution", "gttubes"):
        data[key] = {rename[v]: value for v, value in data[key].items()}
    return dense_dataset_from_dict(data, ds.source)


# ----------------------------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stages.data.dense_formats pyannot|flatten ...``: write a ground truth the pipeline reads."""
    parser = argparse.ArgumentParser(
        prog="python -m stages.data.dense_formats",
        description="Convert dense ground truth into the ACT/MOC gt.pkl that <paths.data>/dense/gt.pkl holds.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pyannot", help="the corrected UCF101-24 annotations (pyannot.pkl) -> gt.pkl")
    p.add_argument("annotations", type=Path, help="pyannot.pkl or pyannot_with_class_names.pkl")
    p.add_argument("--classes", type=Path, help="class names: text, one per line, or a pickle with 'classes'")
    p.add_argument("--train-list", type=Path, help="train videos, one per line (default: the file's trainvideos)")
    p.add_argument("--test-list", type=Path, help="test videos, one per line, e.g. testlist01.txt")
    p.add_argument("--resolution", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), default=UCF24_RESOLUTION)
    p.add_argument("--out", type=Path, required=True, help="the gt.pkl to write, e.g. data/ucf24/dense/gt.pkl")
    flat = sub.add_parser("flatten", help="an ACT/MOC gt.pkl with class/video names as class__video")
    flat.add_argument("ground_truth", type=Path, help="multisports_GT.pkl, UCF101v2-GT.pkl, JHMDB-GT.pkl, ...")
    flat.add_argument("--out", type=Path, required=True, help="the gt.pkl to write")
    for q in (p, flat):
        q.add_argument("--flat-names", dest="sep", default=None if q is p else "__", help="separator for '/'")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "pyannot":
            ds = read_pyannot(args.annotations, args.classes, args.train_list, args.test_list, tuple(args.resolution))
        else:
            ds = read_dense_ground_truth(args.ground_truth)
        if args.sep:
            ds = flatten_video_names(ds, args.sep)
    except (InputError, FileNotFoundError) as e:
        logger.error("%s", " ".join(str(e).split()))
        return 2
    write_dense_dataset(ds, args.out)
    splits = {k: len(ds.videos(k)) for k in ("train", "test") if f"{k}_videos" not in ds.absent}
    logger.info("wrote %s: %d labels, %d videos, %s", args.out, len(ds.labels), len(ds.nframes), splits)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
