"""params.yaml -> the typed config object of each stage (one path from a parameter to the code that uses it)."""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from cache_spec.errors import InputError
from heads import HEADS
from stages.ablate import AblateConfig
from stages.data.layout import DataLayout
from stages.data.synth import SynthConfig
from stages.data.video import ClipSampling
from stages.detect import DetectConfig
from stages.evaluate import EvaluateConfig
from stages.extract import ExtractConfig
from stages.finetune import FinetuneConfig
from stages.metrics.tubes import LinkParams
from stages.models.backbones import BackboneConfig
from stages.train import TrainConfig

C = TypeVar("C")


class ParamsError(InputError, ValueError):
    """params.yaml names a key the code does not know, or gives a value of the wrong kind."""


@dataclass(frozen=True)
class PathsParams:
    """Where the data set, the feature stores and the runs live, and where ``pipeline synth`` writes its own set."""

    data: Path = Path("data/synth")
    synth: Path = Path("data/synth")
    cache: Path = Path("data/cache")
    runs: Path = Path("runs")


@dataclass(frozen=True)
class DenseParams:
    """The MultiSports-style pipeline (``--dataset dense``); ``link`` is :class:`LinkParams`."""

    keyframe_stride: int = 1
    heads: tuple[str, ...] = ("linear",)
    head: str = "linear"
    protocol: Literal["multisports", "act"] = "multisports"
    link: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class HeadParams:
    """The head ``train-head`` trains and every head's constructor options."""

    name: str = "linear"
    options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


# Each section of params.yaml and the dataclass it fills; keys a stage reads but that are not fields of its config
# (``extract.heads`` becomes ``views``, ``finetune.init_checkpoint`` the backbone's checkpoint) are listed with types.
SECTIONS: dict[str, type] = {
    "paths": PathsParams,
    "dataset": DataLayout,
    "synth": SynthConfig,
    "backbone": BackboneConfig,
    "finetune": FinetuneConfig,
    "clip": ClipSampling,
    "extract": ExtractConfig,
    "detect": DetectConfig,
    "dense": DenseParams,
    "head": HeadParams,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "ablate": AblateConfig,
}
_EXTRA_KEYS: dict[str, dict[str, Any]] = {
    "finetune": {"init_checkpoint": Path | None},
    "extract": {"heads": tuple[str, ...]},
    "detect": {"out": str},
}
_NULLABLE = {("detect", "checkpoint")}  # null in the file, so that the stage can say what to put there


def _default(cls: type, name: str) -> Any:
    """A config field's default: the one place it is written."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise ParamsError(f"{cls.__name__}.{name} has no default")


def load_params(path: Path) -> dict[str, Any]:
    """params.yaml, checked: known sections only, every key known to its section, every value of its type."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"no params file at {path}")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ParamsError(f"{where}: not valid YAML ({problem})") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(params) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"{path}: unknown section(s) {unknown}; known: {sorted(SECTIONS)}")
    for name, values in params.items():
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ParamsError(f"params {name}: expected a mapping of keys, got {values!r}")
        _checked(SECTIONS[name], values, name)
    _checked(LinkParams, _section(params, "dense").get("link") or {}, "dense.link")
    head_options(params)
    return params


def _section(params: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return params.get(name) or {}


def _checked(cls: type, values: Mapping[str, Any], where: str, fixed: Mapping[str, Any] = {}) -> dict[str, Any]:
    """``values`` converted to ``cls``'s field types; an unknown key or a value of the wrong type is an error."""
    hints = typing.get_type_hints(cls)
    hints = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in fixed}
    hints.update(_EXTRA_KEYS.get(where, {}))
    hints.update({k: hints[k] | None for w, k in _NULLABLE if w == where and k in hints})
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ParamsError(f"params {where}: unknown key(s) {unknown}; known: {sorted(hints)}")
    return {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in values.items()}


