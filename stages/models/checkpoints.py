"""Import public SlowFast checkpoints into our SlowFast (``stages.models.slowfast``), whichever code base trained them.

Each layout is an explicit two-way name mapping onto one structural description of a backbone tensor (a ``_Slot``:
stem, lateral fusion, residual-block or non-local conv/BN; pathway, stage, block, tensor name), so ``convert`` and its
inverse ``render`` are the same table read both ways, and the round trip is the test oracle:

- ``pyslowfast``: PySlowFast ``.pyth`` (``model_state``). Our module names are PySlowFast's: identity, non-local
  blocks (``s4.pathway0_nonlocal6.conv_theta``...) included.
- ``caffe2``: PySlowFast's Caffe2 ``.pkl`` (``blobs`` of numpy arrays). The inverse of PySlowFast's
  ``c2_model_loading.get_name_convert_func``: ``conv1_w`` / ``res_conv1_bn_{s,b,rm,riv}`` stem,
  ``res{S}_{i}_branch2{a,b,c}`` and ``_branch1`` blocks, ``t_`` prefix for the fast pathway, laterals
  ``t_pool1_subsample`` (after the stem) and ``t_res{S}_{last}_branch2c_bn_subsample`` (after res2..res4), non-local
  ``nonlocal_conv{S}_{i}_{theta,phi,g,out}_{w,b}`` / ``nonlocal_conv{S}_{i}_bn_*`` (slow pathway only: the
  converter has no fast-pathway non-local name). BN blobs are scale/bias/running mean/running var; ``_riv`` holds
  the variance itself (PySlowFast copies it to ``running_var`` unchanged), and there is no ``num_batches_tracked``.
  Optimizer blobs (``*_momentum``, ``lr``, ``model_iter``) are ignored.
- ``pytorchvideo``: ``create_slowfast`` (``blocks.N.multipathway_blocks.P...``, ``blocks.N.multipathway_fusion...``) and
  ``create_slowfast_with_roi_head`` (the same under ``model.``, head ``detection_head.``). Its builders have no
  non-local option.
- ``mmaction2``: ``ResNet3dSlowFast`` (``backbone.{slow,fast}_path.layer1.0.conv1.conv.weight``, laterals
  ``backbone.slow_path.conv1_lateral`` / ``layer{1,2,3}_lateral``, conv-only when ``lateral_norm=False``).
- ``acar``: ACAR-Net's ``slowfast50/101`` (``module.backbone.module.slow_res1.0.conv1.weight``, laterals ``Tconv1..4``:
  ``Tconv1.0``/``.1`` conv/BN, or a bare conv ``Tconv1.weight`` when ``fuse_only_conv=True``).

What the names cannot carry, and the caller must match in ``SlowFastConfig``: mmaction2 and ACAR (unless
``slow_full_span``) feed the slow pathway every alpha-th frame (``slow_sampling="stride"``); mmaction2's AVA configs
run res5 at stride 1 without dilation (``res5_stride=1, res5_dilation=1``); non-local pooling, grouping and
instantiation (``nonlocal_pool``/``_group``/``_instantiation``). The structure the names do carry (conv-only
laterals: ``lateral_norm=False``; non-local positions: ``nonlocal_location``) must match too, else a strict load
refuses and the report's notes say which setting the checkpoint needs.

Not mapped, reported, refused when strict: mmaction2 non-local blocks (``non_local_block``: mmcv's ``NonLocal3d``
max-pools *after* the phi/g convs, has no ``conv_out`` bias when normed and other modes; no mmaction2 SlowFast
config uses them).

Files are read without running code from them: ``torch.load(weights_only=True)`` or the restricted unpickler of
``stages.data.safe_pickle``; a file that needs more than that is refused, never re-read with full unpickling.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from cache_spec.errors import InputError
from stages.data.safe_pickle import load_pickle
from stages.models.slowfast import SlowFast

logger = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("pyslowfast", "caffe2", "pytorchvideo", "mmaction2", "acar")

_BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_OPTIONAL_PARAMS = ("num_batches_tracked",)  # a BN counter, absent from Caffe2; the model keeps its own
_CONTAINER_KEYS = ("model_state", "state_dict", "model", "module")


class CheckpointError(InputError, ValueError):
    """The checkpoint cannot be read safely, or does not fit the model."""


class _Slot(NamedTuple):
    """Where a tensor sits in a two-pathway SlowFast ResNet, independent of anyone's module names."""

    part: str  # "stem", "fuse" (lateral fast->slow), "res" or "nonlocal"
    stage: int  # stem 1; fuse 1..4 (after the stem, res2, res3, res4); res and nonlocal 2..5
    pathway: int  # 0 slow, 1 fast; fuse is always 1 (it reads the fast pathway)
    block: int  # res block index (nonlocal: the block it follows), else 0
    conv: str  # res: "1" (projection shortcut), "a", "b", "c"; nonlocal: "theta", "phi", "g", "out"; else ""
    bn: bool  # the BN after the conv rather than the conv
    param: str  # torch name: weight, bias, running_mean, running_var, num_batches_tracked


