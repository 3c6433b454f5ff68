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
    read_detections,
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
        # 7 fields (no person_id) and fractional timestamps are valid since issue 9; 6 fields are not
        ("v,0902,0.1,0.2,0.3,12", "expected 8 columns, got 6"),
        ("v,0902,0.1,0.2,0.3,0.4,12,1,9", "expected 8 columns, got 9"),
        ("v", "expected 8 columns, got 1"),
        ("v,09x2,0.1,0.2,0.3,0.4,12,1", "non-numeric timestamp"),
        ("v,0902,0.1,abc,0.3,0.4,12,1", "non-numeric y1"),
        ("v,0902,0.1,0.2,nan,0.4,12,1", "non-numeric x2"),
        ("v,0902,0.1,0.2,1.3,0.4,12,1", "x2 1.3 is outside"),
        ("v,0902,-0.1,0.2,0.3,0.4,12,1", "x1 -0.1 is outside"),
        ("v,0902,0.3,0.2,0.3,0.4,12,1", "x2 0.3 <= x1 0.3"),
        ("v,0902,0.1,0.5,0.3,0.4,12,1", "y2 0.4 <= y1 0.5"),
        ("v,0902,0.1,0.2,0.3,0.4,,1", "non-numeric action_id"),
        ("v,0902,0.1,0.2,0.3,0.4,12,p1", "non-numeric person_id"),
        # ids outside the label map are skipped since issue 9 (see test_ids_outside_the_label_map_are_skipped)
        (",0902,0.1,0.2,0.3,0.4,12,1", "empty video_id"),
        ("v,0902,0.1,0.2,0.3,0.4,12.0,1", "action_id '12.0' is not an integer"),
        ("v,0902,0.1,0.2,0.3,0.4,1e1,1", "action_id '1e1' is not an integer"),
        ("v,0902,0.1,0.2,0.3,0.4,0x0C,1", "non-numeric action_id '0x0C'"),  # Arrow would read 12, int() does not
        ("v,0902,0.1,0.2,0.3,0.4,12,inf", "non-numeric person_id"),
        ("v,0902,0.1e 1,0.2,0.3,0.4,12,1", "non-numeric x1"),  # pandas would read 1.0; float() refuses it
        ('"v,0902,0.1,0.2,0.3,0.4,12,1', "expected 8 columns, got 1"),  # an open quote swallows the line
        ('v,"0902",0.1,0.2,0.3,0.4,12,x', "non-numeric person_id 'x'"),  # quoted file: the exact reader
    ],
)
def test_annotation_errors_name_file_and_line(tmp_path: Path, bad_row: str, fragment: str) -> None:
    # Line 1 good, line 2 blank, line 3 good, line 4 bad: blank lines count for line numbers.
    path = _write(tmp_path / "annotations", "train.csv", f"{GOOD}\n\n{GOOD.replace('0902', '0903')}\n{bad_row}\n")
    with pytest.raises(AvaFormatError, match=fragment) as info:
        read_annotations(path, SMALL_MAP)
    assert str(info.value).startswith(f"{path}:4:")
    assert info.value.line == 4


def test_duplicates_are_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Issue 9 reverses the earlier behaviour (drop with a warning): the official evaluator counts every row as a box.
    other = "v,0903,0.1,0.2,0.3,0.4,12,1"
    path = _write(tmp_path, "dup.csv", f"{GOOD}\n{other}\n{GOOD.replace('0902', '902')}\n{other}\n{GOOD}\n")
    with caplog.at_level(logging.WARNING, logger="stages.data.ava"):
        df = read_annotations(path)
    assert df["timestamp"].tolist() == [902, 903, 902, 903, 902]
    assert not caplog.records


