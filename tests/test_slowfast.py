"""SlowFast backbone: shapes, PySlowFast checkpoint layout and numerics, lateral fusion, non-local, RoI pooling.

Two fixtures come from PySlowFast itself (facebookresearch/SlowFast, commit in the JSON). They were made by
building PySlowFast's own ``video_model_builder.SlowFast`` (unmodified source) in a throwaway script under /tmp,
with import stubs for fvcore/pytorchvideo/detectron2 (config container, registry, BatchNorm, ROIAlign):

- ``pyslowfast_slowfast_r50_state_dict.json``: ``state_dict()`` keys and shapes of SLOWFAST_8x8_R50 (and the AVA
  SLOWFAST_32x2_R50 config, identical), minus ``head.*``.
- ``pyslowfast_small_forward.npz``: res5 outputs of PySlowFast's model in the small config (AVA yaml with
  WIDTH_PER_GROUP 8 and one block per stage) in eval mode, loaded with ``_formula_state_dict`` weights and run on
  ``_formula_input`` (slow frames picked by its ``pack_pathway_output``, i.e. linspace).

Three more were made the same way from the references' unmodified sources (PySlowFast with the real fvcore/yacs;
mmaction2 with mmcv-lite 2.2.0 / mmengine 0.10.7; ACAR-Net's ``models/backbones/slowfast.py``), each loaded with
``_formula_state_dict`` weights of our model's keys (renamed into the reference's layout by
``stages.models.checkpoints.render`` and loaded there with ``strict=True``) and run on ``_formula_input``:

- ``pyslowfast_small_nonlocal_forward.npz``: PySlowFast, AVA yaml with depths (1, 1, 2, 1), width 8,
  ``NONLOCAL.LOCATION`` res3 slow [0], res4 slow [1] and fast [0] (``_NL_LOCATION``); ``dot_product`` with POOL
  [2, 2, 2], and ``softmax`` with POOL [1, 2, 2] and GROUP 2 at res3 slow / res4 fast (``_NL_VARIANTS``).
- ``mmaction2_small_convonly_forward.npz``: ``ResNet3dSlowFast`` as in mmaction2's AVA 4x16 config (resample_rate
  and speed_ratio 8, fusion_kernel 5, ``lateral_norm=False``, spatial_strides (1, 2, 2, 1), dilations 1), base
  width 16.
- ``acar_small_convonly_forward.npz``: ACAR-Net ``SlowFast(Bottleneck, [1, 1, 1, 1], alpha=4, fuse_only_conv=True,
  fuse_kernel_size=5)`` (slow frames ``[::4]``).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.models.backbones import pool_context
from stages.models.slowfast import (
    SlowFast,
    SlowFastConfig,
    roi_pool_features,
    slow_indices,
    split_pathways,
)

logger = logging.getLogger(__name__)
FIXTURES = Path(__file__).parent / "fixtures"


def _formula_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Deterministic, RNG-free weights (so the same numbers can be rebuilt anywhere from names and shapes)."""
    state: dict[str, torch.Tensor] = {}
    for n, (key, shape) in enumerate(shapes.items()):
        numel = math.prod(shape)
        wave = torch.sin(torch.arange(numel, dtype=torch.float64) * 0.7311 + n * 1.37).reshape(shape)
        if key.endswith("num_batches_tracked"):
            value = torch.tensor(0)
        elif key.endswith("running_var"):
            value = 1.0 + 0.5 * wave.abs()
        elif key.endswith("running_mean") or key.endswith("bias"):
            value = 0.1 * wave
        elif "bn" in key.rsplit(".", 2)[-2]:  # BN gamma
            value = 1.0 + 0.2 * wave
        else:  # conv weight: variance-preserving scale for a ReLU network
            fan_in = numel // shape[0]
            value = wave * math.sqrt(2.0 / fan_in) * math.sqrt(2.0)
        state[key] = value.to(torch.float32) if value.is_floating_point() else value
    return state