_NL_CONVS = ("theta", "phi", "g", "out")


def _slot(part: str, stage: int, pathway: int, block: int, conv: str, bn: bool, param: str) -> _Slot | None:
    """A slot if ``param`` is a tensor our model has there (convs are bias-free but non-local ones), else None."""
    conv_params = ("weight", "bias") if part == "nonlocal" else ("weight",)
    if param not in (_BN_PARAMS if bn else conv_params):
        return None
    return _Slot(part, stage, pathway, block, conv, bn, param)


class _Arch(NamedTuple):
    """What encoding needs beyond one slot: blocks per (stage, pathway) (Caffe2 names laterals after the last
    block), and whether laterals have BN (ACAR names a bare lateral conv apart from a conv+BN one)."""

    depths: Mapping[tuple[int, int], int]
    lateral_norm: bool = True


def _no_nonlocal(layout: str, s: _Slot) -> ValueError:
    return ValueError(f"{layout} has no name for non-local block s{s.stage} pathway{s.pathway} block {s.block}")


# --- ours == PySlowFast ----------------------------------------------------------------------------------------------

_OURS_STEM = re.compile(r"s1\.pathway([01])_stem\.(conv|bn)\.(\w+)")
_OURS_FUSE = re.compile(r"s([1-4])_fuse\.(conv_f2s|bn)\.(\w+)")
_OURS_RES = re.compile(r"s([2-5])\.pathway([01])_res(\d+)\.branch(?:1|2\.([abc]))(_bn)?\.(\w+)")
_OURS_NL = re.compile(r"s([2-5])\.pathway([01])_nonlocal(\d+)\.(?:conv_(theta|phi|g|out)|bn)\.(\w+)")


def _decode_ours(name: str) -> _Slot | None:
    if m := _OURS_STEM.fullmatch(name):
        return _slot("stem", 1, int(m[1]), 0, "", m[2] == "bn", m[3])
    if m := _OURS_FUSE.fullmatch(name):
        return _slot("fuse", int(m[1]), 1, 0, "", m[2] == "bn", m[3])
    if m := _OURS_RES.fullmatch(name):
        return _slot("res", int(m[1]), int(m[2]), int(m[3]), m[4] or "1", m[5] is not None, m[6])
    if m := _OURS_NL.fullmatch(name):
        return _slot("nonlocal", int(m[1]), int(m[2]), int(m[3]), m[4] or "out", m[4] is None, m[5])
    return None


def _encode_ours(s: _Slot, arch: _Arch | None = None) -> str:
    if s.part == "stem":
        module = f"s1.pathway{s.pathway}_stem." + ("bn" if s.bn else "conv")
    elif s.part == "fuse":
        module = f"s{s.stage}_fuse." + ("bn" if s.bn else "conv_f2s")
    elif s.part == "nonlocal":
        module = f"s{s.stage}.pathway{s.pathway}_nonlocal{s.block}." + ("bn" if s.bn else f"conv_{s.conv}")
    else:
        branch = "branch1" if s.conv == "1" else f"branch2.{s.conv}"
        module = f"s{s.stage}.pathway{s.pathway}_res{s.block}.{branch}" + ("_bn" if s.bn else "")
    return f"{module}.{s.param}"


# --- Caffe2 (PySlowFast .pkl) ----------------------------------------------------------------------------------------

