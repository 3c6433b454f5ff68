"""Loading users' pickles (ACT/MOC ground truth, Caffe2 checkpoints) without executing anything from them.

Plain ``pickle.load`` runs whatever callable a file names. This unpickler admits only builtin containers and
scalars and what numpy needs to rebuild arrays and dtypes; anything else is refused with the file named.
"""

from __future__ import annotations

import pickle
import types
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


class _Sealed:
    """An allowed Python function behind a wrapper that takes no state, so a pickle's BUILD cannot set attributes on
    the real function (types and C functions refuse that themselves)."""

    __slots__ = ("_function", "_path")
    _function: Any
    _path: Path

    def __init__(self, function: Any, path: Path) -> None:
        object.__setattr__(self, "_function", function)
        object.__setattr__(self, "_path", path)

    def __call__(self, *args: Any) -> Any:
        return self._function(*args)

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"{self._path}: refusing to set attributes on {self._function.__qualname__}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise UnsafePickleError(f"{self._path}: refusing to set attribute {name!r} on {self._function.__qualname__}")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path, encoding: str):
        super().__init__(file, encoding=encoding)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(
                f"{self._path}: refusing to load {module}.{name}: only builtins and numpy arrays are allowed"
            )
        found = super().find_class(module, name)
        return _Sealed(found, self._path) if isinstance(found, types.FunctionType) else found


def load_pickle(path: Path | str, encoding: str = "latin1") -> Any:
    """Unpickle ``path`` admitting only builtins and numpy arrays (latin1 reads Python 2 pickles too)."""
    path = Path(path)
    with path.open("rb") as f:
        try:
            return _RestrictedUnpickler(f, path, encoding).load()
        except (TypeError, AttributeError) as err:  # BUILD on a type or builtin: the interpreter refused it
            raise UnsafePickleError(f"{path}: cannot be loaded safely ({err}); it is not a plain data pickle") from None