def _formula_input(shape: tuple[int, ...]) -> torch.Tensor:
    numel = math.prod(shape)
    return torch.cos(torch.arange(numel, dtype=torch.float64) * 0.377).reshape(shape).to(torch.float32)


def _load_fixture_keys() -> list[tuple[str, list[int]]]:
    data = json.loads((FIXTURES / "pyslowfast_slowfast_r50_state_dict.json").read_text())
    return [(key, shape) for key, shape in data["state_dict"]]


def test_small_config_output_shapes() -> None:
    model = SlowFast(SlowFastConfig.small()).eval()
    assert (model.slow_channels, model.fast_channels) == (256, 32)
    with torch.no_grad():
        slow, fast = model(torch.randn(2, 3, 16, 64, 96))
    assert slow.shape == (2, 256, 4, 4, 6)
    assert fast.shape == (2, 32, 16, 4, 6)


def test_stride_32_output_shapes() -> None:
    config = SlowFastConfig(depth_layers=(1, 1, 1, 1), width=8, res5_dilation=1)
    assert config.stride == 32
    model = SlowFast(config).eval()
    with torch.no_grad():
        slow, fast = model(torch.randn(1, 3, 8, 64, 96))
    assert slow.shape == (1, 256, 2, 2, 3)
    assert fast.shape == (1, 32, 8, 2, 3)


def test_r50_state_dict_matches_pyslowfast() -> None:
    expected = _load_fixture_keys()
    got = [(key, list(value.shape)) for key, value in SlowFast(SlowFastConfig()).state_dict().items()]
    assert dict(got) == dict(expected)
    assert got == expected  # same registration order too
    assert any(key == "s1_fuse.conv_f2s.weight" and shape == [16, 8, 7, 1, 1] for key, shape in got)


