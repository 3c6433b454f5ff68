"""Tests for the AVA readers/writers: round trips, the official label map, and file:line error messages."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.data.ava import (
    AvaFormatError,
    LabelMap,
    read_annotations,
    read_excluded_timestamps,
    read_label_map,
    read_predicted_boxes,
    write_annotations,
    write_detections,
    write_excluded_timestamps,
    write_label_map,
    write_predicted_boxes,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OFFICIAL_LABEL_MAP = SHARED_DATA / "ava" / "ava_action_list_v2.1_for_activitynet_2018.pbtxt"

SMALL_MAP = LabelMap(
    names={12: "stand", 17: "carry/hold (an object)", 80: "watch (a person)"},
    categories={12: "pose", 17: "object", 80: "person"},
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _annotations() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "video_id": ["-5KQ66BBWC4", "-5KQ66BBWC4", "zlVkeKC6Ha8"],
            "timestamp": np.array([902, 902, 1798], dtype=np.int64),
            "x1": [0.077, 0.077, 0.5],
            "y1": [0.151, 0.151, 0.0],
            "x2": [0.283, 0.283, 1.0],
            "y2": [0.811, 0.811, 1.0],
            "action_id": np.array([12, 80, 17], dtype=np.int64),
            "person_id": np.array([0, 0, 3], dtype=np.int64),
        }
    )


# ----------------------------------------------------------------------------------------------- label maps


def test_official_label_map() -> None:
    if not OFFICIAL_LABEL_MAP.exists():
        pytest.skip("shared/data is not available")
    label_map = read_label_map(OFFICIAL_LABEL_MAP)
    assert len(label_map.ids) == 60
    assert label_map.names[1] == "bend/bow (at the waist)"
    assert label_map.names[80] == "watch (a person)"
    assert list(label_map.names)[:2] == [1, 3]  # file order is kept
    assert len(label_map.category_ids("pose")) == 13
    assert len(label_map.category_ids("object")) + len(label_map.category_ids("person")) == 47
    assert all(64 <= i <= 80 for i in label_map.category_ids("person"))


def test_label_flavour_uses_label_type(tmp_path: Path) -> None:
    text = """# a comment