_C2_BN = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_C2_BN_INV = {v: k for k, v in _C2_BN.items()}
_C2_TAIL = r"(w|bn_(?:s|b|rm|riv))"
_C2_STEM_CONV = re.compile(r"(t_)?conv1_w")
_C2_STEM_BN = re.compile(r"(t_)?res_conv1_bn_(s|b|rm|riv)")
_C2_FUSE1 = re.compile(rf"t_pool1_subsample_{_C2_TAIL}")
_C2_FUSE = re.compile(rf"t_res([2-4])_(\d+)_branch2c_bn_subsample_{_C2_TAIL}")
_C2_RES = re.compile(rf"(t_)?res([2-5])_(\d+)_branch(?:1|2([abc]))_{_C2_TAIL}")
_C2_NL_CONV = re.compile(r"nonlocal_conv([2-5])_(\d+)_(theta|phi|g|out)_(w|b)")
_C2_NL_BN = re.compile(r"nonlocal_conv([2-5])_(\d+)_bn_(s|b|rm|riv)")


def _c2_tail(tail: str) -> tuple[bool, str]:
    return (False, "weight") if tail == "w" else (True, _C2_BN[tail[3:]])


def _decode_caffe2(name: str) -> _Slot | None:
    if m := _C2_STEM_CONV.fullmatch(name):
        return _slot("stem", 1, int(m[1] is not None), 0, "", False, "weight")
    if m := _C2_STEM_BN.fullmatch(name):
        return _slot("stem", 1, int(m[1] is not None), 0, "", True, _C2_BN[m[2]])
    if m := _C2_FUSE1.fullmatch(name):
        return _slot("fuse", 1, 1, 0, "", *_c2_tail(m[1]))
    if m := _C2_FUSE.fullmatch(name):  # the block index only says where the lateral was taken: the stage's last
        return _slot("fuse", int(m[1]), 1, 0, "", *_c2_tail(m[3]))
    if m := _C2_RES.fullmatch(name):
        return _slot("res", int(m[2]), int(m[1] is not None), int(m[3]), m[4] or "1", *_c2_tail(m[5]))
    if m := _C2_NL_CONV.fullmatch(name):  # PySlowFast's converter: always the slow pathway
        return _slot("nonlocal", int(m[1]), 0, int(m[2]), m[3], False, "weight" if m[4] == "w" else "bias")
    if m := _C2_NL_BN.fullmatch(name):
        return _slot("nonlocal", int(m[1]), 0, int(m[2]), "out", True, _C2_BN[m[3]])
    return None


def _encode_caffe2(s: _Slot, arch: _Arch | None = None) -> str | None:
    if s.param in _OPTIONAL_PARAMS:
        return None
    tail = f"bn_{_C2_BN_INV[s.param]}" if s.bn else "w"
    fast = "t_" if s.pathway == 1 else ""
    if s.part == "stem":
        return f"{fast}res_conv1_{tail}" if s.bn else f"{fast}conv1_w"
    if s.part == "fuse":
        if s.stage == 1:
            return f"t_pool1_subsample_{tail}"
        if arch is None or (s.stage, 1) not in arch.depths:
            raise ValueError(f"Caffe2 names lateral s{s.stage}_fuse after the last fast block of res{s.stage}: unknown")
        return f"t_res{s.stage}_{arch.depths[(s.stage, 1)] - 1}_branch2c_bn_subsample_{tail}"
    if s.part == "nonlocal":
        if s.pathway == 1:
            raise _no_nonlocal("caffe2 (fast pathway)", s)
        if s.bn:
            return f"nonlocal_conv{s.stage}_{s.block}_{tail}"
        return f"nonlocal_conv{s.stage}_{s.block}_{s.conv}_{'w' if s.param == 'weight' else 'b'}"
    branch = "branch1" if s.conv == "1" else f"branch2{s.conv}"
    return f"{fast}res{s.stage}_{s.block}_{branch}_{tail}"


# --- pytorchvideo ----------------------------------------------------------------------------------------------------

_PTV_STEM = re.compile(r"blocks\.0\.multipathway_blocks\.([01])\.(conv|norm)\.(\w+)")
_PTV_FUSE = re.compile(r"blocks\.([0-3])\.multipathway_fusion\.(conv_fast_to_slow|norm)\.(\w+)")
_PTV_RES = re.compile(
    r"blocks\.([1-4])\.multipathway_blocks\.([01])\.res_blocks\.(\d+)\.(?:branch1_(conv|norm)|branch2\.(conv|norm)_([abc]))"
    r"\.(\w+)"
)


