"""Checkpoint import: every public layout maps onto our SlowFast names, both ways, and files are read safely.

The fixtures in ``fixtures/checkpoint_layouts/`` are key names and shapes (no weights) dumped from the reference
implementations themselves (PySlowFast, pytorchvideo, mmaction2, ACAR-Net; repository@commit and how in each
file); the Caffe2 one is PySlowFast's model renamed by the inverse of PySlowFast's own Caffe2 name converter,
each name checked by running that converter. Our R50 key set is ``fixtures/pyslowfast_slowfast_r50_state_dict.json``.
Four more come from the structures that used to be refused: PySlowFast's AVA R101 "50_50" model with non-local
blocks (``pyslowfast_r101_nl``, and its Caffe2 blob names ``caffe2_r101_nl``), mmaction2's AVA SlowFast (conv-only
laterals, res5 stride 1 undilated: ``mmaction2_ava_convonly``) and ACAR-Net's R101 (conv-only laterals:
``acar_r101_convonly``).
Outside the tests, each mapping was also checked once numerically: a reference model with random weights saved in
its own layout, loaded here strictly, gave res5 outputs identical to the reference's (max abs difference 0.0; for the
non-local R101 and Caffe2 files, mmaction2 AVA 4x16, ACAR R101 and a conv-only pytorchvideo fusion as well).
"""

from __future__ import annotations

import gzip
import json
import logging
import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stages.data.safe_pickle import UnsafePickleError
from stages.models.checkpoints import (
    LAYOUTS,
    CheckpointError,
    convert,
    detect_layout,
    load_backbone_checkpoint,
    read_checkpoint,
    render,
)
from stages.models.slowfast import SlowFast, SlowFastConfig

logger = logging.getLogger(__name__)
FIXTURES = Path(__file__).parent / "fixtures"
# Small, but two blocks in some stages so block indices and Caffe2's "last block" lateral names are exercised.
SMALL = SlowFastConfig(depth_layers=(2, 1, 2, 1), width=8)
SMALL_CONV_ONLY = replace(SMALL, lateral_norm=False)
# Non-local after res2 slow block 1 and res4 slow block 0 (Caffe2 only names slow-pathway ones), plus a fast one.
SMALL_NL = replace(SMALL, nonlocal_location=(((1,), ()), ((), ()), ((0,), ()), ((), ())))
SMALL_NL_FAST = replace(SMALL, nonlocal_location=(((1,), ()), ((), ()), ((0,), (1,)), ((), ())))
# The public models behind the fixtures of structures that used to be refused.
R101_NL = SlowFastConfig(
    depth_layers=(3, 4, 23, 3),
    fusion_kernel=5,
    temporal_kernel_blocks=(3, 4, 6, 3),
    nonlocal_location=(((), ()), ((), ()), ((6, 13, 20), ()), ((), ())),
    nonlocal_pool=(2, 2, 2),
)
MMACTION2_AVA = SlowFastConfig(
    alpha=8, fusion_kernel=5, res5_dilation=1, res5_stride=1, lateral_norm=False, slow_sampling="stride"
)
ACAR_R101 = SlowFastConfig(depth_layers=(3, 4, 23, 3), fusion_kernel=5, lateral_norm=False, slow_sampling="stride")


def _r50_keys() -> dict[str, tuple[int, ...]]:
    data = json.loads((FIXTURES / "pyslowfast_slowfast_r50_state_dict.json").read_text())
    return {key: tuple(shape) for key, shape in data["state_dict"]}


def _layout_fixture(layout: str) -> dict[str, Any]:
    with gzip.open(FIXTURES / "checkpoint_layouts" / f"{layout}.json.gz", "rt") as f:
        return json.load(f)


def _random_state(config: SlowFastConfig = SMALL, seed: int = 0) -> dict[str, torch.Tensor]:
    """A small SlowFast's state dict with every tensor random (so no mix-up can hide behind equal init values)."""
    generator = torch.Generator().manual_seed(seed)
    state = SlowFast(config).state_dict()
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            noise = torch.rand(value.shape, generator=generator)
            out[key] = noise + 0.5 if key.endswith("running_var") else noise - 0.5
        else:
            out[key] = torch.randint(0, 1000, value.shape, generator=generator)
    return out


