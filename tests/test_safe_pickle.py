"""The restricted unpickler: numpy arrays and builtins round-trip; anything callable is refused unexecuted."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from stages.data.safe_pickle import UnsafePickleError, load_pickle


def _payload() -> dict:
    """What ACT/MOC pickles and Caffe2 checkpoints contain: nested builtins and assorted arrays."""
    return {
        "labels": ["run", "jump"],
        "train_videos": [["a/v1", "a/v2"]],
        "nframes": {"a/v1": 40},
        "resolution": {"a/v1": (240, 320)},
        "gttubes": {"a/v1": {0: [np.arange(25, dtype=np.float32).reshape(5, 5)]}},
        "int64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "bool": np.array([True, False]),
        "float16": np.array([1.5, -2.0], dtype=np.float16),
        "zero_d": np.array(3.25),
        "scalar": np.float32(1.5),
        "misc": (None, 1.0, True, b"raw", {1, 2}, frozenset({3})),
    }


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_round_trip_with_numpy_arrays(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / f"p{protocol}.pkl"
    data = _payload()
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    _assert_same(data, load_pickle(path))


# Python 3 writes protocols 0-2 with Python 2 names (``builtins.bytes`` -> ``__builtin__.bytes``); an empty array
# needs ``bytes()`` for its data at protocol <= 2. These harmless names must be admitted in both spellings.
@pytest.mark.parametrize("value", [np.zeros((0, 5)), b"", bytearray(b"xy"), 2 + 3j], ids=["empty", "b", "ba", "c"])
def test_protocol2_builtins_in_python2_spelling(tmp_path: Path, value: object) -> None:
    path = tmp_path / "p2.pkl"
    path.write_bytes(pickle.dumps({"v": value}, protocol=2))
    _assert_same({"v": value}, load_pickle(path))


@pytest.mark.parametrize("protocol", [4, 5])
def test_round_trip_empty_array_and_other_builtins(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "p.pkl"
    data = {"empty": np.zeros((0, 5)), "misc": [b"", bytearray(b"xy"), 2 + 3j, range(3), slice(1, 2)]}
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    _assert_same(data, load_pickle(path))


def _py2_array_pickle() -> bytes:
    """A dict with a str list and a float64 array, opcode for opcode as Python 2 + numpy 1.x wrote it.

    Python 2 wrote ``str`` (also the array's raw bytes) as SHORT_BINSTRING and named
    ``numpy.core.multiarray._reconstruct``; reading needs the latin-1 encoding.
    """

    def s(text: bytes) -> bytes:  # SHORT_BINSTRING
        return b"U" + bytes([len(text)]) + text

    raw = np.array([1.0, 2.5, -3.0], dtype="<f8").tobytes()
    return b"".join(
        [
            b"\x80\x02}(",  # PROTO 2, EMPTY_DICT, MARK
            s(b"labels"),
            b"](" + s(b"run") + s(b"caf\xe9") + b"e",  # EMPTY_LIST, MARK, items, APPENDS
            s(b"x"),
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R",
            b"(K\x01K\x03\x85",  # MARK, version 1, shape (3,)
            b"cnumpy\ndtype\n" + s(b"f8") + b"K\x00K\x01\x87R",  # dtype('f8', 0, 1)
            b"(K\x03" + s(b"<") + b"NNNJ" + struct.pack("<i", -1) + b"J" + struct.pack("<i", -1) + b"K\x00tb",
            b"\x89" + s(raw) + b"tb",  # is_fortran False, raw data; BUILD the array
            b"u.",  # SETITEMS, STOP
        ]
    )


def test_python2_pickle_is_read_with_latin1(tmp_path: Path) -> None:
    path = tmp_path / "py2.pkl"
    path.write_bytes(_py2_array_pickle())
    data = load_pickle(path)
    assert data["labels"] == ["run", "café"]
    np.testing.assert_array_equal(data["x"], [1.0, 2.5, -3.0])


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_os_system_via_reduce_is_refused_and_not_run(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"labels": ["x"], "payload": _Evil(marker)}, protocol=protocol))
    with pytest.raises(UnsafePickleError) as err:
        load_pickle(path)
    message = str(err.value)
    assert str(path) in message
    assert f"{os.system.__module__}.system" in message  # posix.system on Linux
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [("builtins", "eval"), ("builtins", "getattr"), ("numpy", "load"), ("subprocess", "Popen"), ("os", "system")],
)
def test_other_callables_are_refused(tmp_path: Path, module: str, name: str) -> None:
    path = tmp_path / "global.pkl"
    path.write_bytes(b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n.")
    with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
        load_pickle(path)


@pytest.mark.parametrize(
    "payload",
    [
        b"ccopyreg\n_reconstructor\n}(X\x01\x00\x00\x00xK\x01ub.",  # BUILD: a dict state on an allowed function
        b"ccopyreg\n_reconstructor\nN}(X\x01\x00\x00\x00xK\x01u\x86b.",  # BUILD: a slot state on it
        b"cbuiltins\ndict\n}(X\x01\x00\x00\x00xK\x01ub.",  # BUILD on an allowed type
    ],
    ids=["function-dict-state", "function-slot-state", "type-state"],
)
def test_a_pickle_cannot_set_attributes_on_allowed_callables(tmp_path: Path, payload: bytes) -> None:
    import copyreg

    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        load_pickle(path)
    assert not hasattr(copyreg._reconstructor, "x") and not hasattr(dict, "x")