def _decode_pytorchvideo(name: str) -> _Slot | None:
    if m := _PTV_STEM.fullmatch(name):
        return _slot("stem", 1, int(m[1]), 0, "", m[2] == "norm", m[3])
    if m := _PTV_FUSE.fullmatch(name):
        return _slot("fuse", int(m[1]) + 1, 1, 0, "", m[2] == "norm", m[3])
    if m := _PTV_RES.fullmatch(name):
        kind = m[4] or m[5]
        return _slot("res", int(m[1]) + 1, int(m[2]), int(m[3]), m[6] or "1", kind == "norm", m[7])
    return None


def _encode_pytorchvideo(s: _Slot, arch: _Arch | None = None) -> str:
    if s.part == "nonlocal":
        raise _no_nonlocal("pytorchvideo", s)
    kind = "norm" if s.bn else "conv"
    if s.part == "stem":
        return f"blocks.0.multipathway_blocks.{s.pathway}.{kind}.{s.param}"
    if s.part == "fuse":
        module = "norm" if s.bn else "conv_fast_to_slow"
        return f"blocks.{s.stage - 1}.multipathway_fusion.{module}.{s.param}"
    branch = f"branch1_{kind}" if s.conv == "1" else f"branch2.{kind}_{s.conv}"
    return f"blocks.{s.stage - 1}.multipathway_blocks.{s.pathway}.res_blocks.{s.block}.{branch}.{s.param}"


# --- mmaction2 -------------------------------------------------------------------------------------------------------

_MMA_PATHWAY = {"slow": 0, "fast": 1}
_MMA_STEM = re.compile(r"(slow|fast)_path\.conv1\.(conv|bn)\.(\w+)")
_MMA_FUSE = re.compile(r"slow_path\.(?:conv1|layer([1-3]))_lateral\.(conv|bn)\.(\w+)")
_MMA_RES = re.compile(r"(slow|fast)_path\.layer([1-4])\.(\d+)\.(?:conv([123])|downsample)\.(conv|bn)\.(\w+)")
_ABC = {"1": "a", "2": "b", "3": "c"}
_ABC_INV = {v: k for k, v in _ABC.items()}


def _decode_mmaction2(name: str) -> _Slot | None:
    if m := _MMA_STEM.fullmatch(name):
        return _slot("stem", 1, _MMA_PATHWAY[m[1]], 0, "", m[2] == "bn", m[3])
    if m := _MMA_FUSE.fullmatch(name):
        return _slot("fuse", int(m[1]) + 1 if m[1] else 1, 1, 0, "", m[2] == "bn", m[3])
    if m := _MMA_RES.fullmatch(name):
        conv = _ABC[m[4]] if m[4] else "1"
        return _slot("res", int(m[2]) + 1, _MMA_PATHWAY[m[1]], int(m[3]), conv, m[5] == "bn", m[6])
    return None


def _encode_mmaction2(s: _Slot, arch: _Arch | None = None) -> str:
    if s.part == "nonlocal":
        raise _no_nonlocal("mmaction2 (mapped)", s)
    kind = "bn" if s.bn else "conv"
    path = "slow_path" if s.pathway == 0 else "fast_path"
    if s.part == "stem":
        return f"{path}.conv1.{kind}.{s.param}"
    if s.part == "fuse":
        lateral = "conv1_lateral" if s.stage == 1 else f"layer{s.stage - 1}_lateral"
        return f"slow_path.{lateral}.{kind}.{s.param}"
    module = "downsample" if s.conv == "1" else f"conv{_ABC_INV[s.conv]}"
    return f"{path}.layer{s.stage - 1}.{s.block}.{module}.{kind}.{s.param}"


# --- ACAR-Net --------------------------------------------------------------------------------------------------------

_ACAR_STEM = re.compile(r"(slow|fast)_(conv|bn)1\.(\w+)")
_ACAR_FUSE = re.compile(r"Tconv([1-4])\.(?:([01])\.)?(\w+)")  # no index: fuse_only_conv=True, a bare Conv3d
_ACAR_RES = re.compile(r"(slow|fast)_res([1-4])\.(\d+)\.(?:(conv|bn)([123])|downsample(\.0|_bn))\.(\w+)")


