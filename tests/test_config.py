"""params.yaml is checked as it is read: sections, keys, types, choices and head options, each error naming where."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import config as cfg
from pipeline.config import ParamsError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def params() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _write(tmp_path: Path, params: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_the_shipped_params_load_and_build_every_stage(params: dict[str, Any]) -> None:
    loaded = cfg.load_params(ROOT / "params.yaml")
    assert loaded == params
    assert cfg.train_config(loaded).epochs == params["train"]["epochs"]
    assert cfg.extract_config(loaded, "val").sampling.num_frames == params["clip"]["num_frames"]
    assert cfg.finetune_config(loaded).lr == params["finetune"]["lr"]
    assert cfg.evaluate_config(loaded, "dense").link.top_k == params["dense"]["link"]["top_k"]
    assert cfg.ablate_config(loaded).heads == tuple(params["ablate"]["heads"])


def test_an_unknown_section_is_an_error_naming_the_known_ones(params: dict[str, Any], tmp_path: Path) -> None:
    params["backbon"] = params.pop("backbone")
    with pytest.raises(ParamsError, match=r"unknown section\(s\) \['backbon'\]; known: \[.*'backbone'"):
        cfg.load_params(_write(tmp_path, params))


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "epochs", "thirty", "params train.epochs: expected int, got 'thirty'"),
        ("train", "epochs", True, "params train.epochs: expected int, got True"),
        ("train", "loss", "focal", r"params train.loss: expected one of \['bce', 'pose_softmax'\], got 'focal'"),
        ("extract", "box_sources", ["gt", "pred"], r"params extract.box_sources\[1\]: expected one of"),
        ("clip", "canvas", [128], r"params clip.canvas: expected 2 values, got \[128\]"),
        ("paths", "data", 3, "params paths.data: expected Path, got 3"),
        ("dense", "protocol", "ucf", "params dense.protocol: expected one of"),
        ("extract", "flip", "yes please", "params extract.flip: expected bool"),
        ("backbone", "preset", "r152", "params backbone.preset: expected one of"),
    ],
)
def test_a_value_of_the_wrong_type_names_section_key_and_value(
    params: dict[str, Any], tmp_path: Path, section: str, key: str, value: Any, message: str
) -> None:
    params[section][key] = value
    with pytest.raises(ParamsError, match=message):
        cfg.load_params(_write(tmp_path, params))


def test_yaml_strings_that_are_numbers_are_accepted_as_floats(params: dict[str, Any], tmp_path: Path) -> None:
    path = _write(tmp_path, params)
    path.write_text(path.read_text().replace("lr: 0.001", "lr: 1e-3"))
    loaded = cfg.load_params(path)
    assert loaded["train"]["lr"] == "1e-3"  # YAML 1.1 reads a float without a dot as a string ...
    assert cfg.train_config(loaded).lr == 0.001  # ... and the config reads it as the float it means


def test_a_yaml_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: [0.1\n")
    with pytest.raises(ParamsError, match=rf"{path}:\d+: not valid YAML"):
        cfg.load_params(path)


def test_head_options_are_checked_against_the_head_constructor(params: dict[str, Any], tmp_path: Path) -> None:
    bad = copy.deepcopy(params)
    bad["head"]["options"]["acrn"] = {"hidden_dim": 128}
    with pytest.raises(ParamsError, match=r"head.options.acrn: acrn takes no option\(s\) \['hidden_dim'\].*'width'"):
        cfg.load_params(_write(tmp_path, bad))
    bad["head"]["options"]["acrn"] = {"width": "wide"}
    with pytest.raises(ParamsError, match="params head.options.acrn.width: expected int, got 'wide'"):
        cfg.load_params(_write(tmp_path, bad))
    bad["head"]["options"] = {"nonesuch": {}}
    with pytest.raises(ParamsError, match="unknown head 'nonesuch'"):
        cfg.load_params(_write(tmp_path, bad))


def test_a_key_the_code_fills_is_refused_in_the_file(params: dict[str, Any]) -> None:
    params["extract"]["data_dir"] = "elsewhere"
    with pytest.raises(ParamsError, match=r"params extract: unknown key\(s\) \['data_dir'\]"):
        cfg.extract_config(params, "train")


def test_params_yaml_states_the_code_defaults(params: dict[str, Any]) -> None:
    """Every default lives in its dataclass; params.yaml spells the same values out, bar the pipeline's wiring."""
    wiring = {
        "backbone.checkpoint": "extract loads what finetune writes",
        "extract.views": "params adds views to those of extract.heads; the dataclass default is linear's",
    }
    differ = []
    for section, cls in cfg.SECTIONS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in (params.get(section) or {}).items():
            field = fields.get(key)
            if field is None or field.default is dataclasses.MISSING:
                continue
            coerced = cfg._coerce(cfg.typing.get_type_hints(cls)[key], value, f"{section}.{key}")
            if coerced != field.default and f"{section}.{key}" not in wiring:
                differ.append(f"{section}.{key}: params {value!r} vs {cls.__name__} {field.default!r}")
    assert differ == []