def _assert_forward_matches(config: SlowFastConfig, fixture: str) -> None:
    """Formula-generated weights and input give the reference model's recorded slow/fast outputs."""
    reference = np.load(FIXTURES / fixture)
    model = SlowFast(config).eval()
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    model.load_state_dict(_formula_state_dict(shapes), strict=True)
    with torch.no_grad():
        slow, fast = model(_formula_input(tuple(reference["input_shape"])))
    torch.testing.assert_close(slow, torch.from_numpy(reference["slow"]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast, torch.from_numpy(reference["fast"]), rtol=1e-4, atol=1e-4)


def test_small_forward_matches_pyslowfast_numerically() -> None:
    _assert_forward_matches(SlowFastConfig.small(), "pyslowfast_small_forward.npz")


def test_init_follows_pyslowfast() -> None:
    model = SlowFast(SlowFastConfig.small())
    state = model.state_dict()
    final_bn = [key for key in state if key.endswith("branch2.c_bn.weight")]
    assert len(final_bn) == 8 and all(state[key].abs().sum() == 0 for key in final_bn)
    assert (state["s2.pathway0_res0.branch2.b_bn.weight"] == 1).all()
    unzeroed = SlowFast(SlowFastConfig(depth_layers=(1, 1, 1, 1), width=8, zero_init_final_bn=False)).state_dict()
    assert (unzeroed["s2.pathway0_res0.branch2.c_bn.weight"] == 1).all()


def test_slow_frame_selection() -> None:
    assert slow_indices(16, 4).tolist() == [0, 5, 10, 15]  # PySlowFast pack_pathway_output
    assert slow_indices(32, 4).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert slow_indices(16, 4, "stride").tolist() == [0, 4, 8, 12]
    x = torch.arange(16.0).view(1, 1, 16, 1, 1)
    slow, fast = split_pathways(x, 4, "stride")
    assert slow.flatten().tolist() == [0, 4, 8, 12] and fast is x


@pytest.mark.parametrize("slow_sampling", ["linspace", "stride"])
def test_lateral_connections_feed_the_slow_pathway(slow_sampling: str) -> None:
    """Changing only fast frames the slow pathway never sees must still change the slow output."""
    torch.manual_seed(0)
    config = SlowFastConfig(depth_layers=(1, 1, 1, 1), width=8, slow_sampling=slow_sampling)
    model = SlowFast(config).eval()
    x = torch.randn(1, 3, 16, 64, 64)
    slow_frames = set(slow_indices(16, 4, slow_sampling).tolist())
    changed = x.clone()
    for t in range(16):
        if t not in slow_frames:
            changed[:, :, t] = torch.randn_like(changed[:, :, t])
    with torch.no_grad():
        slow_a, fast_a = model(x)
        slow_b, fast_b = model(changed)
        assert not torch.allclose(fast_a, fast_b)
        assert (slow_a - slow_b).abs().max() > 1e-3
        # and the slow pathway really only sees its own frames: without the lateral input nothing would change
        assert torch.equal(split_pathways(x, 4, slow_sampling)[0], split_pathways(changed, 4, slow_sampling)[0])


def test_pool_context_averages_time_per_pathway() -> None:
    slow = torch.randn(2, 6, 4, 5, 7)
    fast = torch.randn(2, 3, 16, 5, 7)
    context = pool_context((slow, fast))
    assert context.shape == (2, 9, 5, 7)
    torch.testing.assert_close(context[:, :6], slow.mean(2))
    torch.testing.assert_close(context[:, 6:], fast.mean(2))
    with pytest.raises(ValueError):
        pool_context((slow, fast[..., :4]))


def test_roi_pool_features_sees_a_hot_pixel_only_inside_its_box() -> None:
    context = torch.zeros(2, 3, 8, 10)  # canvas 128 x 160 at stride 16
    context[1, 0, 2, 3] = 5.0  # clip 1, channel 0, feature cell (y=2, x=3) = canvas [32, 48) x [48, 64)
    boxes = torch.tensor(
        [
            [32.0, 16.0, 96.0, 80.0],  # clip 1, around the hot cell
            [96.0, 64.0, 160.0, 128.0],  # clip 1, far from it
            [32.0, 16.0, 96.0, 80.0],  # clip 0: same place, but the hot pixel is in the other clip
        ]
    )
    batch_index = torch.tensor([1, 1, 0])
    pooled = roi_pool_features(context, boxes, batch_index)
    assert pooled.shape == (3, 3)
    assert pooled[0, 0] > 1.0
    assert pooled[1, 0] == 0 and pooled[2, 0] == 0
    assert pooled[:, 1:].abs().sum() == 0
    # a box tightly around the hot cell's centre samples it exactly: max == the value
    tight = roi_pool_features(context, torch.tensor([[48.0, 32.0, 64.0, 48.0]]), torch.tensor([1]), output_size=1)
    torch.testing.assert_close(tight, torch.tensor([[5.0, 0.0, 0.0]]))


def test_roi_pool_features_of_constant_map_is_constant() -> None:
    context = torch.arange(4.0).view(1, 4, 1, 1).expand(1, 4, 8, 10).contiguous()
    pooled = roi_pool_features(context, torch.tensor([[10.0, 20.0, 70.0, 100.0]]), torch.tensor([0]))
    torch.testing.assert_close(pooled, torch.arange(4.0).view(1, 4))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="res5_dilation"):
        SlowFastConfig(res5_dilation=3)
    with pytest.raises(ValueError, match="res5_stride"):
        SlowFastConfig(res5_stride=4)
    with pytest.raises(ValueError, match="beta_inv"):
        SlowFastConfig(width=12)
    with pytest.raises(ValueError, match="temporal_kernel_blocks"):
        SlowFastConfig(temporal_kernel_blocks=(3, 4, 7, 3))
    with pytest.raises(ValueError, match="nonlocal_location"):
        SlowFastConfig(nonlocal_location=(((), ()), ((), ()), ((6,), ()), ((), ())))  # res4 has 6 blocks: 0..5
    with pytest.raises(ValueError, match="nonlocal_location"):
        SlowFastConfig(nonlocal_location=(((), ()), ((), ()), ((1,), ())))
    with pytest.raises(ValueError, match="nonlocal_group"):
        SlowFastConfig(nonlocal_group=((1, 1), (1, 0), (1, 1), (1, 1)))
    with pytest.raises(ValueError, match="nonlocal_pool"):
        SlowFastConfig(nonlocal_pool=(2, 2))
    with pytest.raises(ValueError, match="nonlocal_instantiation"):
        SlowFastConfig(nonlocal_instantiation="gaussian")