def _save(state: dict[str, Any], layout: str, path: Path) -> Path:
    """Write a rendered state dict the way each code base stores its checkpoints."""
    if layout == "caffe2":
        with path.open("wb") as f:
            pickle.dump({"blobs": state}, f, protocol=2)
    elif layout in ("pyslowfast", "pytorchvideo"):
        torch.save({"model_state": state, "epoch": 3, "cfg": "TRAIN:\n  ENABLE: True\n"}, path)
    else:
        torch.save({"meta": {"epoch": 3}, "state_dict": state}, path)
    return path


_SUFFIX = {"pyslowfast": ".pyth", "caffe2": ".pkl", "pytorchvideo": ".pyth", "mmaction2": ".pth", "acar": ".pth.tar"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reference_keys_convert_to_our_r50_key_set(layout: str) -> None:
    fixture = _layout_fixture(layout)
    source = {key: torch.empty(shape, device="meta") for key, shape in fixture["keys"]}
    expected = _r50_keys()
    if layout == "caffe2":  # Caffe2 BN has no counter
        expected = {k: s for k, s in expected.items() if not k.endswith("num_batches_tracked")}

    assert detect_layout(source) == layout
    ours, report = convert(source, layout, target=_r50_keys())

    assert {k: tuple(v.shape) for k, v in ours.items()} == expected
    assert report.unmapped == []
    assert sorted(report.heads) == sorted(fixture["heads"]) and report.heads
    assert report.missing == [] and report.unexpected == []
    assert report.ignored == (["lr", "model_iter", "conv1_w_momentum"] if layout == "caffe2" else [])
    assert len(set(report.sources.values())) == len(report.sources)  # one source tensor per target


@pytest.mark.parametrize("layout", LAYOUTS)
def test_render_then_convert_round_trips(layout: str) -> None:
    state = _random_state()
    rendered = render(state, layout)
    assert detect_layout(rendered) == layout
    back, report = convert(rendered, layout)

    expected = {k: v for k, v in state.items() if layout != "caffe2" or not k.endswith("num_batches_tracked")}
    assert back.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(back[key], value), key
    assert report.unmapped == [] and report.heads == [] and report.missing == []


@pytest.mark.parametrize(
    ("layout", "prefix"),
    [("pytorchvideo", "model."), ("pyslowfast", "module."), ("mmaction2", ""), ("acar", ""), ("acar", "module.")],
)
def test_wrapper_prefixes_are_found(layout: str, prefix: str) -> None:
    state = _random_state()
    back, report = convert(render(state, layout, prefix=prefix), "auto")
    assert report.layout == layout and report.prefix == prefix
    assert back.keys() == state.keys()


# Hand-written from the reference code (one stem, lateral and block position each), independent of render():
# the round trip alone would not notice a consistent swap of two same-shaped tensors (e.g. norm_a and norm_b).
_EXAMPLES: dict[str, dict[str, str]] = {
    "pyslowfast": {
        "s1.pathway1_stem.conv.weight": "s1.pathway1_stem.conv.weight",
        "s3_fuse.bn.running_var": "s3_fuse.bn.running_var",
        "s2.pathway0_res0.branch1_bn.weight": "s2.pathway0_res0.branch1_bn.weight",
        "s5.pathway1_res2.branch2.b_bn.bias": "s5.pathway1_res2.branch2.b_bn.bias",
    },
    "pytorchvideo": {
        "blocks.0.multipathway_blocks.1.norm.running_var": "s1.pathway1_stem.bn.running_var",
        "blocks.0.multipathway_fusion.norm.bias": "s1_fuse.bn.bias",
        "blocks.2.multipathway_fusion.conv_fast_to_slow.weight": "s3_fuse.conv_f2s.weight",
        "blocks.1.multipathway_blocks.0.res_blocks.0.branch1_norm.weight": "s2.pathway0_res0.branch1_bn.weight",
        "blocks.1.multipathway_blocks.1.res_blocks.0.branch1_conv.weight": "s2.pathway1_res0.branch1.weight",
        "blocks.4.multipathway_blocks.1.res_blocks.2.branch2.norm_b.running_mean": (
            "s5.pathway1_res2.branch2.b_bn.running_mean"
        ),
        "blocks.3.multipathway_blocks.0.res_blocks.5.branch2.conv_c.weight": "s4.pathway0_res5.branch2.c.weight",
        "blocks.2.multipathway_blocks.0.res_blocks.1.branch2.norm_a.weight": "s3.pathway0_res1.branch2.a_bn.weight",
    },
    "mmaction2": {
        "backbone.slow_path.conv1.conv.weight": "s1.pathway0_stem.conv.weight",
        "backbone.fast_path.conv1.bn.weight": "s1.pathway1_stem.bn.weight",
        "backbone.slow_path.conv1_lateral.bn.running_var": "s1_fuse.bn.running_var",
        "backbone.slow_path.layer3_lateral.conv.weight": "s4_fuse.conv_f2s.weight",
        "backbone.fast_path.layer1.0.downsample.bn.bias": "s2.pathway1_res0.branch1_bn.bias",
        "backbone.slow_path.layer4.2.conv2.bn.weight": "s5.pathway0_res2.branch2.b_bn.weight",
        "backbone.slow_path.layer2.1.conv1.conv.weight": "s3.pathway0_res1.branch2.a.weight",
        "backbone.fast_path.layer3.4.conv3.bn.running_mean": "s4.pathway1_res4.branch2.c_bn.running_mean",
    },
    "acar": {
        "module.backbone.module.fast_conv1.weight": "s1.pathway1_stem.conv.weight",
        "module.backbone.module.slow_bn1.running_mean": "s1.pathway0_stem.bn.running_mean",
        "module.backbone.module.Tconv1.1.weight": "s1_fuse.bn.weight",
        "module.backbone.module.Tconv4.0.weight": "s4_fuse.conv_f2s.weight",
        "module.backbone.module.slow_res1.0.downsample.0.weight": "s2.pathway0_res0.branch1.weight",
        "module.backbone.module.fast_res3.0.downsample_bn.running_var": "s4.pathway1_res0.branch1_bn.running_var",
        "module.backbone.module.slow_res4.2.bn3.weight": "s5.pathway0_res2.branch2.c_bn.weight",
        "module.backbone.module.fast_res2.1.conv2.weight": "s3.pathway1_res1.branch2.b.weight",
        "module.backbone.module.slow_res2.3.bn1.bias": "s3.pathway0_res3.branch2.a_bn.bias",
    },
}


@pytest.mark.parametrize("layout", list(_EXAMPLES))
def test_hand_written_examples(layout: str) -> None:
    examples = _EXAMPLES[layout]
    ours, report = convert({key: torch.zeros(1) for key in examples}, "auto")
    assert report.layout == layout
    assert {report.sources[k]: k for k in ours} == examples
    rendered = render({our: torch.zeros(1) for our in examples.values()}, layout)
    assert set(rendered) == set(examples)


def test_caffe2_names_match_pyslowfast_conversion_log() -> None:
    """Blob -> module pairs as PySlowFast printed them converting a real Caffe2 AVA model (R101 NL, v2.1)."""
    pairs = {
        "nonlocal_conv4_6_out_w": "s4.pathway0_nonlocal6.conv_out.weight",
        "nonlocal_conv4_6_out_b": "s4.pathway0_nonlocal6.conv_out.bias",
        "nonlocal_conv4_13_phi_w": "s4.pathway0_nonlocal13.conv_phi.weight",
        "nonlocal_conv4_20_theta_w": "s4.pathway0_nonlocal20.conv_theta.weight",
        "nonlocal_conv4_6_bn_rm": "s4.pathway0_nonlocal6.bn.running_mean",
        "nonlocal_conv4_6_bn_s": "s4.pathway0_nonlocal6.bn.weight",
        "nonlocal_conv4_20_bn_riv": "s4.pathway0_nonlocal20.bn.running_var",
        "t_res_conv1_bn_b": "s1.pathway1_stem.bn.bias",
        "t_pool1_subsample_w": "s1_fuse.conv_f2s.weight",
        "t_pool1_subsample_bn_rm": "s1_fuse.bn.running_mean",
        "t_res2_2_branch2c_bn_subsample_bn_riv": "s2_fuse.bn.running_var",
        "t_res3_3_branch2c_bn_subsample_w": "s3_fuse.conv_f2s.weight",
        "t_res4_22_branch2c_bn_subsample_bn_s": "s4_fuse.bn.weight",
        "res3_0_branch1_bn_rm": "s3.pathway0_res0.branch1_bn.running_mean",
        "t_res2_0_branch1_w": "s2.pathway1_res0.branch1.weight",
        "res4_1_branch2a_w": "s4.pathway0_res1.branch2.a.weight",
        "t_res5_1_branch2c_bn_riv": "s5.pathway1_res1.branch2.c_bn.running_var",
        "res2_0_branch2c_bn_s": "s2.pathway0_res0.branch2.c_bn.weight",
    }
    blobs = {name: np.zeros(1, dtype=np.float32) for name in [*pairs, "pred_w"]}
    ours, report = convert({"blobs": blobs}, "auto")
    assert report.layout == "caffe2"
    assert {report.sources[k]: k for k in ours} == pairs
    assert report.unmapped == [] and report.heads == ["pred_w"]


def test_caffe2_lateral_is_named_after_last_fast_block() -> None:
    blobs = render(_random_state(), "caffe2")
    assert "t_res2_1_branch2c_bn_subsample_w" in blobs  # res2 has two blocks
    assert "t_res3_0_branch2c_bn_subsample_bn_riv" in blobs
    assert all(isinstance(v, np.ndarray) for v in blobs.values())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_backbone_checkpoint_each_layout(layout: str, tmp_path: Path) -> None:
    state = _random_state(seed=1)
    path = _save(render(state, layout), layout, tmp_path / f"ckpt{_SUFFIX[layout]}")
    model = SlowFast(SMALL)
    report = load_backbone_checkpoint(model, path)
    assert report.layout == layout and report.missing == [] and report.unmapped == []
    loaded = model.state_dict()
    for key, value in state.items():
        if layout == "caffe2" and key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(loaded[key], value), key


def test_loaded_model_computes_like_the_source(tmp_path: Path) -> None:
    source = SlowFast(SMALL).eval()
    source.load_state_dict(_random_state(seed=2))
    path = _save(render(source.state_dict(), "mmaction2"), "mmaction2", tmp_path / "mm.pth")
    target = SlowFast(SMALL).eval()
    load_backbone_checkpoint(target, path, layout="mmaction2")
    clip = torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(source(clip), target(clip), strict=True):
            assert torch.equal(a, b)


def test_shape_mismatch_is_refused_naming_the_key(tmp_path: Path) -> None:
    rendered = render(_random_state(), "pytorchvideo", prefix="model.")
    key = "model.blocks.2.multipathway_blocks.1.res_blocks.0.branch2.conv_a.weight"
    original = tuple(rendered[key].shape)
    rendered[key] = torch.zeros(original[0], original[1], 1, 1, 1)  # a 1x1x1 kernel where ours is 3x1x1
    path = _save(rendered, "pytorchvideo", tmp_path / "bad.pyth")
    with pytest.raises(CheckpointError) as error:
        load_backbone_checkpoint(SlowFast(SMALL), path)
    message = str(error.value)
    assert key in message and "s3.pathway1_res0.branch2.a.weight" in message
    assert str((original[0], original[1], 1, 1, 1)) in message and str(original) in message


def test_conv_only_laterals_are_refused_unless_not_strict(tmp_path: Path) -> None:
    rendered = render(_random_state(), "mmaction2")
    conv_only = {k: v for k, v in rendered.items() if "_lateral.bn." not in k}  # lateral_norm=False
    path = _save(conv_only, "mmaction2", tmp_path / "conv_only.pth")
    with pytest.raises(CheckpointError, match="lateral_norm=False"):
        load_backbone_checkpoint(SlowFast(SMALL), path)
    report = load_backbone_checkpoint(SlowFast(SMALL), path, strict=False)
    assert len(report.missing) == 16 and all("_fuse.bn." in k for k in report.missing)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_only_laterals_load_strictly_into_a_conv_only_model(layout: str, tmp_path: Path) -> None:
    state = _random_state(SMALL_CONV_ONLY, seed=3)
    rendered = render(state, layout)
    if layout == "acar":  # fuse_only_conv=True: the lateral is a bare Conv3d
        assert "module.backbone.module.Tconv1.weight" in rendered
    path = _save(rendered, layout, tmp_path / f"conv_only{_SUFFIX[layout]}")
    model = SlowFast(SMALL_CONV_ONLY)
    report = load_backbone_checkpoint(model, path)
    assert report.missing == [] and report.unexpected == [] and report.unmapped == []
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    # and the other way round: laterals with BN do not fit a conv-only model
    normed = _save(render(_random_state(), layout), layout, tmp_path / f"normed{_SUFFIX[layout]}")
    with pytest.raises(CheckpointError, match="lateral_norm=True"):
        load_backbone_checkpoint(SlowFast(SMALL_CONV_ONLY), normed)


@pytest.mark.parametrize(("layout", "config"), [("pyslowfast", SMALL_NL_FAST), ("caffe2", SMALL_NL)])
def test_non_local_blocks_round_trip_and_load_strictly(layout: str, config: SlowFastConfig, tmp_path: Path) -> None:
    state = _random_state(config, seed=4)
    rendered = render(state, layout)
    back, report = convert(rendered, layout)
    assert report.unmapped == [] and report.missing == []
    expected = {k: v for k, v in state.items() if layout != "caffe2" or not k.endswith("num_batches_tracked")}
    assert back.keys() == expected.keys() and all(torch.equal(back[k], v) for k, v in expected.items())
    model = SlowFast(config)
    load_backbone_checkpoint(model, _save(rendered, layout, tmp_path / f"nl{_SUFFIX[layout]}"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


def test_non_local_blocks_the_model_lacks_are_refused_with_the_location(tmp_path: Path) -> None:
    rendered = render(_random_state(SMALL_NL_FAST), "pyslowfast")
    rendered["head.projection.weight"] = torch.zeros(80, 288)
    path = _save(rendered, "pyslowfast", tmp_path / "nl.pyth")
    with pytest.raises(
        CheckpointError, match=re.escape("nonlocal_location=(((1,), ()), ((), ()), ((0,), (1,)), ((), ()))")
    ):
        load_backbone_checkpoint(SlowFast(SMALL), path)
    report = load_backbone_checkpoint(SlowFast(SMALL), path, strict=False)
    assert len(report.unexpected) == 3 * 13 and all("_nonlocal" in k for k in report.unexpected)
    assert report.heads == ["head.projection.weight"] and report.unmapped == []
    with pytest.raises(CheckpointError, match="non-local blocks the checkpoint lacks"):
        load_backbone_checkpoint(
            SlowFast(SMALL_NL_FAST), _save(render(_random_state(), "pyslowfast"), "pyslowfast", tmp_path / "plain.pyth")
        )


def test_non_local_blocks_without_a_name_are_refused_on_render() -> None:
    with pytest.raises(ValueError, match=re.escape("caffe2 (fast pathway)")):
        render(_random_state(SMALL_NL_FAST), "caffe2")
    for layout in ("pytorchvideo", "mmaction2", "acar"):
        with pytest.raises(ValueError, match="non-local"):
            render(_random_state(SMALL_NL), layout)


def test_mmaction2_non_local_blocks_are_reported_unmapped() -> None:
    rendered = render(_random_state(), "mmaction2")
    nl_key = "backbone.slow_path.layer3.1.non_local_block.g.conv.weight"  # mmcv NonLocal3d inside a Bottleneck3d
    rendered[nl_key] = torch.zeros(128, 256, 1, 1, 1)
    _, report = convert(rendered, "mmaction2")
    assert report.unmapped == [nl_key]
    assert any("mmaction2 mapping does not place" in note for note in report.notes)


@pytest.mark.parametrize(
    ("fixture", "config"),
    [
        ("pyslowfast_r101_nl", R101_NL),
        ("caffe2_r101_nl", R101_NL),
        ("mmaction2_ava_convonly", MMACTION2_AVA),
        ("acar_r101_convonly", ACAR_R101),
    ],
)
def test_reference_keys_of_once_refused_models_convert_exactly(fixture: str, config: SlowFastConfig) -> None:
    """Non-local R101 (PySlowFast, Caffe2) and conv-only laterals (mmaction2 AVA, ACAR R101): every backbone tensor
    lands on the model built with the matching config, same shape, nothing left over."""
    data = _layout_fixture(fixture)
    source = {key: torch.empty(shape, device="meta") for key, shape in data["keys"]}
    with torch.device("meta"):
        target = {k: tuple(v.shape) for k, v in SlowFast(config).state_dict().items()}
    if data["layout"] == "caffe2":
        target = {k: s for k, s in target.items() if not k.endswith("num_batches_tracked")}
    assert detect_layout(source) == data["layout"]
    ours, report = convert(source, data["layout"], target=target)
    assert {k: tuple(v.shape) for k, v in ours.items()} == target
    assert report.unmapped == [] and report.missing == [] and report.unexpected == []
    assert sorted(report.heads) == sorted(data["heads"])
    assert report.notes == []


def test_acar_conv_only_lateral_names() -> None:
    examples = {
        "module.backbone.module.Tconv1.weight": "s1_fuse.conv_f2s.weight",
        "module.backbone.module.Tconv4.weight": "s4_fuse.conv_f2s.weight",
    }
    ours, report = convert({key: torch.zeros(1) for key in examples}, "acar")
    assert {report.sources[k]: k for k in ours} == examples
    assert set(render({our: torch.zeros(1) for our in examples.values()}, "acar")) == set(examples)


def test_unknown_layout_is_refused() -> None:
    with pytest.raises(CheckpointError, match="not a SlowFast checkpoint"):
        detect_layout({"features.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown layout"):
        convert(render(_random_state(), "pyslowfast"), "detectron2")


_SIDE_EFFECTS: list[str] = []


def _record_side_effect(what: str) -> None:
    _SIDE_EFFECTS.append(what)


class _Payload:
    """Unpickling this calls a function: what a malicious checkpoint does."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_record_side_effect, ("ran",))


def test_malicious_pkl_is_refused_without_running_it(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    blobs = render(_random_state(), "caffe2")
    path.write_bytes(pickle.dumps({"blobs": blobs, "extra": _Payload()}, protocol=2))
    with pytest.raises(UnsafePickleError, match="_record_side_effect"):
        load_backbone_checkpoint(SlowFast(SMALL), path)
    assert _SIDE_EFFECTS == []


class _TrainingConfig:
    """A stand-in for a config object pickled into a checkpoint (e.g. a yacs CfgNode)."""

    def __init__(self) -> None:
        self.lr = 0.1


def test_pyth_needing_full_unpickling_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "full_pickle.pyth"
    torch.save({"model_state": render(_random_state(), "pyslowfast"), "cfg": _TrainingConfig()}, path)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert "weights_only=True" in message and str(path) in message and "never" in message
    with pytest.raises(CheckpointError):
        load_backbone_checkpoint(SlowFast(SMALL), path)


def test_pkl_written_by_torch_save_is_read_as_torch(tmp_path: Path) -> None:
    path = tmp_path / "torch_saved.pkl"
    torch.save({"model_state": render(_random_state(), "pyslowfast")}, path)
    assert load_backbone_checkpoint(SlowFast(SMALL), path).layout == "pyslowfast"
