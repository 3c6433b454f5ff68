"""Readers and writers for the AVA formats: label maps, ground truth, predicted boxes, excluded keyframes.

Everything downstream (extraction, training, evaluation) trusts these frames, so the readers validate up front
and every error names the file and the 1-based line, which is what a user needs to fix a 255k-row CSV by hand.
Parsing is done by pandas and validation is vectorised; per-row Python work is limited to splitting lines.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cache_spec.errors import InputError

logger = logging.getLogger(__name__)

POSE, OBJECT, PERSON = "pose", "object", "person"
CATEGORIES = (POSE, OBJECT, PERSON)
_LABEL_TYPE_TO_CATEGORY = {
    "PERSON_MOVEMENT": POSE,
    "OBJECT_MANIPULATION": OBJECT,
    "PERSON_INTERACTION": PERSON,
}
_CATEGORY_TO_LABEL_TYPE = {v: k for k, v in _LABEL_TYPE_TO_CATEGORY.items()}
# AVA's action ids are grouped by category: 1-14 pose, 15-63 object manipulation, 64-80 person interaction.
_AVA_ID_RANGES = ((1, 14, POSE), (15, 63, OBJECT), (64, 80, PERSON))

BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
ANNOTATION_COLUMNS = ["video_id", "timestamp", *BOX_COLUMNS, "action_id", "person_id"]
PREDICTED_BOX_COLUMNS = ["video_id", "timestamp", *BOX_COLUMNS, "action_id", "score"]
DETECTION_COLUMNS = PREDICTED_BOX_COLUMNS
EXCLUDED_COLUMNS = ["video_id", "timestamp"]


class AvaFormatError(InputError, ValueError):
    """A file does not follow the AVA format; the message starts with ``file:line:``."""

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = str(path)
        self.line = line


# ----------------------------------------------------------------------------------------------- label maps


@dataclass(frozen=True)
class LabelMap:
    """Action ids with their names (file order) and AVA categories ("pose", "object", "person")."""

    names: dict[int, str]
    categories: dict[int, str]

    def __post_init__(self) -> None:
        if set(self.names) != set(self.categories):
            raise ValueError("names and categories must have the same ids")
        unknown = sorted({c for c in self.categories.values() if c not in CATEGORIES})
        if unknown:
            raise ValueError(f"unknown categories {unknown}; expected one of {CATEGORIES}")

    @property
    def ids(self) -> list[int]:
        """All action ids, sorted."""
        return sorted(self.names)

    def category_ids(self, category: str) -> list[int]:
        """Sorted ids of one category, e.g. the pose classes for a softmax over poses."""
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
        return sorted(i for i, c in self.categories.items() if c == category)


@dataclass(frozen=True)
class _Token:
    kind: str  # "str", "num", "ident", or the punctuation itself
    text: str
    line: int


_TOKEN_RE = re.compile(
    r"""(?P<ws>[ \t\r\f\v]+)|(?P<nl>\n)|(?P<comment>\#[^\n]*)
    |(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<num>[-+]?\d+(?:\.\d*)?)|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[{}:])""",
    re.VERBOSE,
)
_FIELD_KEYS = {"name", "display_name", "id", "label_id", "label_type"}


def _tokenize(text: str, path: Path) -> Iterator[_Token]:
    """Split protobuf text format into tokens, keeping line numbers for error messages."""
    line, pos = 1, 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise AvaFormatError(path, line, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        if kind == "nl":
            line += 1
        elif kind in ("str", "num", "ident"):
            yield _Token(kind, m.group(), line)
        elif kind == "punct":
            yield _Token(m.group(), m.group(), line)
        pos = m.end()


def _unquote(token: _Token) -> str:
    body = token.text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def _parse_entries(path: Path) -> list[tuple[int, dict[str, _Token]]]:
    """Parse ``item { ... }`` / ``label { ... }`` blocks into (line, fields) pairs."""
    tokens = list(_tokenize(path.read_text(encoding="utf-8-sig"), path))
    entries: list[tuple[int, dict[str, _Token]]] = []
    i = 0

    def expect(kind: str, what: str) -> _Token:
        nonlocal i
        if i >= len(tokens):
            last = tokens[-1].line if tokens else 1
            raise AvaFormatError(path, last, f"unexpected end of file, expected {what}")
        tok = tokens[i]
        if tok.kind != kind:
            raise AvaFormatError(path, tok.line, f"expected {what}, got {tok.text!r}")
        i += 1
        return tok

    while i < len(tokens):
        head = expect("ident", "'item' or 'label'")
        if head.text not in ("item", "label"):
            raise AvaFormatError(path, head.line, f"expected 'item' or 'label', got {head.text!r}")
        if i < len(tokens) and tokens[i].kind == ":":
            i += 1
        expect("{", "'{'")
        fields: dict[str, _Token] = {}
        while i < len(tokens) and tokens[i].kind != "}":
            key = expect("ident", "a field name or '}'")
            if key.text not in _FIELD_KEYS:
                raise AvaFormatError(path, key.line, f"unknown field {key.text!r}")
            if key.text in fields:
                raise AvaFormatError(path, key.line, f"field {key.text!r} given twice")
            expect(":", "':'")
            if i >= len(tokens) or tokens[i].kind not in ("str", "num", "ident"):
                expect("str", f"a value for {key.text!r}")
            fields[key.text] = tokens[i]
            i += 1
        expect("}", "'}'")
        entries.append((head.line, fields))
    return entries


def _entry_to_label(path: Path, line: int, fields: dict[str, _Token]) -> tuple[int, str, str]:
    """Turn one parsed block into (id, name, category), checking types."""
    name_tok = fields.get("name") or fields.get("display_name")
    if name_tok is None or name_tok.kind != "str":
        raise AvaFormatError(path, line, "entry needs a quoted 'name'")
    if "id" in fields and "label_id" in fields:
        raise AvaFormatError(path, line, "entry has both 'id' and 'label_id'")
    id_tok = fields.get("id") or fields.get("label_id")
    if id_tok is None or id_tok.kind != "num" or not re.fullmatch(r"[-+]?\d+", id_tok.text):
        raise AvaFormatError(path, line, "entry needs an integer 'id' or 'label_id'")
    label_id = int(id_tok.text)
    type_tok = fields.get("label_type")
    if type_tok is not None:
        category = _LABEL_TYPE_TO_CATEGORY.get(type_tok.text)
        if category is None:
            expected = ", ".join(_LABEL_TYPE_TO_CATEGORY)
            raise AvaFormatError(path, type_tok.line, f"unknown label_type {type_tok.text!r}; expected {expected}")
    else:
        category = _category_from_ava_id(label_id)
        if category is None:
            raise AvaFormatError(path, id_tok.line, f"id {label_id} is outside AVA's ranges (1-80); give a label_type")
    return label_id, _unquote(name_tok), category


def _category_from_ava_id(label_id: int) -> str | None:
    for lo, hi, category in _AVA_ID_RANGES:
        if lo <= label_id <= hi:
            return category
    return None


def read_label_map(path: str | Path) -> LabelMap:
    """Read an AVA label map, ``item {name id}`` or ``label {name label_id label_type}`` form."""
    path = Path(path)
    names: dict[int, str] = {}
    categories: dict[int, str] = {}
    entries = _parse_entries(path)
    if not entries:
        raise AvaFormatError(path, 1, "no labels found")
    for line, fields in entries:
        label_id, name, category = _entry_to_label(path, line, fields)
        if label_id in names:
            raise AvaFormatError(path, line, f"duplicate id {label_id} ({name!r} and {names[label_id]!r})")
        names[label_id] = name
        categories[label_id] = category
    return LabelMap(names=names, categories=categories)


def write_label_map(label_map: LabelMap, path: str | Path) -> None:
    """Write the ``label {name, label_id, label_type}`` form, which keeps categories explicit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for label_id, name in label_map.names.items():
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        label_type = _CATEGORY_TO_LABEL_TYPE[label_map.categories[label_id]]
        parts.append(f'label {{\n  name: "{quoted}"\n  label_id: {label_id}\n  label_type: {label_type}\n}}\n')
    path.write_text("".join(parts), encoding="utf-8")


