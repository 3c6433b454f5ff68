"""Reader and writer for the ACT/MOC ground-truth pickle used by MultiSports, UCF101-24 and JHMDB.

The pickle is a dict with ``labels`` (class names, index = label id), ``train_videos`` / ``test_videos``
(one list of video names per split: 3 splits for JHMDB, 1 for UCF101-24 and MultiSports), ``nframes``
(video -> frame count), ``resolution`` (video -> (height, width)) and ``gttubes`` (video -> label id ->
list of tubes, each an array of rows ``(frame, x1, y1, x2, y2)`` in pixels with 1-based frames).

A file needs only the split lists it is read for: MultiSports ships its test-set ground truth without
``train_videos``, and evaluating it needs none. Such a file reads; asking it for the absent subset raises a
:class:`DenseDatasetError` naming the file and the key. Python 2 pickles (ACT's ``UCF101v2-GT.pkl``,
``JHMDB-GT.pkl``) read too: their byte strings are decoded as latin-1, as MOC's loader does.

Files come from users, so they are read with :func:`stages.data.safe_pickle.load_pickle` (nothing in them is
executed) and validated up front: every error names the file and the offending video / label / tube,
which is what one needs to fix a 3,000-video annotation by hand. Evaluation code downstream assumes what
is checked here (frames sorted, inside the video, boxes not inverted) instead of re-checking it.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cache_spec.errors import InputError
from stages.data.safe_pickle import UnsafePickleError, load_pickle

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("labels", "train_videos", "test_videos", "nframes", "resolution", "gttubes")
SPLIT_KEYS = ("train_videos", "test_videos")  # at least one; each only where its subset is read
_SUBSET_KEYS = {"train": "train_videos", "test": "test_videos"}
GT_BOX_COLUMNS = ["video", "frame", "label", "tube", "x1", "y1", "x2", "y2"]


class DenseDatasetError(InputError, ValueError):
    """The ground-truth pickle is malformed; the message starts with the file and names the video/label/tube."""

    def __init__(self, source: str | Path | None, message: str) -> None:
        self.source = str(source) if source is not None else "<memory>"
        super().__init__(f"{self.source}: {message}")


@dataclass(frozen=True, eq=False)  # eq would compare dicts of arrays, which numpy refuses
class DenseDataset:
    """An ACT/MOC-format dense-annotation data set (MultiSports, UCF101-24, JHMDB), validated.

    ``gttubes[video][label]`` is a list of float64 arrays ``(n, 5)``: frame (1-based, strictly increasing),
    x1, y1, x2, y2 in pixels. ``resolution[video]`` is ``(height, width)`` as in the original pickles.
    Splits are 0-based here (MOC's ``--split 1`` is ``split=0``). ``absent`` names the split keys the file
    did not have (their lists are empty here); :meth:`videos` refuses those subsets.
    """

    labels: tuple[str, ...]
    train_videos: tuple[tuple[str, ...], ...]
    test_videos: tuple[tuple[str, ...], ...]
    nframes: dict[str, int]
    resolution: dict[str, tuple[int, int]]
    gttubes: dict[str, dict[int, list[np.ndarray]]]
    source: str | None = None
    absent: frozenset[str] = frozenset()

    @property
    def num_splits(self) -> int:
        return len(self.train_videos if "test_videos" in self.absent else self.test_videos)

    def videos(self, subset: str = "test", split: int = 0) -> tuple[str, ...]:
        """The video list of ``subset`` ("train" or "test") for the 0-based ``split``."""
        lists = {"train": self.train_videos, "test": self.test_videos}.get(subset)
        if lists is None:
            raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
        key = _SUBSET_KEYS[subset]
        if key in self.absent:
            has = [k for k in SPLIT_KEYS if k not in self.absent]
            raise DenseDatasetError(
                self.source,
                f"no '{key}' in this file (it has {has} only), so its {subset} split cannot be read; "
                "MultiSports' test-set ground truth has no train list: train from the train/val file",
            )
        if not 0 <= split < len(lists):
            raise ValueError(f"{self.source or '<memory>'}: split {split} out of range: {len(lists)} split(s)")
        return lists[split]

    def gt_boxes(self, videos: Sequence[str]) -> pd.DataFrame:
        """Ground-truth boxes of ``videos`` as rows ``GT_BOX_COLUMNS``.

        Row order is the evaluators' order (videos as given, labels ascending, tubes in list order, rows in
        tube order), which decides which of two equally overlapping boxes a detection takes.
        ``tube`` is the index of the tube within its (video, label) list.
        """
        parts: list[np.ndarray] = []
        meta: list[tuple[int, int, int, int]] = []  # (video index, label, tube index, rows)
        for iv, v in enumerate(videos):
            for label in sorted(self.gttubes.get(v, {})):
                for it, tube in enumerate(self.gttubes[v][label]):
                    parts.append(tube)
                    meta.append((iv, label, it, len(tube)))
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype=np.float64) for c in GT_BOX_COLUMNS}).astype(
                {"video": object, "frame": np.int64, "label": np.int64, "tube": np.int64}
            )
        rows = np.concatenate(parts, axis=0)
        counts = np.array([m[3] for m in meta])
        video_names = np.asarray(videos, dtype=object)
        return pd.DataFrame(
            {
                "video": np.repeat(video_names[[m[0] for m in meta]], counts),
                "frame": rows[:, 0].astype(np.int64),
                "label": np.repeat([m[1] for m in meta], counts).astype(np.int64),
                "tube": np.repeat([m[2] for m in meta], counts).astype(np.int64),
                "x1": rows[:, 1],
                "y1": rows[:, 2],
                "x2": rows[:, 3],
                "y2": rows[:, 4],
            }
        )


# ----------------------------------------------------------------------------------------------- validation


def _video_name(obj: Any, source: str | Path | None, where: str) -> str:
    if isinstance(obj, bytes):  # Python 2 str read without an encoding
        obj = obj.decode("latin-1")
    if not isinstance(obj, str):
        raise DenseDatasetError(source, f"{where}: video names must be strings, got {type(obj).__name__}")
    return str(obj)  # numpy.str_ (the corrected UCF101-24 files) -> str


def _splits(obj: Any, key: str, source: str | Path | None) -> tuple[tuple[str, ...], ...]:
    if not isinstance(obj, (list, tuple)) or not obj or not all(isinstance(s, (list, tuple)) for s in obj):
        raise DenseDatasetError(source, f"'{key}' must be a non-empty list of per-split video lists")
    return tuple(tuple(_video_name(v, source, f"'{key}'[{i}]") for v in s) for i, s in enumerate(obj))


def _check_tube(arr: Any, video: str, label: int, index: int, nframes: int, source: str | Path | None) -> np.ndarray:
    """One tube as a float64 ``(n, 5)`` array, or an error naming it."""
    where = f"video {video!r} label {label} tube {index}"
    try:
        tube = np.array(arr, dtype=np.float64)  # a copy: the caller's arrays stay untouched
    except (TypeError, ValueError) as e:
        raise DenseDatasetError(source, f"{where}: not a numeric array ({e})") from None
    if tube.ndim != 2 or tube.shape[1] < 5 or tube.shape[0] == 0:
        raise DenseDatasetError(source, f"{where}: expected a non-empty (n, 5) array, got shape {tube.shape}")
    tube = tube[:, :5]
    if not np.isfinite(tube).all():
        raise DenseDatasetError(source, f"{where}: non-finite values")
    frames = tube[:, 0]
    if (frames != np.round(frames)).any():
        raise DenseDatasetError(source, f"{where}: frame numbers must be integers")
    bad = (frames < 1) | (frames > nframes)
    if bad.any():
        raise DenseDatasetError(
            source, f"{where}: frame {int(frames[bad][0])} outside 1..{nframes} (the video's nframes)"
        )
    if tube.shape[0] > 1 and (np.diff(frames) <= 0).any():
        i = int(np.flatnonzero(np.diff(frames) <= 0)[0])
        raise DenseDatasetError(
            source, f"{where}: frames must be strictly increasing (frame {int(frames[i + 1])} after {int(frames[i])})"
        )
    inverted = (tube[:, 3] < tube[:, 1]) | (tube[:, 4] < tube[:, 2])
    if inverted.any():
        i = int(np.flatnonzero(inverted)[0])
        raise DenseDatasetError(
            source, f"{where}: frame {int(frames[i])}: inverted box (x2 < x1 or y2 < y1): {tube[i, 1:].tolist()}"
        )
    return tube


def looks_like_pyannot(data: Mapping) -> bool:
    """The corrected UCF101-24 annotations (``pyannot.pkl``): video -> {annotations, numf, label}, or under 'db'."""
    db = data.get("db", data)
    first = next(iter(db.values()), None) if isinstance(db, Mapping) else None
    return isinstance(first, Mapping) and "annotations" in first


def dense_dataset_from_dict(data: Any, source: str | Path | None = None) -> DenseDataset:
    """Validate the unpickled ground-truth dict and build a :class:`DenseDataset` from it.

    ``train_videos`` and ``test_videos`` may each be absent (not both): see :attr:`DenseDataset.absent`.
    """
    if not isinstance(data, Mapping):
        raise DenseDatasetError(source, f"expected a dict at the top level, got {type(data).__name__}")
    bad_keys = [k for k in data if not isinstance(k, (str, bytes))]
    if bad_keys:
        raise DenseDatasetError(source, f"top-level key {bad_keys[0]!r} ({type(bad_keys[0]).__name__}) is not a string")
    data = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in data.items()}
    absent = frozenset(k for k in SPLIT_KEYS if k not in data)
    missing = [k for k in REQUIRED_KEYS if k not in data and (k not in SPLIT_KEYS or absent == set(SPLIT_KEYS))]
    if missing:
        hint = ""
        if looks_like_pyannot(data):
            hint = (
                " (this looks like the corrected UCF101-24 annotations, pyannot.pkl: convert them with "
                "`python -m stages.data.dense_formats pyannot FILE --classes CLASSES --out gt.pkl`)"
            )
        raise DenseDatasetError(
            source,
            f"missing key(s) {missing}; an ACT/MOC pickle has {list(REQUIRED_KEYS)} "
            f"(a split list only where its subset is read){hint}",
        )

    raw_labels = data["labels"]
    if not isinstance(raw_labels, (list, tuple)):
        raise DenseDatasetError(source, "'labels' must be a list of class names")
    labels = tuple(lab.decode("latin-1") if isinstance(lab, bytes) else str(lab) for lab in raw_labels)
    train = _splits(data["train_videos"], "train_videos", source) if "train_videos" not in absent else ()
    test = _splits(data["test_videos"], "test_videos", source) if "test_videos" not in absent else ()
    if not absent and len(train) != len(test):
        raise DenseDatasetError(source, f"{len(train)} train split(s) but {len(test)} test split(s)")

    for key in ("nframes", "resolution", "gttubes"):
        if not isinstance(data[key], Mapping):
            raise DenseDatasetError(source, f"'{key}' must be a dict keyed by video name")
    nframes: dict[str, int] = {}
    for v, n in data["nframes"].items():
        v = _video_name(v, source, "'nframes'")
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
            raise DenseDatasetError(source, f"video {v!r}: nframes must be a positive integer, got {n!r}")
        nframes[v] = int(n)
    resolution: dict[str, tuple[int, int]] = {}
    for v, hw in data["resolution"].items():
        v = _video_name(v, source, "'resolution'")
        try:
            h, w = (int(x) for x in hw)
        except (TypeError, ValueError):
            raise DenseDatasetError(source, f"video {v!r}: resolution must be (height, width), got {hw!r}") from None
        if h < 1 or w < 1:
            raise DenseDatasetError(source, f"video {v!r}: resolution must be positive, got {hw!r}")
        resolution[v] = (h, w)

    gttubes: dict[str, dict[int, list[np.ndarray]]] = {}
    for v, per_label in data["gttubes"].items():
        v = _video_name(v, source, "'gttubes'")
        if v not in nframes:
            raise DenseDatasetError(source, f"video {v!r} has ground-truth tubes but no 'nframes' entry")
        if not isinstance(per_label, Mapping):
            raise DenseDatasetError(source, f"video {v!r}: gttubes must map label index -> list of tubes")
        out: dict[int, list[np.ndarray]] = {}
        for label, tubes in per_label.items():
            if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
                raise DenseDatasetError(source, f"video {v!r}: label key {label!r} is not an integer index")
            if not 0 <= label < len(labels):
                raise DenseDatasetError(source, f"video {v!r} label {label}: outside 0..{len(labels) - 1}")
            if not isinstance(tubes, (list, tuple)):
                raise DenseDatasetError(source, f"video {v!r} label {label}: expected a list of tubes")
            out[int(label)] = [_check_tube(t, v, int(label), i, nframes[v], source) for i, t in enumerate(tubes)]
        gttubes[v] = out

    for split_lists, key in ((train, "train_videos"), (test, "test_videos")):
        for i, videos in enumerate(split_lists):
            for v in videos:
                for table, name in ((nframes, "nframes"), (resolution, "resolution"), (gttubes, "gttubes")):
                    if v not in table:
                        raise DenseDatasetError(source, f"video {v!r} of '{key}'[{i}] has no '{name}' entry")
    return DenseDataset(
        labels=labels,
        train_videos=train,
        test_videos=test,
        nframes=nframes,
        resolution=resolution,
        gttubes=gttubes,
        source=str(source) if source is not None else None,
        absent=absent,
    )


# ----------------------------------------------------------------------------------------------- files


def read_dense_dataset(path: str | Path) -> DenseDataset:
    """Load and validate an ACT/MOC ground-truth pickle with the restricted unpickler (never plain pickle)."""
    path = Path(path)
    try:
        data = load_pickle(path)
    except UnsafePickleError:
        raise  # already names the file and what it asked to build
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DenseDatasetError(path, f"not a readable pickle ({type(e).__name__}: {e})") from e
    ds = dense_dataset_from_dict(data, path)
    logger.info("%s: %d labels, %d split(s), %d videos", path, len(ds.labels), ds.num_splits, len(ds.nframes))
    if ds.absent:
        logger.info("%s: no %s (only the other subset can be read)", path, " / ".join(sorted(ds.absent)))
    return ds


def dense_dataset_to_dict(ds: DenseDataset) -> dict[str, Any]:
    """The plain builtins + numpy structure the ACT/MOC/MultiSports code unpickles (absent split keys stay absent)."""
    splits = {"train_videos": ds.train_videos, "test_videos": ds.test_videos}
    return {
        "labels": list(ds.labels),
        **{k: [list(s) for s in lists] for k, lists in splits.items() if k not in ds.absent},
        "nframes": dict(ds.nframes),
        "resolution": {v: tuple(hw) for v, hw in ds.resolution.items()},
        "gttubes": {
            v: {label: [np.asarray(t) for t in tubes] for label, tubes in d.items()} for v, d in ds.gttubes.items()
        },
    }


def write_dense_dataset(ds: DenseDataset, path: str | Path, protocol: int = 4) -> Path:
    """Write ``ds`` as an ACT/MOC ground-truth pickle (readable by the reference evaluators too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        pickle.dump(dense_dataset_to_dict(ds), f, protocol=protocol)
    tmp.replace(path)
    return path