def test_ids_outside_the_label_map_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # ids 13 and 99 are not in SMALL_MAP: skipped with one warning (count and ids), as the official evaluator does.
    # Keyframe 0904 has only skipped rows: it stays in the ground truth as a keyframe without actors (the official
    # evaluator's all_keys holds it, so detections there are false positives). Person ids on skipped rows are not
    # read (the official evaluator reads that field after its label-map check), so 'p1' there is no error.
    text = f"{GOOD}\nv,0902,0.1,0.2,0.3,0.4,13,1\nv,0904,0.5,0.5,0.6,0.6,99,p1\nv,0904,0.5,0.5,0.6,0.6,13,1\n"
    path = _write(tmp_path, "gt.csv", text)
    with caplog.at_level(logging.WARNING, logger="stages.data.ava"):
        df = read_annotations(path, SMALL_MAP)
    (record,) = caplog.records
    assert "skipped 3 rows whose action_id is not in the label map (ids 13, 99)" in record.getMessage()
    assert df["timestamp"].tolist() == [902, 904]
    assert df["action_id"].iloc[0] == 12 and pd.isna(df["action_id"].iloc[1]) and np.isnan(df["x1"].iloc[1])
    assert str(df["action_id"].dtype) == "Int64"
    # without a label map every row is kept
    assert len(read_annotations(_write(tmp_path, "gt2.csv", text.replace("p1", "7")))) == 4


def test_keyframes_without_actors_and_seven_column_rows(tmp_path: Path) -> None:
    # ActivityNet's files since 2020: 'video_id,timestamp' marks an annotated keyframe without actors; rows
    # without person_id have 7 fields. All three forms may be mixed in one file.
    path = _write(tmp_path, "gt.csv", "v,0902\nv,0903,0.1,0.2,0.3,0.4,12\nv,0904,0.1,0.2,0.3,0.4,80,3\n")
    df = read_annotations(path, SMALL_MAP)
    assert df["timestamp"].tolist() == [902, 903, 904]
    assert df["action_id"].isna().tolist() == [True, False, False]
    assert df["person_id"].isna().tolist() == [True, True, False]
    assert df["x1"].isna().tolist() == [True, False, False]
    assert df["person_id"].iloc[2] == 3
    # written back in the same forms
    out = tmp_path / "back.csv"
    write_annotations(df, out)
    assert out.read_text().splitlines() == [
        "v,0902",
        "v,0903,0.100,0.200,0.300,0.400,12",
        "v,0904,0.100,0.200,0.300,0.400,80,3",
    ]
    pd.testing.assert_frame_equal(read_annotations(out, SMALL_MAP), df)


def test_fractional_timestamps(tmp_path: Path) -> None:
    # The official evaluator keys keyframes on '%.6f' of the timestamp (microseconds), so 903.5 is a keyframe.
    path = _write(tmp_path, "gt.csv", "v,903.5,0.1,0.2,0.3,0.4,12,1\nv,0902,0.1,0.2,0.3,0.4,12,1\n")
    df = read_annotations(path)
    assert df["timestamp"].dtype == np.float64 and df["timestamp"].tolist() == [903.5, 902.0]
    out = tmp_path / "back.csv"
    write_annotations(df, out)
    assert out.read_text().splitlines()[0].startswith("v,903.5,") and "v,0902," in out.read_text()


def test_quoted_fields_and_python_number_syntax(tmp_path: Path) -> None:
    # csv.reader (the official evaluator's) unquotes fields; float()/int() accept spaces around numbers and
    # digit underscores. Video ids are taken verbatim (the official keys do not strip them).
    plain = _write(tmp_path, "plain.csv", "a b,0902,0.15,0.2,0.3,0.4,12,1\nv,0903,0.1,0.2,0.3,0.4,80,2\n")
    quoted = _write(
        tmp_path, "quoted.csv", '"a b","0902","0.15",0.2,0.3,0.4,"12",1\r\n"v",0903, 0.1 ,0.2,0.3,0.4,8_0,2\r\n'
    )
    pd.testing.assert_frame_equal(read_annotations(quoted, SMALL_MAP), read_annotations(plain, SMALL_MAP))
    comma = _write(tmp_path, "comma.csv", '"a,b",0902,0.1,0.2,0.3,0.4,12,1\n')
    assert read_annotations(comma)["video_id"].tolist() == ["a,b"]


