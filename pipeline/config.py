"""params.yaml -> the typed config object of each stage (one path from a parameter to the code that uses it)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from heads import HEADS
from stages.ablate import AblateConfig
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


class ParamsError(ValueError):
    """params.yaml names a key the code does not know, or gives a value of the wrong kind."""


def load_params(path: Path) -> dict[str, Any]:
    if not Path(path).exists():
        raise ParamsError(f"no params file at {path}")
    params = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return params


def build(cls: type[C], values: Mapping[str, Any], where: str, **fixed: Any) -> C:
    """Construct dataclass ``cls`` from a params section; unknown keys are an error naming ``where``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - (names - set(fixed)))
    if unknown:
        raise ParamsError(f"params {where}: unknown key(s) {unknown}; known: {sorted(names - set(fixed))}")
    kwargs = {k: _coerce(hints[k], v) for k, v in values.items()}
    try:
        return cls(**{**kwargs, **fixed})
    except (TypeError, ValueError) as err:
        raise ParamsError(f"params {where}: {err}") from err


def _coerce(hint: Any, value: Any) -> Any:
    """YAML gives lists and strings; dataclasses want tuples and Paths."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(options[0], value) if len(options) == 1 else value
    if hint is Path:
        return Path(value)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


DATASETS = ("ava", "dense")


def store_path(
    params: Mapping[str, Any], split: str, scale: float = 1.0, flip: bool = False, dataset: str = "ava"
) -> Path:
    """``<cache>/<split>.zarr`` (``dense_<split>.zarr`` for the dense layout); variants get their own store."""
    variant = ("" if scale == 1.0 else f"@x{scale:g}") + ("@flip" if flip else "")
    prefix = "dense_" if dataset == "dense" else ""
    return Path(params["paths"]["cache"]) / f"{prefix}{split}{variant}.zarr"


def runs_dir(params: Mapping[str, Any], dataset: str = "ava") -> Path:
    """Where training and evaluation write: ``<runs>`` for AVA, ``<runs>/dense`` for the dense layout."""
    if dataset not in DATASETS:
        raise ParamsError(f"unknown dataset layout {dataset!r}; choose one of {DATASETS}")
    runs = Path(params["paths"]["runs"])
    return runs / "dense" if dataset == "dense" else runs


def synth_config(params: Mapping[str, Any]) -> SynthConfig:
    return build(SynthConfig, params.get("synth", {}), "synth")


def sampling(params: Mapping[str, Any]) -> ClipSampling:
    return build(ClipSampling, params.get("clip", {}), "clip")


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
    section = dict(params.get("extract", {}))
    runs_dir(params, dataset)  # validates the layout name
    if dataset == "dense":
        dense = params.get("dense", {})
        section.update(dataset="dense", keyframe_stride=dense.get("keyframe_stride", 1))
        section["heads"] = dense.get("heads", section.get("heads", ["linear"]))
    if scale is not None:
        section["scale"] = scale
    if flip is not None:
        section["flip"] = flip
    chosen = heads if heads is not None else section.pop("heads", ["linear"])
    section.pop("heads", None)
    section["views"] = views_for(chosen, section.get("views", ()))
    if section.get("predicted_boxes"):
        section["predicted_boxes"] = str(section["predicted_boxes"]).format(split=split)
    return build(
        ExtractConfig,
        section,
        "extract",
        data_dir=Path(params["paths"]["data"]),
        split=split,
        out=store_path(params, split, section.get("scale", 1.0), section.get("flip", False), dataset),
        backbone=build(BackboneConfig, params.get("backbone", {}), "backbone"),
        sampling=sampling(params),
    )


def finetune_config(params: Mapping[str, Any]) -> FinetuneConfig:
    section = dict(params.get("finetune", {}))
    backbone = dict(params.get("backbone", {}))
    backbone["checkpoint"] = section.pop("init_checkpoint", None)
    checkpoint = params.get("backbone", {}).get("checkpoint")
    if not checkpoint:
        raise ParamsError("params backbone.checkpoint must name the file finetune writes (it is null)")
    return build(
        FinetuneConfig,
        section,
        "finetune",
        data_dir=Path(params["paths"]["data"]),
        out=Path(checkpoint),
        backbone=build(BackboneConfig, backbone, "backbone"),
        sampling=sampling(params),
    )


def head_options(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """params head.options: constructor options per head name."""
    options = params.get("head", {}).get("options") or {}
    if not all(isinstance(v, Mapping) for v in options.values()):
        raise ParamsError("params head.options must map head names to option mappings, e.g. {linear: {dropout: 0.5}}")
    return {k: dict(v) for k, v in options.items()}


def detect_config(params: Mapping[str, Any], split: str) -> DetectConfig:
    section = dict(params.get("detect", {}))
    if not section.get("checkpoint"):
        raise ParamsError("params detect.checkpoint is null: name a fasterrcnn_resnet50_fpn_v2 checkpoint")
    out = str(section.pop("out", "runs/detect/predicted_boxes_{split}.csv")).format(split=split)
    return build(DetectConfig, section, "detect", data_dir=Path(params["paths"]["data"]), split=split, out=Path(out))


def train_config(params: Mapping[str, Any], dataset: str = "ava") -> TrainConfig:
    """The head is params head.name for AVA and dense.head for the dense pipeline (so ablations stay apart)."""
    name = params.get("head", {}).get("name", "linear")
    if dataset == "dense":
        name = params.get("dense", {}).get("head", "linear")
    return build(
        TrainConfig,
        params.get("train", {}),
        "train",
        store=store_path(params, "train", dataset=dataset),
        label_map=Path(params["paths"]["data"]) / "label_map.pbtxt",
        out_dir=runs_dir(params, dataset) / "train",
        head=name,
        head_options=dict(head_options(params).get(name, {})),
    )


def ablate_config(
    params: Mapping[str, Any], heads: Sequence[str] | None = None, seeds: Sequence[int] | None = None
) -> AblateConfig:
    section = dict(params.get("ablate", {}))
    return build(
        AblateConfig,
        {k: v for k, v in section.items() if k not in ("heads", "seeds")},
        "ablate",
        heads=tuple(heads or section.get("heads", ["linear"])),
        seeds=tuple(seeds or section.get("seeds", [0])),
        out_dir=Path(params["paths"]["runs"]) / "ablate",
        train=train_config(params),
        evaluate=evaluate_config(params),
        options=head_options(params),
    )


def evaluate_config(params: Mapping[str, Any], dataset: str = "ava") -> EvaluateConfig:
    section = dict(params.get("evaluate", {}))
    split = section.get("split", "val")
    runs = runs_dir(params, dataset)
    fixed: dict[str, Any] = {}
    if dataset == "dense":
        dense = dict(params.get("dense", {}))
        fixed = {
            "dataset": "dense",
            "protocol": dense.get("protocol", "multisports"),
            "link": build(LinkParams, dense.get("link", {}), "dense.link"),
        }
    return build(
        EvaluateConfig,
        section,
        "evaluate",
        data_dir=Path(params["paths"]["data"]),
        store=store_path(params, split, dataset=dataset),
        checkpoint=runs / "train" / "head.pt",
        out_dir=runs / "evaluate",
        **fixed,
    )