# ----------------------------------------------------------------------------------------------- CSV reading


@dataclass
class _RawCsv:
    """String columns of a CSV plus the 1-based file line of each row, for error messages."""

    path: Path
    frame: pd.DataFrame
    lines: np.ndarray

    def fail(self, row_mask: np.ndarray | pd.Series, message: str) -> None:
        """Raise for the first row where ``row_mask`` is true; ``message`` may use {value} and {column}."""
        mask = np.asarray(row_mask, dtype=bool)
        if mask.any():
            row = int(np.argmax(mask))
            raise AvaFormatError(self.path, int(self.lines[row]), message.format(row=row, **self.row(row)))

    def row(self, row: int) -> dict[str, str]:
        return {str(k): v for k, v in self.frame.iloc[row].items()}


def _read_raw_csv(path: str | Path, columns: Sequence[str]) -> _RawCsv:
    """Read a headerless CSV as strings after checking every non-blank line has ``len(columns)`` fields."""
    path = Path(path)
    all_lines = path.read_text(encoding="utf-8-sig").splitlines()
    kept_idx = [i for i, line in enumerate(all_lines) if line.strip()]
    kept = [all_lines[i] for i in kept_idx]
    line_numbers = np.asarray(kept_idx, dtype=np.int64) + 1
    if not kept:
        return _RawCsv(path, pd.DataFrame({c: pd.Series([], dtype=str) for c in columns}), line_numbers)
    commas = np.fromiter((line.count(",") for line in kept), dtype=np.int64, count=len(kept))
    bad = np.flatnonzero(commas != len(columns) - 1)
    if bad.size:
        row = int(bad[0])
        raise AvaFormatError(
            path, int(line_numbers[row]), f"expected {len(columns)} columns, got {int(commas[row]) + 1}"
        )
    frame = pd.read_csv(
        io.StringIO("\n".join(kept)),
        header=None,
        names=list(columns),
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        quoting=csv.QUOTE_NONE,
        skip_blank_lines=False,
        engine="c",
    )
    for column in frame.columns:
        frame[column] = frame[column].str.strip()
    return _RawCsv(path, frame, line_numbers)