def _decode_acar(name: str) -> _Slot | None:
    if m := _ACAR_STEM.fullmatch(name):
        return _slot("stem", 1, _MMA_PATHWAY[m[1]], 0, "", m[2] == "bn", m[3])
    if m := _ACAR_FUSE.fullmatch(name):
        return _slot("fuse", int(m[1]), 1, 0, "", m[2] == "1", m[3])
    if m := _ACAR_RES.fullmatch(name):
        conv, bn = (_ABC[m[5]], m[4] == "bn") if m[4] else ("1", m[6] == "_bn")
        return _slot("res", int(m[2]) + 1, _MMA_PATHWAY[m[1]], int(m[3]), conv, bn, m[7])
    return None


def _encode_acar(s: _Slot, arch: _Arch | None = None) -> str:
    if s.part == "nonlocal":
        raise _no_nonlocal("acar", s)
    path = "slow" if s.pathway == 0 else "fast"
    if s.part == "stem":
        return f"{path}_{'bn' if s.bn else 'conv'}1.{s.param}"
    if s.part == "fuse":  # fuse_only_conv=False: Sequential(conv, BN, ReLU); True: the bare conv
        if arch is not None and not arch.lateral_norm:
            return f"Tconv{s.stage}.{s.param}"
        return f"Tconv{s.stage}.{1 if s.bn else 0}.{s.param}"
    if s.conv == "1":
        module = "downsample_bn" if s.bn else "downsample.0"
    else:
        module = f"{'bn' if s.bn else 'conv'}{_ABC_INV[s.conv]}"
    return f"{path}_res{s.stage - 1}.{s.block}.{module}.{s.param}"


# --- the table -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    name: str
    prefixes: tuple[str, ...]  # wrappers (DataParallel, detector, full model) tried; the first is what render writes
    decode: Callable[[str], _Slot | None]
    encode: Callable[[_Slot, _Arch | None], str | None]
    head: re.Pattern[str]  # classifier / detector heads: dropped on purpose, reported apart
    ignore: re.Pattern[str] | None = None  # training bookkeeping, not weights
    nonlocal_: re.Pattern[str] | None = None  # non-local blocks this layout does not map


_LAYOUTS: dict[str, _Layout] = {
    "pyslowfast": _Layout(
        "pyslowfast",
        ("", "module."),
        _decode_ours,
        _encode_ours,
        head=re.compile(r"^(?:module\.)?head\."),
    ),
    "caffe2": _Layout(
        "caffe2",
        ("",),
        _decode_caffe2,
        _encode_caffe2,
        head=re.compile(r"^(?:pred_|conv_5|lin_5)"),
        ignore=re.compile(r"momentum|lr|model_iter"),  # PySlowFast's own list of non-weight blobs
        nonlocal_=re.compile(r"nonlocal"),  # any left undecoded (PySlowFast's converter only names slow ones)
    ),
    "pytorchvideo": _Layout(
        "pytorchvideo",
        ("", "model.", "module.", "module.model."),
        _decode_pytorchvideo,
        _encode_pytorchvideo,
        head=re.compile(r"(?:^|\.)(?:detection_head\.|blocks\.[5-9]\.)"),
    ),
    "mmaction2": _Layout(
        "mmaction2",
        ("backbone.", "", "module.backbone."),
        _decode_mmaction2,
        _encode_mmaction2,
        head=re.compile(r"(?:^|\.)(?:cls_head|roi_head)\."),
        nonlocal_=re.compile(r"\.non_local_block\."),
    ),
    "acar": _Layout(
        "acar",
        ("module.backbone.module.", "backbone.module.", "module.", ""),
        _decode_acar,
        _encode_acar,
        head=re.compile(r"^(?:module\.)?(?:neck|head)\."),
    ),
}


@dataclass
class LoadReport:
    """What a checkpoint load did with every source key, and what the target lacks (every loader returns one)."""

    layout: str
    prefix: str = ""
    sources: dict[str, str] = field(default_factory=dict)  # our key -> source key
    heads: list[str] = field(default_factory=list)  # source head keys, dropped on purpose
    ignored: list[str] = field(default_factory=list)  # optimizer / iteration blobs
    unmapped: list[str] = field(default_factory=list)  # source keys with no place in our model
    missing: list[str] = field(default_factory=list)  # our keys the source does not provide
    unexpected: list[str] = field(default_factory=list)  # converted keys the target model does not have
    notes: list[str] = field(default_factory=list)

    @property
    def loaded(self) -> int:
        return len(self.sources)

    def summary(self) -> str:
        return (
            f"{self.layout} checkpoint (prefix {self.prefix!r}): {self.loaded} tensors mapped, {len(self.heads)} head "
            f"keys dropped, {len(self.ignored)} bookkeeping keys ignored, {len(self.unmapped)} unmapped, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected"
        )


