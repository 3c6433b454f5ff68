"""Relation heads and classifiers. Each head declares the cache views it reads (``Head.views``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from heads.acar import ACARHead, load_acar_checkpoint
from heads.acrn import ACRNHead
from heads.base import Head
from heads.lfb import ShortTermOperatorHead
from heads.linear import LinearHead
from heads.pcca import PCCAHead
from heads.ssfa import SSFAHead, TSFAHead
from heads.st_relation import SOnlyHead, TOnlyHead
from heads.stca import STCAHead

HEADS: dict[str, type[Head]] = {
    "linear": LinearHead,
    "acrn": ACRNHead,
    "acar": ACARHead,
    "sto": ShortTermOperatorHead,
    "pcca": PCCAHead,
    "stca": STCAHead,
    "s_only": SOnlyHead,
    "t_only": TOnlyHead,
    "ssfa": SSFAHead,
    "tsfa": TSFAHead,
}


def build_head(name: str, dims: Mapping[str, int], num_classes: int, **options: Any) -> Head:
    """A head by name, sized from a store's dimensions (``C`` etc.) and the number of classes."""
    if name not in HEADS:
        raise KeyError(f"unknown head {name!r}; available: {', '.join(sorted(HEADS))}")
    return HEADS[name].from_dims(dims, num_classes, **options)


__all__ = [
    "ACARHead",
    "ACRNHead",
    "HEADS",
    "Head",
    "LinearHead",
    "PCCAHead",
    "SOnlyHead",
    "STCAHead",
    "SSFAHead",
    "ShortTermOperatorHead",
    "TOnlyHead",
    "TSFAHead",
    "build_head",
    "load_acar_checkpoint",
]