def test_defaults_are_unchanged_and_options_from_json_compare_equal() -> None:
    default = SlowFastConfig()
    assert (default.res5_spatial_stride, default.stride, default.lateral_norm) == (1, 16, True)
    assert default.nonlocal_location is None and default.nonlocal_group is None
    assert (default.nonlocal_pool, default.nonlocal_instantiation) == ((1, 2, 2), "dot_product")
    from_json = SlowFastConfig(
        **json.loads(json.dumps({"nonlocal_location": _NL_LOCATION, "nonlocal_pool": [2, 2, 2]}))
    )
    from_code = SlowFastConfig(
        nonlocal_location=(((), ()), ((0,), ()), ((1,), (0,)), ((), ())), nonlocal_pool=(2, 2, 2)
    )
    assert from_json == from_code and hash(from_json) == hash(from_code)


# ---- non-local blocks (PySlowFast NONLOCAL) -------------------------------------------------------------------------
_NL_LOCATION = [[[], []], [[0], []], [[1], [0]], [[], []]]
_NL_VARIANTS = {
    "dot_product": {"nonlocal_pool": (2, 2, 2)},
    "softmax": {"nonlocal_pool": (1, 2, 2), "nonlocal_group": ((1, 1), (2, 1), (1, 2), (1, 1))},
}


def _small_nonlocal(instantiation: str) -> SlowFastConfig:
    return SlowFastConfig(
        depth_layers=(1, 1, 2, 1),
        width=8,
        nonlocal_location=_NL_LOCATION,
        nonlocal_instantiation=instantiation,
        **_NL_VARIANTS[instantiation],
    )


