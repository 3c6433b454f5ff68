"""Loading users' pickles (ACT/MOC ground truth, Caffe2 checkpoints) without executing anything from them.

Plain ``pickle.load`` runs whatever callable a file names. This unpickler admits only builtin containers and
scalars and what numpy needs to rebuild arrays and dtypes; anything else is refused with the file named.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from cache_spec.errors import InputError

_BUILTINS = (
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "str",
    "bytes",
    "bytearray",
    "int",
    "float",
    "complex",
    "bool",
    "slice",
    "range",
    "object",
)
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        *(("builtins", name) for name in _BUILTINS),
        *(("__builtin__", name) for name in (*_BUILTINS, "xrange", "unicode", "long")),  # Python 2 spellings
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes for Python 2 (numpy array payloads)
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol-5 array pickles
        ("numpy._core.numeric", "_frombuffer"),
    }
)


class UnsafePickleError(InputError, pickle.UnpicklingError):
    """The file asks to build something other than builtins and numpy arrays."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path, encoding: str):
        super().__init__(file, encoding=encoding)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._path}: refusing to load {module}.{name}: only builtins and numpy arrays are allowed"
        )


def load_pickle(path: Path | str, encoding: str = "latin1") -> Any:
    """Unpickle ``path`` admitting only builtins and numpy arrays (latin1 reads Python 2 pickles too)."""
    path = Path(path)
    with path.open("rb") as f:
        return _RestrictedUnpickler(f, path, encoding).load()