def _video_ids(raw: _RawCsv) -> pd.Series:
    ids = raw.frame["video_id"]
    raw.fail(ids == "", "empty video_id")
    return ids.astype(str)


def _numeric(raw: _RawCsv, column: str, *, integer: bool, allow_empty: bool = False) -> pd.Series:
    """Convert a string column to numbers; non-numeric (or non-integer) fields are errors."""
    text = raw.frame[column]
    values = pd.to_numeric(text, errors="coerce").astype("float64")
    empty = (text == "").to_numpy()
    finite = np.isfinite(values.to_numpy())
    raw.fail(~finite & ~(empty & allow_empty), f"non-numeric {column} {{{column}!r}}")
    if integer:
        arr = values.to_numpy()
        raw.fail(finite & (arr != np.floor(arr)), f"{column} {{{column}!r}} is not an integer")
        if allow_empty:
            return values.round().astype("Int64")
        return values.astype(np.int64)
    return values


def _boxes(raw: _RawCsv) -> dict[str, pd.Series]:
    """Parse and check normalised corner coordinates: inside [0, 1] with positive width and height."""
    cols = {c: _numeric(raw, c, integer=False) for c in BOX_COLUMNS}
    for c in BOX_COLUMNS:
        raw.fail((cols[c] < 0) | (cols[c] > 1), f"{c} {{{c}}} is outside [0, 1]")
    raw.fail(cols["x2"] <= cols["x1"], "x2 {x2} <= x1 {x1}")
    raw.fail(cols["y2"] <= cols["y1"], "y2 {y2} <= y1 {y1}")
    return cols


def _timestamps(raw: _RawCsv) -> pd.Series:
    ts = _numeric(raw, "timestamp", integer=True)
    raw.fail(ts < 0, "negative timestamp {timestamp}")
    return ts


def _check_label_ids(raw: _RawCsv, action_ids: pd.Series, label_map: LabelMap | None) -> None:
    if label_map is not None:
        known = action_ids.isna() | action_ids.isin(label_map.ids)
        raw.fail(~known.to_numpy(dtype=bool), "action_id {action_id} is not in the label map")


def _drop_duplicates(df: pd.DataFrame, lines: np.ndarray, path: Path) -> pd.DataFrame:
    """Drop exact duplicate rows (AVA's own files have a few), warning with the count and first line."""
    dup = df.duplicated(keep="first").to_numpy()
    if not dup.any():
        return df
    first = int(lines[int(np.argmax(dup))])
    logger.warning("%s: dropped %d exact duplicate rows (first at line %d)", path, int(dup.sum()), first)
    return df.loc[~dup].reset_index(drop=True)


def read_annotations(path: str | Path, label_map: LabelMap | None = None) -> pd.DataFrame:
    """Read AVA ground truth: ``video_id, timestamp, x1, y1, x2, y2, action_id, person_id`` without header."""
    raw = _read_raw_csv(path, ANNOTATION_COLUMNS)
    video_id = _video_ids(raw)
    timestamp = _timestamps(raw)
    boxes = _boxes(raw)
    action_id = _numeric(raw, "action_id", integer=True)
    person_id = _numeric(raw, "person_id", integer=True)
    _check_label_ids(raw, action_id, label_map)
    df = pd.DataFrame(
        {
            "video_id": video_id,
            "timestamp": timestamp,
            **boxes,
            "action_id": action_id,
            "person_id": person_id,
        }
    )
    return _drop_duplicates(df, raw.lines, raw.path)