def unwrap_state_dict(obj: Any) -> tuple[Mapping[str, Any], str]:
    """The flat name -> tensor mapping inside a checkpoint file's dict, and the container key it was under.

    Training scripts save the weights plain or under one of ``model_state`` (PySlowFast), ``state_dict`` (mmaction2,
    torchvision references), ``model`` (detectron-style), ``module``; Caffe2 pickles under ``blobs``.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(obj).__name__}")
    if isinstance(obj.get("blobs"), Mapping):
        return obj["blobs"], "blobs"
    for key in _CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
            return inner, key
    return obj, ""


def tensor_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A torch state dict from a file's contents: unwrapped, tensors only, DataParallel's ``module.`` removed."""
    try:
        state, _ = unwrap_state_dict(obj)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if not state:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors: {listing(not_tensors)}")
    out = {str(k): v for k, v in state.items()}
    if all(k.startswith("module.") for k in out):
        out = {k.removeprefix("module."): v for k, v in out.items()}
    return out


def listing(keys: Sequence[str], shown: int = 8) -> str:
    """The first keys of a long list for an error message, and how many more there are."""
    head = ", ".join(keys[:shown])
    return head + (f" ... and {len(keys) - shown} more" if len(keys) > shown else "")


def _decoded(layout: _Layout, prefix: str, key: str) -> _Slot | None:
    return layout.decode(key[len(prefix) :]) if key.startswith(prefix) else None


def _best_prefix(layout: _Layout, keys: Iterable[str]) -> tuple[str, int]:
    """The wrapper prefix under which most keys decode, and how many do."""
    keys = list(keys)
    counts = [(sum(_decoded(layout, p, k) is not None for k in keys), -i, p) for i, p in enumerate(layout.prefixes)]
    count, _, prefix = max(counts)
    return prefix, count


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """Which of ``LAYOUTS`` a checkpoint (a file's top-level dict, or the bare state dict in it) is written in."""
    flat, container = unwrap_state_dict(state_dict)
    if container == "blobs":
        return "caffe2"
    scores = {name: _best_prefix(layout, flat)[1] for name, layout in _LAYOUTS.items()}
    best = max(scores, key=scores.__getitem__)
    if scores[best] == 0:
        sample = ", ".join(list(flat)[:5])
        raise CheckpointError(f"not a SlowFast checkpoint in any known layout {LAYOUTS} (first keys: {sample})")
    return best


def _depths(slots: Iterable[_Slot]) -> dict[tuple[int, int], int]:
    """Blocks per (stage, pathway), from the highest block index seen."""
    depths: dict[tuple[int, int], int] = {}
    for s in slots:
        if s.part == "res":
            depths[(s.stage, s.pathway)] = max(depths.get((s.stage, s.pathway), 0), s.block + 1)
    return depths


def _arch(slots: Iterable[_Slot]) -> _Arch:
    """Depths and lateral kind of the network these slots come from (laterals count as normed unless all lack BN)."""
    slots = list(slots)
    fuse = [s for s in slots if s.part == "fuse"]
    return _Arch(_depths(slots), lateral_norm=not fuse or any(s.bn for s in fuse))


def _nonlocal_location(slots: Iterable[_Slot]) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """``SlowFastConfig.nonlocal_location`` of the non-local blocks among these slots."""
    found = {(s.stage, s.pathway, s.block) for s in slots if s.part == "nonlocal"}

    def blocks(stage: int, pathway: int) -> tuple[int, ...]:
        return tuple(sorted(b for st, p, b in found if (st, p) == (stage, pathway)))

    return tuple((blocks(stage, 0), blocks(stage, 1)) for stage in range(2, 6))


