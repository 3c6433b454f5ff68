"""Backbones behind one interface: map shapes and strides, and torchvision checkpoints loading to identical maps."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torchvision.models.video import mvit_v2_s, r2plus1d_18, r3d_18

from stages.models.backbones import (
    BACKBONES,
    CSNConfig,
    CSNExtractor,
    MViTv2Extractor,
    R2Plus1DExtractor,
    SlowFastBackbone,
    VideoBackbone,
    build_backbone,
    load_torchvision_checkpoint,
    map_shapes,
)
from stages.models.checkpoints import CheckpointError
from stages.models.slowfast import SlowFast, SlowFastConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread_no_grad() -> None:
    """One intra-op thread: the CI box has 2 shared cores, and oversubscribed torch threads crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.no_grad():
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mvit() -> MViTv2Extractor:
    return MViTv2Extractor().eval()


@pytest.fixture(scope="module")
def r2p1d() -> R2Plus1DExtractor:
    return R2Plus1DExtractor().eval()


def _perturb_(model: torch.nn.Module, seed: int) -> None:
    """Make every float tensor (BN statistics, LayerNorm affine included) differ from any fresh init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.rand(tensor.shape, generator=gen) * 0.1
                tensor.add_(noise if name.endswith("running_var") else noise - 0.05)


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _map_check(model: torch.nn.Module, clip_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    assert isinstance(model, VideoBackbone)
    maps = model(torch.randn(clip_shape))
    expected = map_shapes(model, *clip_shape[2:])
    assert [tuple(m.shape[1:]) for m in maps] == list(expected)
    return [tuple(m.shape) for m in maps]


# ---- shapes and strides ---------------------------------------------------------------------------------------------
def test_r2plus1d_map_is_stride_16_in_space_and_8_in_time(r2p1d: R2Plus1DExtractor) -> None:
    assert (r2p1d.stride, r2p1d.pathway_channels, r2p1d.temporal_strides) == (16, (512,), (8,))
    assert _map_check(r2p1d, (1, 3, 16, 32, 48)) == [(1, 512, 2, 2, 3)]


def test_mvit_map_is_stage_three_at_stride_16(mvit: MViTv2Extractor) -> None:
    assert (mvit.stride, mvit.pathway_channels, mvit.temporal_strides) == (16, (384,), (2,))
    assert len(mvit.blocks) == 14 and "blocks.15." in mvit.checkpoint_dropped
    assert _map_check(mvit, (1, 3, 4, 32, 48)) == [(1, 384, 2, 2, 3)]


@pytest.mark.parametrize(("name", "t_stride"), [("r3d_18", 8), ("mc3_18", 1)])
def test_other_video_resnets(name: str, t_stride: int) -> None:
    model = build_backbone(name).eval()
    assert model.temporal_strides == (t_stride,)
    assert _map_check(model, (1, 3, 8, 32, 48)) == [(1, 512, 8 // t_stride, 2, 3)]


def test_csn_small_and_full_geometry() -> None:
    small = build_backbone("csn", depth_layers=(1, 1, 1, 1), width=8).eval()
    assert (small.stride, small.pathway_channels, small.temporal_strides) == (16, (256,), (8,))
    assert _map_check(small, (2, 3, 8, 32, 48)) == [(2, 256, 1, 2, 3)]
    ip = CSNExtractor(CSNConfig(depth_layers=(1, 1, 1, 1), width=8, mode="ip", temporal_strides=(1, 1, 1, 2)))
    assert _map_check(ip.eval(), (1, 3, 4, 32, 32)) == [(1, 256, 2, 2, 2)]
    assert CSNExtractor(CSNConfig(res5_dilation=1, width=8)).stride == 32


def test_slowfast_fits_the_protocol() -> None:
    torch.manual_seed(0)
    inner = SlowFast(SlowFastConfig.small()).eval()
    adapted = SlowFastBackbone(inner)
    assert adapted.pathway_channels == (inner.slow_channels, inner.fast_channels)
    assert adapted.temporal_strides == (4, 1) and adapted.stride == 16
    clip = torch.randn(1, 3, 8, 32, 32)
    for ours, theirs in zip(adapted(clip), inner(clip), strict=True):
        assert torch.equal(ours, theirs)
    assert _map_check(adapted, (1, 3, 8, 32, 32)) == [(1, 256, 2, 2, 2), (1, 32, 8, 2, 2)]


def test_sizes_that_do_not_divide_are_refused(r2p1d: R2Plus1DExtractor) -> None:
    with pytest.raises(ValueError, match="multiples of the stride 16"):
        r2p1d(torch.zeros(1, 3, 8, 40, 48))
    with pytest.raises(ValueError, match="temporal strides"):
        r2p1d(torch.zeros(1, 3, 12, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        r2p1d(torch.zeros(3, 8, 32, 32))


def test_factory_names_and_options() -> None:
    assert set(BACKBONES) == {"r2plus1d_18", "r3d_18", "mc3_18", "mvit_v2_s", "csn", "slowfast"}
    assert isinstance(build_backbone("slowfast", config=SlowFastConfig.small()), SlowFastBackbone)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet50")
    with pytest.raises(TypeError, match="takes no options"):
        build_backbone("r3d_18", width=8)


# ---- torchvision checkpoints ----------------------------------------------------------------------------------------
def test_r2plus1d_checkpoint_gives_torchvision_layer4(r2p1d: R2Plus1DExtractor, tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = r2plus1d_18(weights=None).eval()
    _perturb_(reference, seed=2)
    report = load_torchvision_checkpoint(r2p1d, _save(reference.state_dict(), tmp_path / "r2p1d.pth"))
    assert report.ignored == ["fc.bias", "fc.weight"] and not report.missing and not report.unexpected

    captured: list[torch.Tensor] = []
    reference.layer4.register_forward_hook(lambda _m, _i, out: captured.append(out))
    clip = torch.randn(1, 3, 8, 32, 48)
    reference(clip)
    (ours,) = r2p1d(clip)
    assert ours.shape == (1, 512, 1, 2, 3)
    torch.testing.assert_close(ours, captured[0], rtol=0, atol=0)


def test_mvit_checkpoint_gives_torchvision_block13(mvit: MViTv2Extractor, tmp_path: Path) -> None:
    torch.manual_seed(3)
    reference = mvit_v2_s(weights=None).eval()
    _perturb_(reference, seed=4)
    report = load_torchvision_checkpoint(mvit, _save({"model": reference.state_dict()}, tmp_path / "mvit.pth"))
    assert any(k.startswith("blocks.14.") for k in report.ignored) and "head.1.weight" in report.ignored
    assert "norm.weight" in report.ignored and not report.missing and not report.unexpected

    # torchvision's own forward takes its token grid from pos_encoding (no absolute embeddings in v2): point it at
    # the tiny clip's grid so the reference runs on the same small input.
    reference.pos_encoding.temporal_size, reference.pos_encoding.spatial_size = 2, (8, 12)
    captured: list[torch.Tensor] = []
    reference.blocks[13].register_forward_hook(lambda _m, _i, out: captured.append(out[0]))
    clip = torch.randn(1, 3, 4, 32, 48)
    reference(clip)
    (ours,) = mvit(clip)
    tokens = captured[0][:, 1:]  # drop the class token; order is (T, H, W) as conv_proj flattened it
    torch.testing.assert_close(ours, tokens.transpose(1, 2).reshape(1, 384, 2, 2, 3), rtol=0, atol=0)


@pytest.mark.slow
def test_mvit_equals_torchvision_at_its_native_size(tmp_path: Path) -> None:
    reference = mvit_v2_s(weights=None).eval()
    _perturb_(reference, seed=5)
    extractor = MViTv2Extractor().eval()
    load_torchvision_checkpoint(extractor, _save(reference.state_dict(), tmp_path / "mvit.pth"))
    captured: list[torch.Tensor] = []
    reference.blocks[13].register_forward_hook(lambda _m, _i, out: captured.append(out[0]))
    clip = torch.randn(1, 3, 16, 224, 224)
    reference(clip)
    (ours,) = extractor(clip)
    assert ours.shape == (1, 384, 8, 14, 14)
    torch.testing.assert_close(ours, captured[0][:, 1:].transpose(1, 2).reshape(ours.shape), rtol=0, atol=0)


def test_other_sizes_interpolate_rel_pos_with_a_warning(mvit: MViTv2Extractor, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="stages.models.backbones"):
        mvit(torch.randn(1, 3, 2, 32, 48))
        mvit(torch.randn(1, 3, 2, 32, 48))
    warnings = [r for r in caplog.records if "interpolated" in r.getMessage()]
    assert len(warnings) == 1 and "8x56x56" in warnings[0].getMessage() and "1x8x12" in warnings[0].getMessage()


def test_rel_pos_tables_of_another_size_are_refused(mvit: MViTv2Extractor, tmp_path: Path) -> None:
    state = {"blocks.0.attn.rel_pos_h": torch.zeros(63, 96), "blocks.0.attn.rel_pos_w": torch.zeros(79, 96)}
    with pytest.raises(CheckpointError, match=r"rel_pos_h: checkpoint \[63, 96\] vs model \[111, 96\].*relative-pos"):
        load_torchvision_checkpoint(mvit, _save(state, tmp_path / "mvit_312.pth"))


def test_r3d_checkpoint_into_r2plus1d_is_refused(r2p1d: R2Plus1DExtractor, tmp_path: Path) -> None:
    path = _save(r3d_18(weights=None).state_dict(), tmp_path / "r3d.pth")
    with pytest.raises(CheckpointError) as err:
        load_torchvision_checkpoint(r2p1d, path)
    message = str(err.value)
    assert "stem.0.weight: checkpoint [64, 3, 3, 7, 7] vs model [45, 3, 1, 7, 7]" in message
    assert "shape mismatch" in message and "missing" in message and "unexpected" in message


def test_containers_prefixes_and_key_reports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = CSNExtractor(CSNConfig.small())
    _perturb_(source, seed=6)
    state = source.state_dict()
    clip = torch.randn(1, 3, 8, 32, 32)
    for i, wrapped in enumerate(
        [state, {"state_dict": state}, {"model": state}, {f"module.{k}": v for k, v in state.items()}]
    ):
        target = CSNExtractor(CSNConfig.small())
        report = load_torchvision_checkpoint(target, _save(wrapped, tmp_path / f"{i}.pth"))
        assert report.loaded == len(state) and not report.ignored
        assert torch.equal(target.eval()(clip)[0], source.eval()(clip)[0])

    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    partial["extra.weight"] = torch.zeros(1)
    path = _save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: layer4\..*more.*1 unexpected keys: extra.weight"):
        load_torchvision_checkpoint(CSNExtractor(CSNConfig.small()), path)
    report = load_torchvision_checkpoint(CSNExtractor(CSNConfig.small()), path, strict=False)
    assert report.unexpected == ["extra.weight"] and all(k.startswith("layer4.") for k in report.missing)


def test_unsafe_or_odd_files_are_refused(tmp_path: Path) -> None:
    model = CSNExtractor(CSNConfig.small())
    with pytest.raises(CheckpointError, match="weights-only"):
        load_torchvision_checkpoint(model, _save({"w": torch.zeros(1), "obj": CSNConfig()}, tmp_path / "a"))
    with pytest.raises(CheckpointError, match="not tensors: epoch"):
        load_torchvision_checkpoint(model, _save({"epoch": 3, "stem.0.weight": torch.zeros(1)}, tmp_path / "b"))
    (tmp_path / "c").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_torchvision_checkpoint(model, tmp_path / "c")