@pytest.mark.parametrize("instantiation", ["dot_product", "softmax"])
def test_nonlocal_forward_matches_pyslowfast_numerically(instantiation: str) -> None:
    reference = np.load(FIXTURES / "pyslowfast_small_nonlocal_forward.npz")
    model = SlowFast(_small_nonlocal(instantiation)).eval()
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    model.load_state_dict(_formula_state_dict(shapes), strict=True)
    with torch.no_grad():
        slow, fast = model(_formula_input(tuple(reference["input_shape"])))
    torch.testing.assert_close(slow, torch.from_numpy(reference[f"{instantiation}_slow"]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast, torch.from_numpy(reference[f"{instantiation}_fast"]), rtol=1e-4, atol=1e-4)


def test_nonlocal_state_dict_matches_pyslowfast_r101_50_50() -> None:
    """PySlowFast's AVA SLOWFAST_32x2_R101_50_50 (non-local after slow res4 blocks 6, 13, 20): same keys, same order."""
    with gzip.open(FIXTURES / "checkpoint_layouts" / "pyslowfast_r101_nl.json.gz", "rt") as f:
        expected = [(key, shape) for key, shape in json.load(f)["keys"] if not key.startswith("head.")]
    config = SlowFastConfig(
        depth_layers=(3, 4, 23, 3),
        fusion_kernel=5,
        temporal_kernel_blocks=(3, 4, 6, 3),
        nonlocal_location=(((), ()), ((), ()), ((6, 13, 20), ()), ((), ())),
        nonlocal_pool=(2, 2, 2),
    )
    with torch.device("meta"):
        got = [(key, list(value.shape)) for key, value in SlowFast(config).state_dict().items()]
    assert got == expected
    assert ["s4.pathway0_nonlocal6.conv_theta.weight", [512, 1024, 1, 1, 1]] in [list(kv) for kv in got]


def test_nonlocal_blocks_start_as_identity_and_pool_like_pyslowfast() -> None:
    model = SlowFast(_small_nonlocal("dot_product")).eval()
    block = model.s4.pathway0_nonlocal1
    assert isinstance(block.pool, torch.nn.MaxPool3d) and block.pool.kernel_size == (2, 2, 2)
    assert (block.bn.weight == 0).all() and (block.conv_theta.bias == 0).all()  # zero-init final BN, as PySlowFast
    x = torch.randn(1, 128, 4, 4, 4)  # res4 slow of width 8: 16 * 8 channels
    with torch.no_grad():
        assert torch.equal(block(x), x)
    unpooled = SlowFast(replace(_small_nonlocal("dot_product"), nonlocal_pool=(1, 1, 1)))
    assert unpooled.s4.pathway0_nonlocal1.pool is None  # PySlowFast builds no pool module for an all-ones POOL
    assert "pool" not in dict(unpooled.s4.pathway0_nonlocal1.named_children())


def test_nonlocal_group_must_divide_time() -> None:
    config = replace(_small_nonlocal("dot_product"), nonlocal_group=((1, 1), (3, 1), (1, 1), (1, 1)))
    with pytest.raises(ValueError, match="group 3"):
        SlowFast(config).eval()(torch.randn(1, 3, 16, 32, 32))  # res3 slow has 4 frames


# ---- laterals and res5 variants (mmaction2, ACAR-Net) ---------------------------------------------------------------
def test_conv_only_laterals_have_no_bn() -> None:
    model = SlowFast(SlowFastConfig(depth_layers=(1, 1, 1, 1), width=8, lateral_norm=False))
    fuse_keys = sorted(key for key in model.state_dict() if "_fuse." in key)
    assert fuse_keys == [f"s{i}_fuse.conv_f2s.weight" for i in range(1, 5)]
    assert model.s1_fuse.bn is None and model.s1_fuse.relu is None


def test_res5_stride_1_undilated_shapes() -> None:
    config = SlowFastConfig(depth_layers=(1, 1, 1, 1), width=8, res5_dilation=1, res5_stride=1)
    assert (config.stride, config.res5_spatial_stride) == (16, 1)
    model = SlowFast(config).eval()
    assert model.s5.pathway0_res0.branch2.b.dilation == (1, 1, 1)
    assert model.s5.pathway0_res0.branch2.b.stride == (1, 1, 1)
    with torch.no_grad():
        slow, fast = model(torch.randn(1, 3, 8, 64, 96))
    assert slow.shape == (1, 256, 2, 4, 6) and fast.shape == (1, 32, 8, 4, 6)


@pytest.mark.parametrize(
    ("fixture", "config"),
    [
        (
            "mmaction2_small_convonly_forward.npz",
            SlowFastConfig(
                width=16,
                alpha=8,
                fusion_kernel=5,
                res5_dilation=1,
                res5_stride=1,
                lateral_norm=False,
                slow_sampling="stride",
            ),
        ),
        (
            "acar_small_convonly_forward.npz",
            SlowFastConfig(depth_layers=(1, 1, 1, 1), fusion_kernel=5, lateral_norm=False, slow_sampling="stride"),
        ),
    ],
)
def test_conv_only_lateral_forward_matches_reference(fixture: str, config: SlowFastConfig) -> None:
    _assert_forward_matches(config, fixture)


def test_small_forward_timing() -> None:
    """Not an assertion on speed: logs ms per clip of the small config on 2 CPU threads for the record."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = SlowFast(SlowFastConfig.small()).eval()
        x = torch.randn(4, 3, 16, 128, 160)
        with torch.inference_mode():
            model(x)
            start = time.perf_counter()
            model(x)
            elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    logger.info("SlowFast small: %.1f ms per clip (batch 4, 16x128x160, 2 threads)", elapsed / 4 * 1e3)
    assert elapsed > 0