def test_plain_and_exact_readers_agree(tmp_path: Path) -> None:
    # The same rows through the vectorised reader (plain file) and through csv.reader (a quote forces it).
    rng = np.random.default_rng(3)
    n = 500
    x1 = rng.uniform(0, 0.5, n).round(rng.integers(1, 7))
    rows = [
        f"vid{i % 7},{902 + i % 5}{'.5' if i % 11 == 0 else ''},{x1[i]},{x1[i] / 2},{x1[i] + 0.25},{x1[i] + 0.3},"
        f"{[12, 17, 80][i % 3]}" + ("" if i % 13 == 0 else f",{i % 4}")
        for i in range(n)
    ]
    rows[5] = "vid0,0902"
    plain = _write(tmp_path, "plain.csv", "\n".join(rows) + "\n")
    quoted = _write(tmp_path, "quoted.csv", '"vid0",0902\n' + "\n".join(rows) + "\n")
    a, b = read_annotations(plain, SMALL_MAP), read_annotations(quoted, SMALL_MAP).iloc[1:].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_the_three_readers_agree(tmp_path: Path) -> None:
    # Arrow (every line complete), pandas with a line scan (any plain file) and csv.reader with float()/int() (any
    # file) must give the same table wherever they accept the text.
    from stages.data import ava

    rng = np.random.default_rng(5)
    lines = [
        f"v{i % 3},{902 + i % 4}{'.25' if i % 7 == 0 else ''},{rng.uniform(0, 0.5):.{1 + i % 6}f},0.1,0.75,"
        f"{rng.uniform(0.5, 1):.3e},{[12, 17, 80, 5][i % 4]},{rng.uniform():.{1 + i % 9}f}"
        for i in range(300)
    ]
    data = ("\n".join(lines) + "\n").encode()
    columns = tuple(ava.DETECTION_COLUMNS)
    arrow = ava._read_arrow(tmp_path, data, columns)
    plain = ava._read_plain(tmp_path, data, columns, (2, 7, 8), "")
    exact = ava._read_exact(tmp_path, data, columns, (2, 7, 8), "")
    assert arrow is not None and plain is not None
    for table in (plain, exact):
        assert table.video_id.tolist() == arrow.video_id.tolist()
        np.testing.assert_array_equal(table.n_fields, arrow.n_fields)
        np.testing.assert_array_equal(table.lines, arrow.lines)
        for c in columns[1:]:
            np.testing.assert_array_equal(table.column(c), arrow.column(c))  # bit-identical numbers
        assert table.row_fields(7) == arrow.row_fields(7) == lines[7].split(",")
    # lines of 2 and 7 fields: Arrow declines, the other two agree
    mixed = data + b"v9,0902\nv9,0903,0.1,0.1,0.2,0.2,12\n"
    assert ava._read_arrow(tmp_path, mixed, columns) is None
    plain = ava._read_plain(tmp_path, mixed, columns, (2, 7, 8), "")
    exact = ava._read_exact(tmp_path, mixed, columns, (2, 7, 8), "")
    assert plain is not None
    np.testing.assert_array_equal(plain.n_fields, exact.n_fields)
    for c in columns[1:]:
        np.testing.assert_array_equal(plain.column(c), exact.column(c))


def test_more_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(f"{GOOD}\nv\xe9,0902,0.1,0.2,0.3,0.4,12,1\n".encode("latin-1"))
    with pytest.raises(AvaFormatError, match=r"latin1\.csv:2: not UTF-8 text"):
        read_annotations(bad)
    # a whole column of true/false: pandas would read 1.0/0.0, float() refuses
    flags = _write(tmp_path, "flags.csv", "v,0902,0.1,0.2,0.3,0.4,12,true\nv,0902,0.1,0.2,0.3,0.4,12,false\n")
    with pytest.raises(AvaFormatError, match=r"flags\.csv:1: non-numeric person_id 'true'"):
        read_annotations(flags)


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


