"""Relation heads and classifiers. Each head declares the cache views it reads (``Head.views``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from heads.base import Head
from heads.linear import LinearHead

HEADS: dict[str, type[Head]] = {"linear": LinearHead}


def build_head(name: str, dims: Mapping[str, int], num_classes: int, **options: Any) -> Head:
    """A head by name, sized from a store's dimensions (``C`` etc.) and the number of classes."""
    if name not in HEADS:
        raise KeyError(f"unknown head {name!r}; available: {', '.join(sorted(HEADS))}")
    return HEADS[name].from_dims(dims, num_classes, **options)


__all__ = ["HEADS", "Head", "LinearHead", "build_head"]