def _expected_keys(slots: Iterable[_Slot]) -> set[str]:
    """Our key set for the SlowFast these slots imply: stage depths (a stage never seen counts as one block), lateral
    BN unless every lateral lacks it, and the non-local blocks seen."""
    slots = list(slots)
    arch = _arch(slots)
    expected: list[_Slot] = []

    def unit(part: str, stage: int, pathway: int, block: int, conv: str, bn: bool = True) -> None:
        expected.append(_Slot(part, stage, pathway, block, conv, False, "weight"))
        if bn:
            expected.extend(_Slot(part, stage, pathway, block, conv, True, p) for p in _BN_PARAMS)

    for pathway in (0, 1):
        unit("stem", 1, pathway, 0, "")
        for stage in range(2, 6):
            for block in range(arch.depths.get((stage, pathway), 1)):
                for conv in ("1", "a", "b", "c") if block == 0 else ("a", "b", "c"):
                    unit("res", stage, pathway, block, conv)
    for stage in range(1, 5):
        unit("fuse", stage, 1, 0, "", bn=arch.lateral_norm)
    for stage, per_pathway in enumerate(_nonlocal_location(slots), start=2):
        for pathway, blocks in enumerate(per_pathway):
            for block in blocks:
                for conv in _NL_CONVS:
                    expected.append(_Slot("nonlocal", stage, pathway, block, conv, False, "bias"))
                    unit("nonlocal", stage, pathway, block, conv, bn=conv == "out")
    return {_encode_ours(s) for s in expected}


def _to_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(np.array(value))  # copies: Caffe2 arrays unpickle read-only


def _notes(report: LoadReport, layout: _Layout, slots: Iterable[_Slot]) -> list[str]:
    """Which ``SlowFastConfig`` setting a structural mismatch points to."""
    notes = []
    if layout.nonlocal_ is not None and any(layout.nonlocal_.search(k) for k in report.unmapped):
        notes.append(f"the checkpoint has non-local blocks that the {layout.name} mapping does not place: not loaded")
    if any("_nonlocal" in k for k in report.unexpected):
        notes.append(
            "the checkpoint has non-local blocks the model lacks: build it with SlowFastConfig(nonlocal_location="
            f"{_nonlocal_location(slots)}) and the checkpoint's nonlocal_pool/_group/_instantiation"
        )
    if any("_nonlocal" in k for k in report.missing):
        notes.append("the model has non-local blocks the checkpoint lacks (nonlocal_location)")
    lateral_bn = re.compile(r"s[1-4]_fuse\.bn\.\w+")
    if any(lateral_bn.fullmatch(k) for k in report.missing) and any("conv_f2s" in k for k in report.sources):
        notes.append(
            "the checkpoint's fast->slow laterals are conv-only (mmaction2 lateral_norm=False, ACAR fuse_only_conv="
            "True): build the model with SlowFastConfig(lateral_norm=False)"
        )
    if any(lateral_bn.fullmatch(k) for k in report.unexpected):
        notes.append("the checkpoint's laterals have BN: build the model with SlowFastConfig(lateral_norm=True)")
    return notes