label {
  name: "stand"
  label_id: 12
  label_type: PERSON_MOVEMENT
}
label { name: "odd one" label_id: 3 label_type: PERSON_INTERACTION }
label { name: "custom \\"quoted\\"" label_id: 120 label_type: OBJECT_MANIPULATION }
"""
    label_map = read_label_map(_write(tmp_path, "lm.pbtxt", text))
    assert label_map.names == {12: "stand", 3: "odd one", 120: 'custom "quoted"'}
    assert label_map.categories == {12: "pose", 3: "person", 120: "object"}
    assert label_map.ids == [3, 12, 120]
    assert label_map.category_ids("person") == [3]


def test_label_map_round_trip(tmp_path: Path) -> None:
    label_map = LabelMap(
        names={14: "walk", 59: 'touch "an" object', 3: "crouch/kneel", 79: "talk to"},
        categories={14: "pose", 59: "object", 3: "pose", 79: "person"},
    )
    path = tmp_path / "out" / "label_map.pbtxt"
    write_label_map(label_map, path)
    assert "label_type: OBJECT_MANIPULATION" in path.read_text()
    back = read_label_map(path)
    assert back == label_map
    assert list(back.names) == list(label_map.names)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('item { name: "a" id: 1 }\n\nitem { name: "b" id: 1 }\n', 3, "duplicate id 1"),
        ('item {\n  name: "a"\n}\n', 1, "integer 'id'"),
        ('item {\n  name: "a"\n  id: 1\n  colour: 2\n}\n', 4, "unknown field"),
        ('label {\n  name: "a"\n  label_id: 1\n  label_type: DANCING\n}\n', 4, "unknown label_type"),
        ('item {\n  name: "a"\n  id: 99\n}\n', 3, "outside AVA's ranges"),
        ('item {\n  name: "a"\n  id: 1\n', 3, "unexpected end of file"),
        ('item {\n  name: "a" ;\n  id: 1\n}\n', 2, "unexpected character"),
        ("item {\n  name: a\n  id: 1\n}\n", 1, "quoted 'name'"),
        ("", 1, "no labels found"),
    ],
)
def test_label_map_errors(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = _write(tmp_path, "bad.pbtxt", text)
    with pytest.raises(AvaFormatError, match=fragment) as info:
        read_label_map(path)
    assert str(info.value).startswith(f"{path}:{line}:")


# ----------------------------------------------------------------------------------------------- annotations


def test_annotations_round_trip(tmp_path: Path) -> None:
    df = _annotations()
    path = tmp_path / "annotations" / "train.csv"
    write_annotations(df, path)
    assert path.read_text().splitlines()[0] == "-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,12,0"
    back = read_annotations(path, SMALL_MAP)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back["timestamp"].dtype == np.int64 and back["action_id"].dtype == np.int64
    assert back["x1"].dtype == np.float64
    assert pd.api.types.is_string_dtype(back["video_id"])


def test_annotations_accept_unpadded_timestamps_and_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.csv", "v,902,0.1,0.2,0.3,0.4,12,1\n\nv,0903,0.1,0.2,0.3,0.4,12,1\r\n")
    df = read_annotations(path)
    assert df["timestamp"].tolist() == [902, 903]


def test_annotations_empty_file(tmp_path: Path) -> None:
    df = read_annotations(_write(tmp_path, "a.csv", ""))
    assert df.empty and list(df.columns)[:2] == ["video_id", "timestamp"]


GOOD = "v,0902,0.1,0.2,0.3,0.4,12,1"


@pytest.mark.parametrize(
    ("bad_row", "fragment"),
    [
        ("v,0902,0.1,0.2,0.3,12,1", "expected 8 columns, got 7"),
        ("v,0902,0.1,0.2,0.3,0.4,12,1,9", "expected 8 columns, got 9"),
        ("v,09x2,0.1,0.2,0.3,0.4,12,1", "non-numeric timestamp"),
        ("v,902.5,0.1,0.2,0.3,0.4,12,1", "timestamp '902.5' is not an integer"),
        ("v,0902,0.1,abc,0.3,0.4,12,1", "non-numeric y1"),
        ("v,0902,0.1,0.2,nan,0.4,12,1", "non-numeric x2"),
        ("v,0902,0.1,0.2,1.3,0.4,12,1", "x2 1.3 is outside"),
        ("v,0902,-0.1,0.2,0.3,0.4,12,1", "x1 -0.1 is outside"),
        ("v,0902,0.3,0.2,0.3,0.4,12,1", "x2 0.3 <= x1 0.3"),
        ("v,0902,0.1,0.5,0.3,0.4,12,1", "y2 0.4 <= y1 0.5"),
        ("v,0902,0.1,0.2,0.3,0.4,,1", "non-numeric action_id"),
        ("v,0902,0.1,0.2,0.3,0.4,12,p1", "non-numeric person_id"),
        ("v,0902,0.1,0.2,0.3,0.4,13,1", "action_id 13 is not in the label map"),
        (",0902,0.1,0.2,0.3,0.4,12,1", "empty video_id"),
    ],
)
def test_annotation_errors_name_file_and_line(tmp_path: Path, bad_row: str, fragment: str) -> None:
    # Line 1 good, line 2 blank, line 3 good, line 4 bad: blank lines count for line numbers.
    path = _write(tmp_path / "annotations", "train.csv", f"{GOOD}\n\n{GOOD.replace('0902', '0903')}\n{bad_row}\n")
    with pytest.raises(AvaFormatError, match=fragment) as info:
        read_annotations(path, SMALL_MAP)
    assert str(info.value).startswith(f"{path}:4:")
    assert info.value.line == 4


def test_duplicates_are_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    other = "v,0903,0.1,0.2,0.3,0.4,12,1"
    path = _write(tmp_path, "dup.csv", f"{GOOD}\n{other}\n{GOOD.replace('0902', '902')}\n{other}\n{GOOD}\n")
    with caplog.at_level(logging.WARNING, logger="stages.data.ava"):
        df = read_annotations(path)
    assert len(df) == 2
    assert df["timestamp"].tolist() == [902, 903]
    assert "dropped 3 exact duplicate rows (first at line 3)" in caplog.text
    assert str(path) in caplog.text


def test_ava_sized_file_round_trips(tmp_path: Path) -> None:
    n = 255_000
    rng = np.random.default_rng(0)
    x1, y1 = rng.uniform(0, 0.5, n).round(3), rng.uniform(0, 0.5, n).round(3)
    df = pd.DataFrame(
        {
            "video_id": rng.choice(["-5KQ66BBWC4", "zlVkeKC6Ha8", "_145Aa_xkuE"], n),
            "timestamp": rng.integers(902, 1799, n),
            "x1": x1,
            "y1": y1,
            "x2": x1 + 0.25,
            "y2": y1 + 0.25,
            "action_id": rng.choice([12, 17, 80], n),
            "person_id": np.arange(n) % 1000,
        }
    )
    path = tmp_path / "big.csv"
    write_annotations(df, path)
    back = read_annotations(path, SMALL_MAP)
    assert len(back) == n
    np.testing.assert_array_equal(back["timestamp"], df["timestamp"])
    np.testing.assert_allclose(back[["x1", "y1", "x2", "y2"]], df[["x1", "y1", "x2", "y2"]], atol=5e-4)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 9999),
            st.integers(0, 499),
            st.integers(0, 499),
            st.integers(1, 500),
            st.integers(1, 500),
            st.sampled_from([12, 17, 80]),
            st.integers(0, 10_000),
        ),
        min_size=1,
        max_size=30,
        unique=True,
    )
)
def test_annotation_round_trip_property(tmp_path_factory: pytest.TempPathFactory, rows: list[tuple]) -> None:
    df = pd.DataFrame(
        {
            "video_id": [f"vid{r[0] % 3}" for r in rows],
            "timestamp": np.array([r[0] for r in rows], dtype=np.int64),
            "x1": [r[1] / 1000 for r in rows],
            "y1": [r[2] / 1000 for r in rows],
            "x2": [(r[1] + r[3]) / 1000 for r in rows],
            "y2": [(r[2] + r[4]) / 1000 for r in rows],
            "action_id": np.array([r[5] for r in rows], dtype=np.int64),
            "person_id": np.array([r[6] for r in rows], dtype=np.int64),
        }
    )
    path = tmp_path_factory.mktemp("prop") / "a.csv"
    write_annotations(df, path)
    pd.testing.assert_frame_equal(read_annotations(path, SMALL_MAP), df, check_dtype=False)


# ----------------------------------------------------------------------------------------------- predictions


def test_predicted_boxes_round_trip(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "video_id": ["a", "a", "b"],
            "timestamp": np.array([1, 902, 1798], dtype=np.int64),
            "x1": [0.1, 0.2, 0.0],
            "y1": [0.1, 0.2, 0.0],
            "x2": [0.5, 0.6, 1.0],
            "y2": [0.5, 0.7, 1.0],
            "action_id": pd.array([pd.NA, 12, pd.NA], dtype="Int64"),
            "score": [0.912345, 0.5, 0.05],
        }
    )
    path = tmp_path / "predicted_boxes.csv"
    write_predicted_boxes(df, path)
    assert path.read_text().splitlines()[0] == "a,0001,0.100,0.100,0.500,0.500,,0.912345"
    back = read_predicted_boxes(path)
    assert str(back["action_id"].dtype) == "Int64"
    assert back["action_id"].isna().tolist() == [True, False, True]
    pd.testing.assert_frame_equal(back, df, check_dtype=False)


@pytest.mark.parametrize(
    ("bad_row", "fragment"),
    [
        ("v,0902,0.1,0.2,0.3,0.4,0.9", "expected 8 columns, got 7"),
        ("v,0902,0.1,0.2,0.3,0.4,,inf", "non-numeric score"),
        ("v,0902,0.1,0.2,0.3,0.4,,", "non-numeric score"),
        ("v,0902,0.1,0.2,0.3,0.4,x,0.9", "non-numeric action_id"),
        ("v,0902,0.1,0.2,0.05,0.4,,0.9", "x2 0.05 <= x1 0.1"),
    ],
)
def test_predicted_box_errors(tmp_path: Path, bad_row: str, fragment: str) -> None:
    path = _write(tmp_path, "pred.csv", f"v,0902,0.1,0.2,0.3,0.4,,0.9\n{bad_row}\n")
    with pytest.raises(AvaFormatError, match=fragment) as info:
        read_predicted_boxes(path)
    assert str(info.value).startswith(f"{path}:2:")


def test_write_detections_format(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "video_id": ["a"],
            "timestamp": [902],
            "x1": [0.12345],
            "y1": [0.2],
            "x2": [0.5],
            "y2": [0.9996],
            "action_id": [80],
            "score": [0.1234567],
        }
    )
    path = tmp_path / "detections.csv"
    write_detections(df, path)
    assert path.read_text() == "a,0902,0.123,0.200,0.500,1.000,80,0.123457\n"
    assert read_predicted_boxes(path)["action_id"].tolist() == [80]
    with pytest.raises(ValueError, match="action_id"):
        write_detections(df.assign(action_id=pd.array([pd.NA], dtype="Int64")), path)


# ----------------------------------------------------------------------------------------------- excluded


def test_excluded_timestamps(tmp_path: Path) -> None:
    empty = read_excluded_timestamps(_write(tmp_path, "empty.csv", ""))
    assert empty.empty and list(empty.columns) == ["video_id", "timestamp"]
    assert empty["timestamp"].dtype == np.int64
    df = pd.DataFrame({"video_id": ["a", "b"], "timestamp": np.array([902, 7], dtype=np.int64)})
    path = tmp_path / "excluded.csv"
    write_excluded_timestamps(df, path)
    assert path.read_text() == "a,0902\nb,0007\n"
    pd.testing.assert_frame_equal(read_excluded_timestamps(path), df, check_dtype=False)
    bad = _write(tmp_path, "bad.csv", "a,0902\nb,0903,1\n")
    with pytest.raises(AvaFormatError, match=r"bad\.csv:2: expected 2 columns, got 3"):
        read_excluded_timestamps(bad)


def test_writers_reject_unwritable_ids(tmp_path: Path) -> None:
    df = _annotations().assign(video_id="a,b")
    with pytest.raises(ValueError, match="commas"):
        write_annotations(df, tmp_path / "x.csv")
    with pytest.raises(ValueError, match="lacks columns"):
        write_annotations(df.drop(columns="person_id"), tmp_path / "x.csv")
