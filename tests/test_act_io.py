"""ACT/MOC ground-truth pickle: round trip, split handling, and errors that name file, video and label."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from stages.data.act import (
    DenseDataset,
    DenseDatasetError,
    dense_dataset_from_dict,
    read_dense_dataset,
    write_dense_dataset,
)
from stages.data.safe_pickle import UnsafePickleError


def tube(first: int, last: int, box: tuple[float, float, float, float] = (10, 20, 50, 80)) -> np.ndarray:
    frames = np.arange(first, last + 1, dtype=np.float64)
    return np.column_stack([frames, np.tile(box, (len(frames), 1))])


def raw_dict(splits: int = 1) -> dict:
    """A JHMDB-like structure: ``splits`` train/test partitions of four videos."""
    videos = ["walk/a", "walk/b", "run/c", "run/d"]
    return {
        "labels": ["walk", "run"],
        "train_videos": [[videos[(i + 0) % 4], videos[(i + 1) % 4]] for i in range(splits)],
        "test_videos": [[videos[(i + 2) % 4], videos[(i + 3) % 4]] for i in range(splits)],
        "nframes": {v: 30 for v in videos},
        "resolution": {v: (240, 320) for v in videos},
        "gttubes": {
            "walk/a": {0: [tube(1, 30)]},
            "walk/b": {0: [tube(5, 20), tube(3, 9, (100, 100, 140, 180))]},
            "run/c": {1: [tube(1, 12)]},
            "run/d": {1: [tube(2, 30)], 0: [tube(10, 11)]},
        },
    }


def write_raw(path: Path, data: dict, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_read_write_round_trip(tmp_path: Path, protocol: int) -> None:
    ds = read_dense_dataset(write_raw(tmp_path / "gt.pkl", raw_dict(splits=3), protocol))
    assert ds.labels == ("walk", "run") and ds.num_splits == 3
    assert ds.videos("test", 2) == ("walk/a", "walk/b")  # split 3 of JHMDB is split=2 here
    assert ds.resolution["run/c"] == (240, 320) and ds.nframes["run/c"] == 30
    np.testing.assert_array_equal(ds.gttubes["walk/b"][0][1], tube(3, 9, (100, 100, 140, 180)))

    again = read_dense_dataset(write_dense_dataset(ds, tmp_path / "out" / "gt2.pkl", protocol=protocol))
    assert again.labels == ds.labels and again.train_videos == ds.train_videos
    assert again.test_videos == ds.test_videos and again.nframes == ds.nframes
    assert again.resolution == ds.resolution
    for v, per_label in ds.gttubes.items():
        assert again.gttubes[v].keys() == per_label.keys()
        for label, tubes in per_label.items():
            for a, b in zip(tubes, again.gttubes[v][label], strict=True):
                np.testing.assert_array_equal(a, b)


def test_written_file_is_the_plain_structure_the_references_unpickle(tmp_path: Path) -> None:
    ds = dense_dataset_from_dict(raw_dict())
    with write_dense_dataset(ds, tmp_path / "gt.pkl").open("rb") as f:
        data = pickle.load(f)  # our own file: what MOC / MultiSports would read
    assert data["train_videos"] == [["walk/a", "walk/b"]] and isinstance(data["labels"], list)
    assert isinstance(data["gttubes"]["run/d"][1], list) and data["gttubes"]["run/d"][1][0].shape == (29, 5)


def test_gt_boxes_order_and_columns() -> None:
    ds = dense_dataset_from_dict(raw_dict())
    gt = ds.gt_boxes(ds.videos("test"))  # run/c then run/d; run/d labels ascending: 0 before 1
    assert list(gt.columns) == ["video", "frame", "label", "tube", "x1", "y1", "x2", "y2"]
    assert len(gt) == 12 + 2 + 29
    assert gt["video"].tolist()[:12] == ["run/c"] * 12
    assert gt["label"].tolist()[12:14] == [0, 0] and gt["frame"].tolist()[12:14] == [10, 11]
    assert ds.gt_boxes([]).empty


def test_videos_rejects_bad_split() -> None:
    ds = dense_dataset_from_dict(raw_dict())
    with pytest.raises(ValueError, match="split 1 out of range: 1 split"):
        ds.videos("test", 1)


def _error(tmp_path: Path, data: dict) -> str:
    path = write_raw(tmp_path / "bad.pkl", data)
    with pytest.raises(DenseDatasetError) as err:
        read_dense_dataset(path)
    assert str(err.value).startswith(f"{path}: ")
    return str(err.value)


def test_frame_outside_video_names_video_label_and_tube(tmp_path: Path) -> None:
    data = raw_dict()
    data["gttubes"]["walk/b"][0][1] = tube(25, 31)  # nframes is 30
    msg = _error(tmp_path, data)
    assert "video 'walk/b' label 0 tube 1" in msg and "frame 31 outside 1..30" in msg


def test_frame_zero_is_outside(tmp_path: Path) -> None:
    data = raw_dict()
    data["gttubes"]["run/c"][1][0] = tube(0, 5)  # frames are 1-based
    assert "frame 0 outside 1..30" in _error(tmp_path, data)


def test_inverted_box(tmp_path: Path) -> None:
    data = raw_dict()
    data["gttubes"]["run/d"][1][0] = tube(2, 30, (60, 20, 50, 80))  # x2 < x1
    msg = _error(tmp_path, data)
    assert "video 'run/d' label 1 tube 0" in msg and "inverted box" in msg


def test_frames_not_increasing(tmp_path: Path) -> None:
    data = raw_dict()
    data["gttubes"]["walk/a"][0][0] = tube(1, 5)[[0, 2, 1, 3, 4]]
    assert "strictly increasing (frame 2 after 3)" in _error(tmp_path, data)


def test_label_index_out_of_range(tmp_path: Path) -> None:
    data = raw_dict()
    data["gttubes"]["run/c"] = {2: [tube(1, 4)]}
    assert "video 'run/c' label 2: outside 0..1" in _error(tmp_path, data)


def test_bad_tube_shape(tmp_path: Path) -> None:
    data = raw_dict()
    data["gttubes"]["run/c"][1][0] = np.zeros((4, 3))
    assert "video 'run/c' label 1 tube 0: expected a non-empty (n, 5) array" in _error(tmp_path, data)


def test_missing_key(tmp_path: Path) -> None:
    data = raw_dict()
    del data["resolution"]
    assert "missing key(s) ['resolution']" in _error(tmp_path, data)


def test_split_video_without_annotation(tmp_path: Path) -> None:
    data = raw_dict()
    data["test_videos"][0].append("ghost/v")
    assert "video 'ghost/v' of 'test_videos'[0] has no 'nframes' entry" in _error(tmp_path, data)


def test_split_count_mismatch(tmp_path: Path) -> None:
    data = raw_dict(splits=3)
    data["train_videos"] = data["train_videos"][:1]
    assert "1 train split(s) but 3 test split(s)" in _error(tmp_path, data)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(raw_dict())[:50])
    with pytest.raises(DenseDatasetError, match="not a readable pickle"):
        read_dense_dataset(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_malicious_ground_truth_is_refused(tmp_path: Path) -> None:
    data = raw_dict()
    data["labels"] = _Evil()
    path = write_raw(tmp_path / "evil.pkl", data)
    with pytest.raises(UnsafePickleError, match=str(path)):
        read_dense_dataset(path)


def test_source_is_recorded() -> None:
    a = dense_dataset_from_dict(raw_dict(), "x.pkl")
    assert isinstance(a, DenseDataset) and a.source == "x.pkl"


def test_test_only_file_reads_its_test_split_and_names_the_missing_train_key(tmp_path: Path) -> None:
    """MultiSports' test-set gt.pkl has no 'train_videos': the test split reads, train is refused by name."""
    data = raw_dict()
    del data["train_videos"]
    path = write_raw(tmp_path / "test_only.pkl", data)
    ds = read_dense_dataset(path)
    assert ds.videos("test") == ("run/c", "run/d") and ds.num_splits == 1 and ds.absent == {"train_videos"}
    with pytest.raises(DenseDatasetError, match=rf"^{path}: no 'train_videos' in this file .* train split cannot"):
        ds.videos("train")
    again = write_dense_dataset(ds, tmp_path / "again.pkl")
    with again.open("rb") as f:
        assert "train_videos" not in pickle.load(f)  # written back as it came


def test_train_only_file_and_a_file_without_any_split(tmp_path: Path) -> None:
    data = raw_dict()
    del data["test_videos"]
    ds = read_dense_dataset(write_raw(tmp_path / "train_only.pkl", data))
    assert ds.videos("train") == ("walk/a", "walk/b") and ds.num_splits == 1
    with pytest.raises(DenseDatasetError, match="no 'test_videos' in this file"):
        ds.videos("test")
    del data["train_videos"]
    assert "missing key(s) ['train_videos', 'test_videos']" in _error(tmp_path, data)


def test_python2_byte_strings_are_latin1(tmp_path: Path) -> None:
    """ACT's pickles come from Python 2: names are byte strings, decoded as latin-1 as MOC does."""
    data = raw_dict()
    data["labels"] = [b"walk", "caf\xe9".encode("latin-1")]
    data["nframes"] = {v.encode(): n for v, n in data["nframes"].items()}
    ds = read_dense_dataset(write_raw(tmp_path / "py2.pkl", data, protocol=2))
    assert ds.labels == ("walk", "café") and set(ds.nframes) == {"walk/a", "walk/b", "run/c", "run/d"}