def build(cls: type[C], values: Mapping[str, Any], where: str, **fixed: Any) -> C:
    """Construct dataclass ``cls`` from a params section; ``fixed`` fields come from the code, not the file."""
    kwargs = _checked(cls, values, where, fixed)
    kwargs = {k: v for k, v in kwargs.items() if k not in _EXTRA_KEYS.get(where, {})}
    try:
        return cls(**{**kwargs, **fixed})
    except (TypeError, ValueError) as err:
        raise ParamsError(f"params {where}: {err}") from err


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """``value`` as the type ``hint`` names (YAML gives lists, strings and ints), or a ParamsError saying why not."""
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, where)
            except ParamsError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"params {where}: expected one of {list(args)}, got {value!r}")
        return value
    wrong = ParamsError(f"params {where}: expected {_type_name(hint)}, got {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise wrong
        try:
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        except ValueError:
            raise wrong from None
    if hint is str:
        if not isinstance(value, str):
            raise wrong
        return value
    if hint is Path:
        if not isinstance(value, str | Path):
            raise wrong
        return Path(value)
    if origin in (tuple, Sequence, collections.abc.Sequence, list):
        if not isinstance(value, list | tuple):
            raise wrong
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ParamsError(f"params {where}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, collections.abc.Mapping, dict):
        if not isinstance(value, Mapping):
            raise wrong
        return dict(value)
    return value


DATASETS = ("ava", "dense")


def paths(params: Mapping[str, Any]) -> PathsParams:
    return build(PathsParams, _section(params, "paths"), "paths")


def data_layout(params: Mapping[str, Any]) -> DataLayout:
    """The data set at paths.data, its file names and time convention from params ``dataset:``."""
    return build(DataLayout, _section(params, "dataset"), "dataset", root=paths(params).data)


def dense_params(params: Mapping[str, Any]) -> DenseParams:
    return build(DenseParams, _section(params, "dense"), "dense")


def store_path(
    params: Mapping[str, Any], split: str, scale: float = 1.0, flip: bool = False, dataset: str = "ava"
) -> Path:
    """``<cache>/<split>.zarr`` (``dense_<split>.zarr`` for the dense layout); variants get their own store."""
    variant = ("" if scale == 1.0 else f"@x{scale:g}") + ("@flip" if flip else "")
    prefix = "dense_" if dataset == "dense" else ""
    return paths(params).cache / f"{prefix}{split}{variant}.zarr"


def runs_dir(params: Mapping[str, Any], dataset: str = "ava") -> Path:
    """Where training and evaluation write: ``<runs>`` for AVA, ``<runs>/dense`` for the dense layout."""
    if dataset not in DATASETS:
        raise ParamsError(f"unknown dataset layout {dataset!r}; choose one of {DATASETS}")
    runs = paths(params).runs
    return runs / "dense" if dataset == "dense" else runs


def synth_config(params: Mapping[str, Any]) -> SynthConfig:
    return build(SynthConfig, _section(params, "synth"), "synth")


def sampling(params: Mapping[str, Any]) -> ClipSampling:
    return build(ClipSampling, _section(params, "clip"), "clip")


def views_for(heads: Sequence[str], extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The union of the cache views the given heads read, plus ``extra``, in a stable order."""
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise ParamsError(f"unknown head(s) {unknown}; available: {', '.join(HEADS)}")
    views = [v for h in heads for v in HEADS[h].views] + list(extra)
    return tuple(dict.fromkeys(views))


def extract_config(
    params: Mapping[str, Any],
    split: str,
    heads: Sequence[str] | None = None,
    scale: float | None = None,
    flip: bool | None = None,
    dataset: str = "ava",
) -> ExtractConfig:
    """``heads``, ``scale`` and ``flip`` (from the command line) replace the params' values when given."""
    section = dict(_section(params, "extract"))
    runs_dir(params, dataset)  # validates the layout name
    fixed: dict[str, Any] = {}
    if dataset == "dense":
        dense = dense_params(params)
        fixed.update(dataset="dense", keyframe_stride=dense.keyframe_stride)
        section["heads"] = list(dense.heads)
    if scale is not None:
        section["scale"] = scale
    if flip is not None:
        section["flip"] = flip
    chosen = heads if heads is not None else section.get("heads")
    if chosen is not None or section.get("views"):
        section["views"] = views_for(chosen or [], section.get("views", ()))
    if section.get("predicted_boxes"):
        section["predicted_boxes"] = str(section["predicted_boxes"]).format(split=split)
    return build(
        ExtractConfig,
        section,
        "extract",
        data=data_layout(params),
        split=split,
        out=store_path(
            params,
            split,
            section.get("scale", _default(ExtractConfig, "scale")),
            section.get("flip", _default(ExtractConfig, "flip")),
            dataset,
        ),
        backbone=build(BackboneConfig, _section(params, "backbone"), "backbone"),
        sampling=sampling(params),
        **fixed,
    )


def finetune_config(params: Mapping[str, Any]) -> FinetuneConfig:
    section = dict(_section(params, "finetune"))
    backbone = dict(_section(params, "backbone"))
    checkpoint = backbone.get("checkpoint")
    if not checkpoint:
        raise ParamsError("params backbone.checkpoint must name the file finetune writes (it is null)")
    backbone["checkpoint"] = section.get("init_checkpoint")
    return build(
        FinetuneConfig,
        section,
        "finetune",
        data=data_layout(params),
        out=Path(checkpoint),
        backbone=build(BackboneConfig, backbone, "backbone"),
        sampling=sampling(params),
    )


def head_options(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """params head.options: constructor options per head name, checked against each head's constructor."""
    options = build(HeadParams, _section(params, "head"), "head").options
    out = {}
    for name, given in options.items():
        if name not in HEADS:
            raise ParamsError(f"params head.options: unknown head {name!r}; available: {', '.join(HEADS)}")
        if not isinstance(given, Mapping):
            raise ParamsError(f"params head.options.{name}: expected a mapping of options, e.g. {{dropout: 0.5}}")
        out[name] = check_head_options(name, given, f"head.options.{name}")
    return out


def check_head_options(name: str, options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Options as head ``name``'s constructor takes them (names and types), so a typo fails before training."""
    init = HEADS[name].__init__
    hints = typing.get_type_hints(init)
    accepted = {
        p.name: hints.get(p.name, Any)
        for p in inspect.signature(init).parameters.values()
        if p.default is not inspect.Parameter.empty
    }
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ParamsError(f"params {where}: {name} takes no option(s) {unknown}; its options: {sorted(accepted)}")
    return {k: _coerce(accepted[k], v, f"{where}.{k}") for k, v in options.items()}


def detect_config(params: Mapping[str, Any], split: str) -> DetectConfig:
    section = dict(_section(params, "detect"))
    if not section.get("checkpoint"):
        raise ParamsError("params detect.checkpoint is null: name a fasterrcnn_resnet50_fpn_v2 checkpoint")
    if "out" not in section:
        raise ParamsError("params detect.out: name the CSV detect writes, e.g. runs/detect/predicted_boxes_{split}.csv")
    out = str(section["out"]).format(split=split)
    return build(DetectConfig, section, "detect", data=data_layout(params), split=split, out=Path(out))


def train_config(params: Mapping[str, Any], dataset: str = "ava") -> TrainConfig:
    """The head is params head.name for AVA and dense.head for the dense pipeline (so ablations stay apart)."""
    head = build(HeadParams, _section(params, "head"), "head")
    name = dense_params(params).head if dataset == "dense" else head.name
    if name not in HEADS:
        raise ParamsError(f"params head.name: unknown head {name!r}; available: {', '.join(HEADS)}")
    return build(
        TrainConfig,
        _section(params, "train"),
        "train",
        store=store_path(params, "train", dataset=dataset),
        label_map=data_layout(params).label_map_path(),
        out_dir=runs_dir(params, dataset) / "train",
        head=name,
        head_options=head_options(params).get(name, {}),
    )


def ablate_config(
    params: Mapping[str, Any], heads: Sequence[str] | None = None, seeds: Sequence[int] | None = None
) -> AblateConfig:
    section = _checked(AblateConfig, _section(params, "ablate"), "ablate", dict.fromkeys(_ABLATE_FIXED))
    if not (heads or section.get("heads")) or not (seeds or section.get("seeds")):
        raise ParamsError("params ablate.heads and ablate.seeds: name the heads and seeds to sweep")
    return build(
        AblateConfig,
        {},
        "ablate",
        heads=tuple(heads or section["heads"]),
        seeds=tuple(seeds or section["seeds"]),
        out_dir=paths(params).runs / "ablate",
        train=train_config(params),
        evaluate=evaluate_config(params),
        options=head_options(params),
    )


_ABLATE_FIXED = ("out_dir", "train", "evaluate", "options")


def evaluate_config(params: Mapping[str, Any], dataset: str = "ava") -> EvaluateConfig:
    section = dict(_section(params, "evaluate"))
    split = section.get("split", _default(EvaluateConfig, "split"))
    runs = runs_dir(params, dataset)
    fixed: dict[str, Any] = {}
    if dataset == "dense":
        dense = dense_params(params)
        fixed = {
            "dataset": "dense",
            "protocol": dense.protocol,
            "link": build(LinkParams, dense.link, "dense.link"),
        }
    return build(
        EvaluateConfig,
        section,
        "evaluate",
        data=data_layout(params),
        store=store_path(params, split, dataset=dataset),
        checkpoint=runs / "train" / "head.pt",
        out_dir=runs / "evaluate",
        **fixed,
    )


if typing.TYPE_CHECKING:
    from stages.export import ExportConfig
    from stages.import_features import ImportConfig


def import_config(
    params: Mapping[str, Any],
    split: str,
    features: Path,
    dataset: str = "ava",
    extractor: str | None = None,
    box_tolerance: float | None = None,
    allow_extra: bool = False,
    allow_missing: bool = False,
) -> ImportConfig:
    """The rows, box geometry and store layout ``extract`` would use for ``split`` (so the stores match row for
    row), the store at the path train-head and evaluate read; the rest from the command line."""
    from stages.import_features import ImportConfig

    extract = extract_config(params, split, dataset=dataset)
    optional = {} if box_tolerance is None else {"box_tolerance": box_tolerance}
    try:
        return ImportConfig(
            features=Path(features),
            out=store_path(params, split, dataset=dataset),
            manifest=extract.manifest,
            sampling=extract.sampling,
            stride=extract.backbone.stride,
            extractor=extractor,
            allow_extra=allow_extra,
            allow_missing=allow_missing or extract.allow_missing,
            dtype=extract.dtype,
            clips_per_shard=extract.clips_per_shard,
            **optional,
        )
    except (TypeError, ValueError) as err:
        raise ParamsError(f"import-features: {err}") from err


def export_config(
    params: Mapping[str, Any],
    split: str,
    out: Path,
    views: Sequence[str] = (),
    dataset: str = "ava",
    scale: float = 1.0,
    flip: bool = False,
) -> ExportConfig:
    """The split's store (or a test-time variant's) and the views to write; empty ``views``: every stored one."""
    from stages.export import ExportConfig

    return ExportConfig(store=store_path(params, split, scale, flip, dataset), out=Path(out), views=tuple(views))
