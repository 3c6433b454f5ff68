"""Readers and writers for the AVA formats: label maps, ground truth, detections, predicted boxes, excluded keyframes.

The CSV readers accept what ActivityNet's AVA evaluator (``get_ava_performance.py``) accepts and read it the same
way, so that a file it scores is scored here to the same number; where it would crash (a malformed number, a row of
the wrong length) the error names the file and the 1-based line and says what is expected. Its rules:

* rows are split by Python's ``csv.reader``: fields may be quoted (``"-5KQ66BBWC4",0902,...``), numbers are read by
  ``float`` (``int`` for action ids), so spaces around them and digit underscores are fine; video ids are verbatim;
* ground truth rows have 8 fields, 7 without ``person_id``, or 2 (``video_id,timestamp``): a keyframe without actors,
  ActivityNet's marker since 2020. That keyframe is evaluated, so detections on it are false positives (the older
  excluded-timestamps file instead removes keyframes from both sides);
* timestamps are keyed to the microsecond (``'%.6f'``): ``0902``, ``902`` and ``902.0`` are one keyframe, ``903.5``
  another;
* rows whose action id is not in the label map are skipped (one warning gives their count and ids): the official
  AVA v2.2 ground truth has 80 ids, the evaluation label map 60. The fields after the action id are then not read;
* exact duplicate rows are kept: the evaluator counts each ground-truth row as a box;
* detection boxes are kept as given (outside [0, 1], or with x1 >= x2, which the evaluation drops after its
  per-keyframe cap); 7-field detections have score 1.0.

Deliberately stricter than the reference: non-finite numbers (``nan``, ``inf``), empty video ids in ground truth,
and ground-truth boxes outside [0, 1] or without area (of the label map's classes) are errors; blank lines and a
UTF-8 byte-order mark are skipped (the reference crashes on blank lines).

Plain files (printable ASCII, unquoted: the usual case) are parsed by pandas' C engine with vectorised checks; any
file whose text pandas and Python could read differently goes through ``csv.reader`` and ``float`` themselves.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

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

# A "plain" file holds printable ASCII, tabs and newlines, and no quotes. Plain files (the usual case) are parsed by
# Arrow (every line complete) or pandas' C engine (any line structure) with vectorised checks; any other file goes
# through Python's csv module and float() / int(), the official evaluator's own parsers. Each fast reader declines
# text it might read differently from Python, so all paths accept exactly the same text.
_PLAIN_BYTES = bytes(c for c in range(32, 127) if c not in b"xX") + b"\t\n"  # x and X are told apart below
_EXPONENT_SPACE = re.compile(rb"[eE][ \t]")  # "1e 5": pandas reads it, float() does not
_BOOL_TOKENS = ("true", "false")  # pandas reads a column made only of these as 1.0 / 0.0, float() does not
_DIGITS_AND_SIGNS = np.zeros(256, dtype=bool)
_DIGITS_AND_SIGNS[list(b"0123456789+-")] = True


@dataclass
class _Table:
    """The fields of a headerless AVA CSV: video ids, numbers, and each row's field count and 1-based file line.

    ``values`` holds one float64 array per column after the video id: NaN where the row has no such field, where
    the field is blank, or where it is not a number (Python's ``float``; ``int`` for ``action_id``), +-inf where it
    overflows. ``blank`` marks present but blank fields, per column (absent: NaN in a present field means blank).
    """

    path: Path
    columns: tuple[str, ...]
    video_id: pd.Series
    values: dict[str, np.ndarray]
    blank: dict[str, np.ndarray] | None
    n_fields: np.ndarray
    lines: np.ndarray
    row_fields: Callable[[int], list[str]]

    def column(self, name: str) -> np.ndarray:
        return self.values[name]

    def present(self, name: str) -> np.ndarray:
        return self.n_fields > self.columns.index(name)

    def invalid(self, name: str, allow_blank: bool = False) -> np.ndarray:
        """Rows that have the field but no finite number in it (blank fields allowed with ``allow_blank``)."""
        present, finite = self.present(name), np.isfinite(self.values[name])
        if not allow_blank:
            return present & ~finite
        blank = np.isnan(self.values[name]) if self.blank is None else self.blank[name]
        return present & ~finite & ~blank

    def text(self, row: int, name: str) -> str:
        fields = self.row_fields(row)
        i = self.columns.index(name)
        return fields[i] if i < len(fields) else ""

    def __len__(self) -> int:
        return len(self.n_fields)


Check = tuple[np.ndarray, Callable[[int], str]]


def _raise_first(table: _Table, checks: Sequence[Check]) -> None:
    """Raise for the earliest row that fails any check (on one row, the first check listed wins)."""
    best: tuple[int, Callable[[int], str]] | None = None
    for mask, message in checks:
        if mask.any():
            row = int(np.argmax(mask))
            if best is None or row < best[0]:
                best = (row, message)
    if best is not None:
        raise AvaFormatError(table.path, int(table.lines[best[0]]), best[1](best[0]))


def _read_table(path: str | Path, columns: Sequence[str], counts: Sequence[int], layout: str) -> _Table:
    """Read a headerless CSV whose rows have one of ``counts`` fields; ``layout`` explains the columns in errors."""
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\r" in data:  # universal newlines, as the official evaluator's text-mode file has them
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    table = None
    others = data.translate(None, _PLAIN_BYTES)  # one pass: any byte outside the plain set, and every x or X
    if data and not others.strip(b"xX") and _is_plain(data):
        hexadecimal = bool(others) and (b"0x" in data or b"0X" in data)  # Arrow reads 0x10 as 16, int() does not
        table = None if hexadecimal else _read_arrow(path, data, tuple(columns))
        table = table or _read_plain(path, data, tuple(columns), counts, layout)
    return table if table is not None else _read_exact(path, data, tuple(columns), counts, layout)


def _is_plain(data: bytes) -> bool:
    """No quotes, nor the few spellings on which pandas and float() disagree (given printable ASCII)."""
    if b'"' in data:
        return False
    return not ((b" " in data or b"\t" in data) and _EXPONENT_SPACE.search(data))


def _count_error(path: Path, line: int, n: int, counts: Sequence[int], layout: str) -> AvaFormatError:
    return AvaFormatError(path, line, f"expected {max(counts)} columns, got {n}: {layout}")


def _writable(values: np.ndarray) -> np.ndarray:
    """float64 values the caller owns (Arrow's and pandas' own buffers are read-only: frames built on them could
    not be edited in place)."""
    if values.dtype == np.float64 and values.flags.writeable:
        return values
    return np.array(values, dtype=np.float64)


def _lazy_line_fields(buf: np.ndarray) -> Callable[[int], list[str]]:
    """The fields of the row-th line of a plain file with one row per line (newlines found on first use)."""
    ends: list[np.ndarray] = []

    def fields(row: int) -> list[str]:
        if not ends:
            ends.append(np.flatnonzero(buf == ord("\n")))
        start = 0 if row == 0 else int(ends[0][row - 1]) + 1
        return buf[start : int(ends[0][row])].tobytes().decode().split(",")

    return fields


def _read_arrow(path: Path, data: bytes, columns: tuple[str, ...]) -> _Table | None:
    """The fast path: every line has all the columns. None for any other file, or text Arrow cannot read.

    Arrow's number parsing accepts exactly what ``float`` accepts (blank fields aside, which become NaN here), and
    for integers a subset of what ``int`` accepts, hexadecimal aside (the caller keeps ``0x`` away); so any text it
    reads, it reads as Python does.
    """
    numeric = columns[1:]
    types = {"video_id": pa.string(), **{c: pa.int64() if c == "action_id" else pa.float64() for c in numeric}}
    try:
        table = pa_csv.read_csv(
            io.BytesIO(data),
            read_options=pa_csv.ReadOptions(
                column_names=list(columns), use_threads=False, block_size=min(max(len(data) + 1, 1 << 20), 1 << 30)
            ),
            parse_options=pa_csv.ParseOptions(quote_char=False, ignore_empty_lines=True),
            convert_options=pa_csv.ConvertOptions(
                column_types=types, null_values=[""], strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
            memory_pool=pa.system_memory_pool(),  # malloc: Arrow's own pool costs more system time than it saves
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # a line with other fields, or a value Arrow cannot read: the other readers decide
    n = table.num_rows
    if n != data.count(b"\n"):  # blank lines: the line numbers need the scan of the other reader
        return None
    values = {c: _writable(table.column(c).to_numpy()) for c in numeric}
    blank = {c: table.column(c).is_null().to_numpy() for c in numeric}
    video_id = table.column("video_id").to_pandas()
    if not isinstance(video_id, pd.Series) or len(video_id) != n:
        return None
    n_fields = np.full(n, len(columns), dtype=np.int64)
    lines = np.arange(1, n + 1, dtype=np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    return _Table(path, columns, video_id.astype(str), values, blank, n_fields, lines, _lazy_line_fields(buf))


def _read_plain(path: Path, data: bytes, columns: tuple[str, ...], counts: Sequence[int], layout: str) -> _Table | None:
    """Vectorised reader for any plain file: a scan of the bytes gives each line's fields, pandas the numbers.

    None where the text needs Python's own parsers to decide.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    scanned = _scan_lines(path, data, buf, columns, counts, layout)
    if scanned is None:
        return None
    n_fields, lines, data_line = scanned
    numeric = list(columns[1:])
    try:
        frame = pd.read_csv(
            io.BytesIO(data),
            header=None,
            names=list(columns),
            dtype={"video_id": str, **dict.fromkeys(numeric, np.float64)},
            keep_default_na=False,
            na_values=dict.fromkeys(numeric, [""]),
            index_col=False,
            quoting=csv.QUOTE_NONE,
            engine="c",
            low_memory=False,
        )
    except (ValueError, pd.errors.ParserError):
        return None  # a field pandas cannot read: let float() decide, and name the line if it fails too
    if len(frame) != len(n_fields):
        return None
    values = {c: _writable(frame[c].to_numpy()) for c in numeric}
    if any(_bool_column(values[c], n_fields > i, i, data_line) for i, c in enumerate(numeric, start=1)):
        return None
    # Only a blank field reads as NaN here ("nan" and the like fail above), so ``blank`` can stay implicit.
    return _Table(path, columns, frame["video_id"], values, None, n_fields, lines, data_line)


def _scan_lines(
    path: Path, data: bytes, buf: np.ndarray, columns: tuple[str, ...], counts: Sequence[int], layout: str
) -> tuple[np.ndarray, np.ndarray, Callable[[int], list[str]]] | None:
    """Field count, file line and text of every non-blank line, from the bytes; raises for a wrong field count.

    Blank (or whitespace-only) lines are skipped, as pandas skips them. None where the action_id text needs int().
    """
    ends = np.flatnonzero(buf == ord("\n"))
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    commas = np.flatnonzero(buf == ord(","))
    first_comma = np.searchsorted(commas, starts)
    n_fields = np.diff(np.append(first_comma, len(commas))) + 1
    lines = np.arange(1, len(ends) + 1, dtype=np.int64)
    keep = np.ones(len(ends), dtype=bool)
    for i in np.flatnonzero(n_fields == 1):  # blank lines are skipped; any other single field is an error
        if data[starts[i] : ends[i]].strip():
            break
        keep[i] = False
    bad = np.flatnonzero(keep & ~np.isin(n_fields, counts))
    if bad.size:
        row = int(bad[0])
        raise _count_error(path, int(lines[row]), int(n_fields[row]), counts, layout)
    if not keep.all():
        starts, ends, first_comma, n_fields, lines = (a[keep] for a in (starts, ends, first_comma, n_fields, lines))
    if "action_id" in columns:
        k = columns.index("action_id")
        rows = n_fields > k
        fc, nf, line_end = first_comma[rows], n_fields[rows], ends[rows]
        start = commas[fc + k - 1] + 1 if fc.size else fc
        stop = np.where(nf > k + 1, commas[np.minimum(fc + k, len(commas) - 1)], line_end) if fc.size else fc
        if not _plain_integers(buf, start, stop):
            return None

    def data_line(row: int) -> list[str]:
        return buf[starts[row] : ends[row]].tobytes().decode().split(",")

    return n_fields.astype(np.int64), lines, data_line


def _plain_integers(buf: np.ndarray, start: np.ndarray, stop: np.ndarray) -> bool:
    """Whether the fields ``buf[start:stop]`` are digits with signs only, text on which pandas and int() agree."""
    length = stop - start
    width = int(length.max()) if length.size else 0
    if width > 24:
        return False
    ok = np.ones(len(start), dtype=bool)
    for offset in range(width):  # one gather per character position: the fields are short
        ok &= (length <= offset) | _DIGITS_AND_SIGNS[buf[np.minimum(start + offset, len(buf) - 1)]]
    return bool(ok.all())


def _bool_column(values: np.ndarray, present: np.ndarray, index: int, row_fields: Callable[[int], list[str]]) -> bool:
    """Whether pandas read a column made only of true/false words (it would then hold only 0, 1 and NaN)."""
    head = values[:1000]
    if not ((head == 0) | (head == 1) | np.isnan(head)).all():
        return False
    if not ((values == 0) | (values == 1) | np.isnan(values)).all():
        return False
    finite = np.flatnonzero(np.isfinite(values) & present)
    return bool(finite.size) and row_fields(int(finite[0]))[index].strip().lower() in _BOOL_TOKENS


def _python_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _python_int(text: str) -> float:
    try:
        return float(int(text))
    except (ValueError, OverflowError):
        return math.nan


def _read_exact(path: Path, data: bytes, columns: tuple[str, ...], counts: Sequence[int], layout: str) -> _Table:
    """The official evaluator's own parsing: ``csv.reader`` (quotes and all), ``float`` and ``int`` per field."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise AvaFormatError(path, line, f"not UTF-8 text ({err.reason}); save the file as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline="\n"))
    rows: list[list[str]] = []
    lines: list[int] = []
    previous = 0
    try:
        for row in reader:
            line, previous = previous + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) not in counts:
                raise _count_error(path, line, len(row), counts, layout)
            rows.append(row)
            lines.append(line)
    except csv.Error as err:
        raise AvaFormatError(path, reader.line_num, f"malformed CSV ({err}); quote fields with double quotes") from None

    n = len(rows)
    n_fields = np.fromiter((len(r) for r in rows), dtype=np.int64, count=n)
    values: dict[str, np.ndarray] = {}
    blank: dict[str, np.ndarray] = {}
    for j, name in enumerate(columns[1:], start=1):
        parse = _python_int if name == "action_id" else _python_float
        texts = [r[j] if len(r) > j else "" for r in rows]
        values[name] = np.fromiter((parse(t) for t in texts), dtype=np.float64, count=n)
        blank[name] = np.fromiter((not t.strip() for t in texts), dtype=bool, count=n) & (n_fields > j)
    video_id = pd.Series([r[0] for r in rows], dtype=str)
    return _Table(path, columns, video_id, values, blank, n_fields, np.asarray(lines, dtype=np.int64), rows.__getitem__)


# ----------------------------------------------------------------------------------------------- validation


def _is_number(text: str) -> bool:
    return math.isfinite(_python_float(text))


def _number_checks(table: _Table, names: Sequence[str], rows: np.ndarray | None = None) -> list[Check]:
    """'non-numeric <column>' for each named column (``action_id``: also 'not an integer'), on ``rows`` only."""
    checks: list[Check] = []
    for name in names:
        bad = table.invalid(name) if rows is None else table.invalid(name) & rows

        def message(row: int, name: str = name) -> str:
            text = table.text(row, name)
            if name == "action_id" and _is_number(text):
                return f"action_id {text!r} is not an integer: action ids are the label map's integer ids"
            return f"non-numeric {name} {text!r}: expected a finite number"

        checks.append((bad, message))
    return checks


MAX_TIMESTAMP = 86_400  # a day of seconds (or 48 minutes of frames at 30 fps): larger is not a keyframe time


def _counted(table: _Table, bad: np.ndarray, name: str, rule: str) -> Check:
    """A range check whose message says how many rows break it."""

    def message(row: int) -> str:
        return f"{name} {table.text(row, name).strip()} is implausible: {rule} ({int(bad.sum())} such rows)"

    return (bad, message)


def _action_id_range_check(table: _Table, rows: np.ndarray) -> Check:
    """Without a label map nothing bounds an id, but it must fit the int64 column it is read into."""
    return (
        rows & (np.abs(table.column("action_id")) >= 2**63),
        lambda row: f"action_id {table.text(row, 'action_id')} is out of range",
    )


def _video_id_check(table: _Table) -> list[Check]:
    """Every row has a video id, and the id is a name (``class/video`` parts allowed), never a path out of its folder.

    Ids become file names when videos and per-video outputs are found, so ``../x`` or ``/abs/x`` must not pass.
    """
    ids = table.video_id
    empty = (ids == "").to_numpy(dtype=bool)
    path = (
        ids.str.contains("\\\\|\x00", regex=True)
        | ids.str.startswith("/")
        | ids.str.endswith("/")
        | ids.str.contains(r"(?:^|/)\.{1,2}(?:/|$)|//", regex=True)
    ).to_numpy(dtype=bool) & ~empty

    def message(row: int) -> str:
        name = str(ids.iloc[row])
        return f"video_id {name!r} is a path, not a name: ids may not hold '..', backslashes or NUL, or start with '/'"

    return [(empty, lambda row: "empty video_id: every row starts with one"), (path, message)]


def _unit_box_checks(table: _Table, rows: np.ndarray) -> list[Check]:
    """Corners inside [0, 1] with positive width and height, on ``rows``."""

    def outside(name: str) -> Callable[[int], str]:
        def message(row: int) -> str:
            value = table.text(row, name).strip()
            return f"{name} {value} is outside [0, 1]: AVA coordinates are fractions of the frame width and height"

        return message

    def inverted(lo: str, hi: str) -> Callable[[int], str]:
        def message(row: int) -> str:
            return f"{hi} {table.text(row, hi).strip()} <= {lo} {table.text(row, lo).strip()}: a box needs {lo} < {hi}"

        return message

    checks: list[Check] = []
    for name in BOX_COLUMNS:
        v = table.column(name)
        checks.append((rows & ((v < 0) | (v > 1)), outside(name)))
    for lo, hi in (("x1", "x2"), ("y1", "y2")):
        checks.append((rows & (table.column(hi) <= table.column(lo)), inverted(lo, hi)))
    return checks


def _timestamps(values: np.ndarray) -> pd.Series:
    """Integer timestamps stay int64 (AVA's seconds); fractional ones (``903.5``) make the column float64."""
    if not values.size or (np.all(values == np.round(values)) and np.abs(values).max() < 2**53):
        return pd.Series(values.astype(np.int64))
    return pd.Series(values)


def _integers(values: np.ndarray) -> pd.Series:
    """int64 if every value is there, the nullable Int64 if some are missing (NaN)."""
    missing = np.isnan(values)
    if not missing.any():
        return pd.Series(values.astype(np.int64))
    out = np.where(missing, 0, values).astype(np.int64)
    return pd.Series(pd.arrays.IntegerArray(out, missing))


def _person_ids(values: np.ndarray) -> pd.Series:
    finite = values[np.isfinite(values)]
    if np.all(finite == np.round(finite)) and (finite.size == 0 or np.abs(finite).max() < 2**53):
        return _integers(values)
    return pd.Series(values)


def _keyframes(video_id: pd.Series, timestamp: np.ndarray) -> np.ndarray:
    """One integer per (video_id, timestamp), timestamps compared to the microsecond like the official keys."""
    vcode = pd.factorize(video_id)[0]
    micros = np.rint(timestamp * 1e6).astype(np.int64)
    return pd.DataFrame({"v": vcode, "t": micros}).groupby(["v", "t"], sort=False).ngroup().to_numpy()


def _take(column: pd.Series, rows: np.ndarray) -> pd.Series:
    """``column`` at ``rows`` (sorted), indexed 0..n-1; no copy when every row is taken."""
    if len(rows) == len(column):
        return column.reset_index(drop=True)
    return column.iloc[rows].reset_index(drop=True)


def _format_ids(ids: np.ndarray, limit: int = 30) -> str:
    shown = ", ".join(str(int(i)) if abs(i) < 2**63 else f"{i:g}" for i in ids[:limit])
    return shown + (f", ... ({len(ids)} ids)" if len(ids) > limit else "")


def _in_label_map(table: _Table, rows: np.ndarray, label_map: LabelMap | None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, skipped): ``rows`` whose action_id is in the label map, and the others, with one summary warning."""
    if label_map is None:
        return rows, np.zeros_like(rows)
    action = table.column("action_id")
    kept = rows & np.isin(action, label_map.ids)
    skipped = rows & ~kept & np.isfinite(action)
    if skipped.any():
        ids = np.unique(action[skipped])
        logger.warning(
            "%s: skipped %d rows whose action_id is not in the label map (ids %s), as the official evaluator does",
            table.path,
            int(skipped.sum()),
            _format_ids(ids),
        )
    return kept, skipped


def read_annotations(path: str | Path, label_map: LabelMap | None = None) -> pd.DataFrame:
    """Read AVA ground truth, without header, rows in one of three forms (mixed freely, as the official evaluator):

    * ``video_id, timestamp, x1, y1, x2, y2, action_id, person_id``: one action of one actor;
    * the same without ``person_id`` (7 fields): ``person_id`` is NA;
    * ``video_id, timestamp``: a keyframe without actors (ActivityNet's convention since 2020). The keyframe is
      evaluated, so detections there are false positives; it comes back as a row with NaN box, NA action_id and NA
      person_id.

    With ``label_map``, rows whose action_id is not in it are skipped with one warning (the official AVA v2.2 files
    carry 80 ids, the evaluation label map 60); a keyframe whose rows are all skipped stays evaluated, as in the
    official evaluator, and comes back as one keyframe-without-actors row. Exact duplicate rows are kept: the
    official evaluator counts each as a box. Timestamps may be fractional (``903.5``); they are int64 when all are
    whole seconds. Columns are int64 where nothing is missing, nullable Int64 otherwise.
    """
    table = _read_table(
        path,
        ANNOTATION_COLUMNS,
        (2, 7, 8),
        "ground-truth rows are video_id,timestamp,x1,y1,x2,y2,action_id[,person_id], "
        "or video_id,timestamp for a keyframe without actors",
    )
    has_box = table.n_fields >= 7
    kept, skipped = _in_label_map(table, has_box, label_map)
    checks = [
        *_video_id_check(table),
        *_number_checks(table, ["timestamp", *BOX_COLUMNS, "action_id"]),
        *_number_checks(table, ["person_id"], kept),  # the official evaluator reads it only on rows it keeps
        *_unit_box_checks(table, kept),
    ]
    if label_map is None:
        checks.append(_action_id_range_check(table, kept))
    _raise_first(table, checks)

    timestamp = table.column("timestamp")
    out = ~skipped
    blank = ~has_box | skipped
    if skipped.any():  # keep each keyframe the skipped rows alone annotate, as one keyframe-without-actors row
        key = _keyframes(table.video_id, timestamp)
        covered = np.zeros(int(key.max()) + 1, dtype=bool)
        covered[key[out]] = True
        rows = np.flatnonzero(skipped)
        _, first = np.unique(key[rows], return_index=True)
        marker = rows[first][~covered[key[rows[first]]]]
        out[marker] = True
    rows = np.flatnonzero(out)
    blank = blank[rows]

    def field(name: str) -> np.ndarray:
        values = table.column(name) if len(rows) == len(table) else table.column(name)[rows]
        return np.where(blank, np.nan, values) if blank.any() else values

    return pd.DataFrame(
        {
            "video_id": _take(table.video_id, rows),
            "timestamp": _timestamps(timestamp if len(rows) == len(table) else timestamp[rows]),
            **{c: field(c) for c in BOX_COLUMNS},
            "action_id": _integers(field("action_id")),
            "person_id": _person_ids(field("person_id")),
        },
        copy=False,
    )


def read_detections(path: str | Path, label_map: LabelMap | None = None) -> pd.DataFrame:
    """Read scored detections as the official evaluator does: ``video_id, timestamp, x1, y1, x2, y2, action_id,
    score`` without header.

    Rows of 7 fields have score 1.0; rows of 2 fields (``video_id, timestamp``) carry no detection and are dropped.
    With ``label_map``, rows whose action_id is not in it are skipped with one warning (they do not take a slot in
    the per-keyframe cap either). Boxes are kept as given, also outside [0, 1] or with x1 >= x2 (``frame_map`` drops
    those after the per-keyframe cap, as the official evaluator does); each kind is counted in one log line. Rows
    keep the file's order, which decides the official evaluator's ties.
    """
    table = _read_table(
        path,
        DETECTION_COLUMNS,
        (2, 7, 8),
        "detection rows are video_id,timestamp,x1,y1,x2,y2,action_id,score (score 1.0 when left out)",
    )
    has_box = table.n_fields >= 7
    kept, _ = _in_label_map(table, has_box, label_map)
    checks = [
        *_number_checks(table, ["timestamp", *BOX_COLUMNS, "action_id"]),
        *_number_checks(table, ["score"], kept),
    ]
    if label_map is None:
        checks.append(_action_id_range_check(table, kept))
    _raise_first(table, checks)
    rows = np.flatnonzero(kept)

    def at(values: np.ndarray) -> np.ndarray:
        return values if len(rows) == len(values) else values[rows]

    box = {c: at(table.column(c)) for c in BOX_COLUMNS}
    score, short = at(table.column("score")), at(table.n_fields) == 7
    if short.any():
        score = np.where(short, 1.0, score)
    _log_unusual_boxes(table, rows, box)
    return pd.DataFrame(
        {
            "video_id": _take(table.video_id, rows),
            "timestamp": _timestamps(at(table.column("timestamp"))),
            **box,
            "action_id": pd.Series(at(table.column("action_id")).astype(np.int64)),
            "score": score,
        },
        copy=False,
    )


def _log_unusual_boxes(table: _Table, rows: np.ndarray, box: dict[str, np.ndarray]) -> None:
    outside = np.zeros(len(rows), dtype=bool)
    for c in BOX_COLUMNS:
        outside |= (box[c] < 0) | (box[c] > 1)
    inverted = (box["x1"] >= box["x2"]) | (box["y1"] >= box["y2"])
    if outside.any():
        logger.info(
            "%s: %d detection boxes reach outside [0, 1] (first at line %d); they are scored as given",
            table.path,
            int(outside.sum()),
            int(table.lines[rows[np.argmax(outside)]]),
        )
    if inverted.any():
        logger.warning(
            "%s: %d detection boxes have x1 >= x2 or y1 >= y2 (first at line %d); like the official evaluator, the "
            "evaluation drops them after the per-keyframe cap",
            table.path,
            int(inverted.sum()),
            int(table.lines[rows[np.argmax(inverted)]]),
        )


def read_predicted_boxes(path: str | Path) -> pd.DataFrame:
    """Read person detections: ``video_id, timestamp, x1, y1, x2, y2, action_id-or-empty, score``.

    These boxes feed extraction, so they must be proper boxes inside the frame, with detector scores in [0, 1] and
    timestamps that can be seconds (or frames) of a video: a score of 2.5 is a logit or another file's column, a
    timestamp of 999999 a unit mix-up (the scored detections the evaluator reads, any real score, boxes as given,
    go through ``read_detections``). The error names the first offending line and how many rows share the problem.
    """
    table = _read_table(
        path,
        PREDICTED_BOX_COLUMNS,
        (8,),
        "predicted-box rows are video_id,timestamp,x1,y1,x2,y2,action_id (may be empty),score",
    )
    every = np.ones(len(table), dtype=bool)
    action_bad = table.invalid("action_id", allow_blank=True)
    checks = [
        *_video_id_check(table),
        *_number_checks(table, ["timestamp", *BOX_COLUMNS]),
        (action_bad, _number_checks(table, ["action_id"])[0][1]),
        *_number_checks(table, ["score"]),
        *_unit_box_checks(table, every),
        _counted(
            table,
            (table.column("score") < 0) | (table.column("score") > 1),
            "score",
            "a person detector's score is a probability in [0, 1] (a logit? apply a sigmoid)",
        ),
        _counted(
            table,
            (table.column("timestamp") < 0) | (table.column("timestamp") > MAX_TIMESTAMP),
            "timestamp",
            f"keyframe times are seconds (or frame numbers) of a video, 0..{MAX_TIMESTAMP}",
        ),
    ]
    _raise_first(table, checks)
    return pd.DataFrame(
        {
            "video_id": table.video_id.reset_index(drop=True),
            "timestamp": _timestamps(table.column("timestamp")),
            **{c: table.column(c) for c in BOX_COLUMNS},
            "action_id": _integers(table.column("action_id")).astype("Int64"),
            "score": table.column("score"),
        }
    )


def read_excluded_timestamps(path: str | Path) -> pd.DataFrame:
    """Read the keyframes excluded from evaluation: ``video_id, timestamp``; an empty file is allowed.

    The older official evaluator's ``-e`` file: excluded keyframes count neither way. Repeated rows are one keyframe.
    """
    table = _read_table(path, EXCLUDED_COLUMNS, (2,), "excluded keyframes are video_id,timestamp")
    _raise_first(table, [*_video_id_check(table), *_number_checks(table, ["timestamp"])])
    df = pd.DataFrame(
        {"video_id": table.video_id.reset_index(drop=True), "timestamp": _timestamps(table.column("timestamp"))}
    )
    return df.drop_duplicates(ignore_index=True)


# ----------------------------------------------------------------------------------------------- CSV writing


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} frame lacks columns {missing}")
    ids = df["video_id"].astype(str)
    if ids.str.contains(r"[,\n\r\"]", regex=True).any():
        raise ValueError("video ids must not contain commas, quotes or line breaks (AVA CSVs are not quoted)")


def _fmt(values: pd.Series, spec: str) -> pd.Series:
    return values.map(spec.format)


def _timestamp_text(values: pd.Series) -> pd.Series:
    """AVA writes timestamps as zero-padded 4-digit integers ("0902"); fractional ones as decimals ("903.5")."""
    v = pd.to_numeric(values).to_numpy(dtype=np.float64)
    if np.all(v == np.round(v)):
        return _fmt(pd.Series(v.astype(np.int64), index=values.index), "{:04d}")
    text = [f"{int(x):04d}" if x == round(x) else f"{x:.6f}".rstrip("0") for x in v]
    return pd.Series(text, index=values.index, dtype=object)


def _write_rows(columns: dict[str, pd.Series], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(columns).to_csv(path, header=False, index=False, lineterminator="\n", quoting=csv.QUOTE_NONE)


def _box_text(df: pd.DataFrame) -> dict[str, pd.Series]:
    return {c: _fmt(df[c].astype(np.float64), "{:.3f}") for c in BOX_COLUMNS}


def write_annotations(df: pd.DataFrame, path: str | Path) -> None:
    """Write ground truth in AVA's layout (no header, 3-decimal coordinates, 4-digit timestamps).

    A row with an NA action_id is written as ``video_id,timestamp`` (a keyframe without actors), one with an NA
    person_id without that field, so ``read_annotations`` reads back what it returned.
    """
    _require(df, ANNOTATION_COLUMNS, "annotation")
    video_id, timestamp = df["video_id"].astype(str), _timestamp_text(df["timestamp"])
    action = df["action_id"].astype("Int64")
    person = pd.to_numeric(df["person_id"])
    if not action.isna().any() and not person.isna().any():
        columns = {
            "video_id": video_id,
            "timestamp": timestamp,
            **_box_text(df),
            "action_id": _fmt(action.astype(np.int64), "{:d}"),
            "person_id": _fmt(person.astype(np.int64), "{:d}"),
        }
        _write_rows(columns, path)
        return
    lines = []
    boxes = df[BOX_COLUMNS].to_numpy(dtype=np.float64, na_value=np.nan)
    for i, (v, t, a, p) in enumerate(zip(video_id, timestamp, action, person, strict=True)):
        if pd.isna(a):
            lines.append(f"{v},{t}")
            continue
        x1, y1, x2, y2 = boxes[i]
        line = f"{v},{t},{x1:.3f},{y1:.3f},{x2:.3f},{y2:.3f},{int(a)}"
        lines.append(line if pd.isna(p) else f"{line},{int(p) if p == round(p) else p}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


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