def test_read_detections_accepts_what_the_official_evaluator_scores(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 7 fields: score 1.0; 2 fields: no detection; boxes outside [0, 1] or inverted are kept (the evaluation
    # drops inverted ones after the per-keyframe cap); ids outside the map are skipped, their score unread.
    text = (
        "v,0902,-0.01,0.0,0.5,1.02,12,0.9\n"
        "v,0902,0.5,0.1,0.4,0.3,17,0.8\n"
        "v,0903\n"
        "v,0903,0.1,0.1,0.3,0.3,80\n"
        "v,0903,0.1,0.1,0.3,0.3,13,not-a-score\n"
    )
    path = _write(tmp_path, "det.csv", text)
    with caplog.at_level(logging.INFO, logger="stages.data.ava"):
        df = read_detections(path, SMALL_MAP)
    assert df["action_id"].tolist() == [12, 17, 80] and df["action_id"].dtype == np.int64
    assert df["score"].tolist() == [0.9, 0.8, 1.0]
    assert df["x1"].tolist() == [-0.01, 0.5, 0.1]
    log = caplog.text
    assert "1 detection boxes reach outside [0, 1] (first at line 1)" in log
    assert "1 detection boxes have x1 >= x2 or y1 >= y2 (first at line 2)" in log
    assert "skipped 1 rows whose action_id is not in the label map (ids 13)" in log
    # without a label map the score of every row is read
    with pytest.raises(AvaFormatError, match=r"det\.csv:5: non-numeric score 'not-a-score'"):
        read_detections(path)


@pytest.mark.parametrize(
    ("bad_row", "fragment"),
    [
        ("v,0902,0.1,0.2,0.3,0.4,,0.9", "non-numeric action_id ''"),
        ("v,0902,0.1,0.2,0.3,0.4,12,", "non-numeric score ''"),
        ("v,0902,0.1,0.2,0.3,0.4,12,nan", "non-numeric score 'nan'"),
        ("v,0902,0.1,0.2,0.3", "expected 8 columns, got 5"),
        ("v,x,0.1,0.2,0.3,0.4,13,0.9", "non-numeric timestamp 'x'"),  # read before the label-map check
        ("v,0902,0.1,y,0.3,0.4,13,0.9", "non-numeric y1 'y'"),  # read before the label-map check too
    ],
)
def test_detection_errors(tmp_path: Path, bad_row: str, fragment: str) -> None:
    path = _write(tmp_path, "det.csv", f"v,0902,0.1,0.2,0.3,0.4,12,0.9\n{bad_row}\n")
    with pytest.raises(AvaFormatError, match=fragment) as info:
        read_detections(path, SMALL_MAP)
    assert str(info.value).startswith(f"{path}:2:")


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


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (
            "v,0902,0.1,0.1,0.5,0.5,,0.9\nv,0903,0.1,0.1,0.5,0.5,,2.5\nv,0904,0.1,0.1,0.5,0.5,,-1\n",
            r":2: score 2.5 is implausible: .*probability in \[0, 1\].*\(2 such rows\)",
        ),
        ("v,999999,0.1,0.1,0.5,0.5,,0.9\n", r":1: timestamp 999999 is implausible: .*\(1 such rows\)"),
    ],
    ids=["score-outside-0-1", "timestamp"],
)
def test_predicted_boxes_with_implausible_values_are_refused(tmp_path: Path, rows: str, expected: str) -> None:
    path = tmp_path / "predicted_boxes_val.csv"
    path.write_text(rows)
    with pytest.raises(AvaFormatError, match=expected):
        read_predicted_boxes(path)


@pytest.mark.parametrize("video_id", ["../../../../x", "/abs/x", "a\\b", "a/../b", "a//b"])
def test_a_video_id_that_is_a_path_is_refused_at_read_time(tmp_path: Path, video_id: str) -> None:
    path = tmp_path / "train.csv"
    path.write_text(f"ok,0902,0.1,0.1,0.5,0.5,12,0\n{video_id},0902,0.1,0.1,0.5,0.5,12,0\n")
    with pytest.raises(AvaFormatError, match=r"train.csv:2: video_id .* is a path, not a name"):
        read_annotations(path)


def test_class_folder_video_ids_are_names(tmp_path: Path) -> None:
    """UCF101-24 / JHMDB / MultiSports keep videos as class/video: such ids are read as they are."""
    path = tmp_path / "train.csv"
    path.write_text("Basketball/v_Basketball_g01_c01,0001,0.1,0.1,0.5,0.5,12,0\n")
    frame = read_annotations(path)
    assert frame["video_id"].tolist() == ["Basketball/v_Basketball_g01_c01"]