def read_predicted_boxes(path: str | Path) -> pd.DataFrame:
    """Read person detections: ``video_id, timestamp, x1, y1, x2, y2, action_id-or-empty, score``."""
    raw = _read_raw_csv(path, PREDICTED_BOX_COLUMNS)
    video_id = _video_ids(raw)
    timestamp = _timestamps(raw)
    boxes = _boxes(raw)
    action_id = _numeric(raw, "action_id", integer=True, allow_empty=True)
    score = _numeric(raw, "score", integer=False)
    return pd.DataFrame({"video_id": video_id, "timestamp": timestamp, **boxes, "action_id": action_id, "score": score})


def read_excluded_timestamps(path: str | Path) -> pd.DataFrame:
    """Read the keyframes excluded from evaluation: ``video_id, timestamp``; an empty file is allowed."""
    raw = _read_raw_csv(path, EXCLUDED_COLUMNS)
    df = pd.DataFrame({"video_id": _video_ids(raw), "timestamp": _timestamps(raw)})
    return _drop_duplicates(df, raw.lines, raw.path)


# ----------------------------------------------------------------------------------------------- CSV writing


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} frame lacks columns {missing}")
    ids = df["video_id"].astype(str)
    if ids.str.contains(r"[,\n\r]", regex=True).any():
        raise ValueError("video ids must not contain commas or line breaks (AVA CSVs are not quoted)")


def _fmt(values: pd.Series, spec: str) -> pd.Series:
    return values.map(spec.format)


def _timestamp_text(values: pd.Series) -> pd.Series:
    """AVA writes timestamps as zero-padded 4-digit integers ("0902")."""
    return _fmt(values.astype(np.int64), "{:04d}")


def _write_rows(columns: dict[str, pd.Series], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(columns).to_csv(path, header=False, index=False, lineterminator="\n", quoting=csv.QUOTE_NONE)


def _box_text(df: pd.DataFrame) -> dict[str, pd.Series]:
    return {c: _fmt(df[c].astype(np.float64), "{:.3f}") for c in BOX_COLUMNS}


def write_annotations(df: pd.DataFrame, path: str | Path) -> None:
    """Write ground truth in AVA's layout (no header, 3-decimal coordinates, 4-digit timestamps)."""
    _require(df, ANNOTATION_COLUMNS, "annotation")
    columns = {
        "video_id": df["video_id"].astype(str),
        "timestamp": _timestamp_text(df["timestamp"]),
        **_box_text(df),
        "action_id": _fmt(df["action_id"].astype(np.int64), "{:d}"),
        "person_id": _fmt(df["person_id"].astype(np.int64), "{:d}"),
    }
    _write_rows(columns, path)


def _scored_rows(df: pd.DataFrame, action_text: pd.Series) -> dict[str, pd.Series]:
    return {
        "video_id": df["video_id"].astype(str),
        "timestamp": _timestamp_text(df["timestamp"]),
        **_box_text(df),
        "action_id": action_text,
        "score": _fmt(df["score"].astype(np.float64), "{:.6f}"),
    }


def write_predicted_boxes(df: pd.DataFrame, path: str | Path) -> None:
    """Write person detections; a missing action id (NA) is written as an empty field, as AVA does."""
    _require(df, PREDICTED_BOX_COLUMNS, "predicted-box")
    action = df["action_id"].astype("Int64")
    text = pd.Series([""] * len(df), index=df.index, dtype=object)
    present = action.notna().to_numpy()
    text[present] = _fmt(action[present].astype(np.int64), "{:d}")
    _write_rows(_scored_rows(df, text), path)


def write_detections(df: pd.DataFrame, path: str | Path) -> None:
    """Write scored per-class detections in the layout the AVA evaluator reads."""
    _require(df, DETECTION_COLUMNS, "detection")
    action = df["action_id"]
    if action.isna().any():
        raise ValueError("detections need an action_id on every row")
    _write_rows(_scored_rows(df, _fmt(action.astype(np.int64), "{:d}")), path)


def write_excluded_timestamps(df: pd.DataFrame, path: str | Path) -> None:
    """Write excluded keyframes as ``video_id,timestamp`` rows."""
    _require(df, EXCLUDED_COLUMNS, "excluded-timestamp")
    _write_rows({"video_id": df["video_id"].astype(str), "timestamp": _timestamp_text(df["timestamp"])}, path)