def convert(
    state_dict: Mapping[str, Any], layout: str = "auto", target: Iterable[str] | None = None
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """A checkpoint in ``layout`` -> (our state dict, report of unmapped / head / missing keys).

    ``missing`` is checked against ``target`` (our model's keys) when given, else against the SlowFast implied by
    the checkpoint (stage depths, lateral BN, non-local blocks). ``num_batches_tracked`` is never reported missing.
    """
    flat, _ = unwrap_state_dict(state_dict)
    name = detect_layout(flat) if layout == "auto" else layout
    if name not in _LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected 'auto' or one of {LAYOUTS}")
    spec = _LAYOUTS[name]
    prefix, _ = _best_prefix(spec, flat)
    report = LoadReport(layout=name, prefix=prefix)
    ours: dict[str, torch.Tensor] = {}
    slots: list[_Slot] = []
    for key, value in flat.items():
        slot = _decoded(spec, prefix, key)
        if slot is not None:
            our_key = _encode_ours(slot)
            if our_key in ours:
                raise CheckpointError(f"{key} and {report.sources[our_key]} both map to {our_key}")
            ours[our_key] = _to_tensor(value)
            report.sources[our_key] = key
            slots.append(slot)
        elif spec.ignore is not None and spec.ignore.search(key):
            report.ignored.append(key)
        elif spec.head.search(key[len(prefix) :] if key.startswith(prefix) else key) or spec.head.search(key):
            report.heads.append(key)
        else:
            report.unmapped.append(key)
    expected = set(target) if target is not None else _expected_keys(slots)
    report.missing = sorted(k for k in expected - ours.keys() if k.rsplit(".", 1)[-1] not in _OPTIONAL_PARAMS)
    if target is not None:
        report.unexpected = sorted(ours.keys() - expected)
    report.notes = _notes(report, spec, slots)
    return ours, report


def render(our_state_dict: Mapping[str, Any], layout: str, prefix: str | None = None) -> dict[str, Any]:
    """Our state dict -> the same tensors named as ``layout`` names them (Caffe2: numpy blobs, no BN counters).

    The inverse of ``convert``; ``prefix`` defaults to the layout's usual wrapper (``backbone.`` for mmaction2,
    ``module.backbone.module.`` for ACAR, none otherwise).
    """
    if layout not in _LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    spec = _LAYOUTS[layout]
    prefix = spec.prefixes[0] if prefix is None else prefix
    slots = {}
    for key in our_state_dict:
        slot = _decode_ours(key)
        if slot is None:
            raise ValueError(f"{key} is not a SlowFast backbone key")
        slots[key] = slot
    arch = _arch(slots.values())
    out: dict[str, Any] = {}
    for key, value in our_state_dict.items():
        name = spec.encode(slots[key], arch)
        if name is None:
            continue
        if layout == "caffe2":
            value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        out[prefix + name] = value
    return out


def read_checkpoint(path: Path | str) -> Any:
    """A checkpoint file's contents, read without executing anything from it.

    ``.pkl`` (Caffe2) goes through the restricted unpickler (builtins and numpy arrays only); everything else, and a
    ``.pkl`` that is really a torch zip archive, through ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if path.suffix == ".pkl" and not zipfile.is_zipfile(path):
        return load_pickle(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only torch file (torch.load(weights_only=True)): the file pickles "
            f"objects other than tensors and plain containers ({first_line}). Loading it fully would run code from "
            "the file, which this loader never does; re-save just its state dict "
            "(torch.save(checkpoint['model_state'], ...)) where you trust the file."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:  # truncated zips, files of other formats
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch file ({error})") from None


def load_backbone_checkpoint(
    model: SlowFast, path: Path | str, layout: str = "auto", strict: bool = True
) -> LoadReport:
    """Load a public SlowFast checkpoint into ``model``; returns the conversion report (also logged).

    Shape mismatches are always refused, naming the key and both shapes. With ``strict`` (default) a checkpoint
    that leaves model tensors unset, brings backbone tensors the model lacks (non-local blocks or lateral BN the
    config did not ask for), or has non-head weights with no place here (mmaction2 non-local blocks) is refused
    too, as the loaded network would not be the checkpoint's; without ``strict`` those are logged and the rest is
    loaded. Head keys are always dropped (stage two owns heads).
    """
    contents = read_checkpoint(path)
    own = model.state_dict()
    converted, report = convert(contents, layout, target=own.keys())
    mismatched = [
        f"{report.sources[k]} -> {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in converted.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if mismatched:
        shown = "\n  ".join(mismatched[:8]) + ("\n  ..." if len(mismatched) > 8 else "")
        raise CheckpointError(f"{path}: {len(mismatched)} shape mismatches, refusing to load:\n  {shown}")
    logger.info("%s: %s", path, report.summary())
    if report.heads:
        logger.info("%s: dropped head keys: %s", path, ", ".join(report.heads))
    for what, keys in (("unmapped", report.unmapped), ("missing", report.missing), ("unexpected", report.unexpected)):
        if keys:
            logger.warning("%s: %d %s keys: %s", path, len(keys), what, ", ".join(keys))
    for note in report.notes:
        logger.warning("%s: %s", path, note)
    if strict and (report.missing or report.unexpected or report.unmapped):
        raise CheckpointError(
            f"{path}: {report.summary()}; refusing a partial load (strict=True). Missing: {report.missing[:8]}; "
            f"unexpected: {report.unexpected[:8]}; unmapped: {report.unmapped[:8]}"
            + "".join(f"; {n}" for n in report.notes)
        )
    model.load_state_dict({k: v for k, v in converted.items() if k in own}, strict=False)
    return report
