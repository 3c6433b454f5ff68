"""Video backbones behind one interface, so extraction can treat SlowFast and single-pathway models alike.

Every backbone here is a :class:`VideoBackbone` (an ``nn.Module``): it maps a clip [B, 3, T, H, W] to a
tuple of per-pathway maps [B, C_p, T / temporal_strides[p], H / stride, W / stride]. The single-pathway extractors
wrap torchvision's own modules (built with ``weights=None``; nothing is downloaded) and keep torchvision's parameter
names, so a torchvision ``state_dict`` loads by identity once the parts an extractor drops (the classification head,
and for MViT the stride-32 stage) are set aside; :func:`load_torchvision_checkpoint` does that and refuses anything
that does not fit.

========================  ========  ======  =========  ===============================================
backbone                  channels  stride  t-stride   map
========================  ========  ======  =========  ===============================================
``r2plus1d_18``           (512,)    16      8          layer4 (stem s2, layers 2-4 s2 in space and time)
``r3d_18``                (512,)    16      8          layer4, full 3x3x3 convolutions
``mc3_18``                (512,)    16      1          layer4; layers 2-4 are 2D, so time is kept
``mvit_v2_s``             (384,)    16      2          output of block 13 (end of the stride-16 stage)
``csn``                   (2048,)   16      8          ir-CSN-152 res5, dilated (ours, see CSNConfig)
``slowfast``              (C_s,C_f) 16/32   (alpha,1)  our SlowFast (stages.models.slowfast), adapted
========================  ========  ======  =========  ===============================================

Clips must have H and W divisible by ``stride`` and T divisible by every temporal stride: all these networks pad
so that sizes round up, and a rounded-up map would silently shift box coordinates by a fraction of a cell.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from torchvision.models import video as tv_video

from stages.models.checkpoints import (
    CheckpointError,
    LoadReport,
    listing,
    load_backbone_checkpoint,
    read_checkpoint,
    tensor_state_dict,
)
from stages.models.slowfast import SlowFast, SlowFastConfig

logger = logging.getLogger(__name__)

_VIDEO_RESNETS = {"r2plus1d_18": tv_video.r2plus1d_18, "r3d_18": tv_video.r3d_18, "mc3_18": tv_video.mc3_18}
# Temporal stride of layer4 in torchvision's VideoResNets: stem stride 1 in time; r3d/r(2+1)d stride 2 in time in
# layers 2-4; mc3's layers 2-4 are Conv3DNoTemporal (stride 1 in time).
_VIDEO_RESNET_TSTRIDE = {"r2plus1d_18": 8, "r3d_18": 8, "mc3_18": 1}


class VideoBackbone(nn.Module):
    """What extraction needs from a backbone: the geometry of its maps and a clip -> per-pathway maps call.

    Every backbone derives from it (a module with these attributes set in ``__init__``), so the stages can rely on
    both the geometry and ``nn.Module``'s ``eval``/``to``/``state_dict``.

    ``temporal_strides`` goes beyond the minimal contract because a store's shape (T per pathway) must be known
    before the first clip is decoded; ``T_p = T // temporal_strides[p]``.
    """

    stride: int
    pathway_channels: tuple[int, ...]
    temporal_strides: tuple[int, ...]

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError


def map_shapes(backbone: VideoBackbone, num_frames: int, height: int, width: int) -> tuple[tuple[int, ...], ...]:
    """Per-pathway (C, T, H, W) of the maps for a clip of this size, without running the model."""
    check_clip_size(backbone, num_frames, height, width)
    return tuple(
        (c, num_frames // t, height // backbone.stride, width // backbone.stride)
        for c, t in zip(backbone.pathway_channels, backbone.temporal_strides, strict=True)
    )


def check_clip_size(backbone: VideoBackbone, num_frames: int, height: int, width: int) -> None:
    """Refuse sizes the maps would not divide exactly (padding rounds up, which misaligns boxes)."""
    if height % backbone.stride or width % backbone.stride:
        raise ValueError(
            f"{type(backbone).__name__}: H x W = {height} x {width} must be multiples of the stride {backbone.stride}"
        )
    bad = [t for t in backbone.temporal_strides if num_frames % t]
    if num_frames < 1 or bad:
        raise ValueError(
            f"{type(backbone).__name__}: T = {num_frames} must be a positive multiple of the temporal strides "
            f"{backbone.temporal_strides}"
        )


def _check_clip(backbone: VideoBackbone, clip: torch.Tensor) -> None:
    if clip.ndim != 5 or clip.shape[1] != 3:
        raise ValueError(f"{type(backbone).__name__} expects a clip [B, 3, T, H, W], got {tuple(clip.shape)}")
    check_clip_size(backbone, *clip.shape[2:])


# ---- torchvision VideoResNet (R(2+1)D-18, R3D-18, MC3-18) -----------------------------------------------------------
class VideoResNetExtractor(VideoBackbone):
    """A torchvision VideoResNet up to layer4, whose map (512 channels, spatial stride 16) is what RoIs read.

    The stem is stride 2 in space with no max pool and layers 2-4 each halve space, hence 16 (not 32 as in 2D
    ResNets), so no dilation is needed. ``avgpool`` and ``fc`` are dropped; ``fc.*`` checkpoint keys are ignored.
    """

    checkpoint_dropped: tuple[str, ...] = ("fc.",)

    def __init__(self, arch: str = "r2plus1d_18") -> None:
        super().__init__()
        if arch not in _VIDEO_RESNETS:
            raise ValueError(f"unknown VideoResNet {arch!r}; choose one of {sorted(_VIDEO_RESNETS)}")
        model = _VIDEO_RESNETS[arch](weights=None)
        self.arch = arch
        self.stem = model.stem
        self.layer1, self.layer2, self.layer3, self.layer4 = model.layer1, model.layer2, model.layer3, model.layer4
        self.stride = 16
        self.temporal_strides: tuple[int, ...] = (_VIDEO_RESNET_TSTRIDE[arch],)
        self.pathway_channels: tuple[int, ...] = (model.fc.in_features,)

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[B, 3, T, H, W] -> ([B, 512, T / t-stride, H/16, W/16],)."""
        _check_clip(self, clip)
        x = self.layer2(self.layer1(self.stem(clip)))
        return (self.layer4(self.layer3(x)),)


class R2Plus1DExtractor(VideoResNetExtractor):
    """R(2+1)D-18's layer4 map: 512 channels, stride 16 in space and 8 in time (16 frames -> 2)."""

    def __init__(self) -> None:
        super().__init__("r2plus1d_18")


# ---- torchvision MViT-v2-S ------------------------------------------------------------------------------------------
class MViTv2Extractor(VideoBackbone):
    """MViT-v2-S tokens after the stride-16 stage (block 13 of 16), reshaped to a [B, 384, T/2, H/16, W/16] map.

    MViT-v2-S pools queries spatially at blocks 1, 3 and 14, ending at stride 32. We stop before block 14 rather
    than removing its query stride: every kept block then runs exactly as trained (its pooling kernels and relative
    position tables see the token grid they were trained on), so the map equals torchvision's block-13 output, and
    the two 768-channel blocks, which would otherwise attend over 4x more tokens than in training, are not paid for.
    The cost is 384 rather than 768 channels and no final LayerNorm (it is sized for 768).

    Input size: torchvision builds mvit_v2_s only for 16x224x224 (``spatial_size`` cannot be passed), so the
    relative-position tables always have that size, the size of torchvision's checkpoint. Other sizes run: the token
    grid comes from the input, and torchvision's attention linearly interpolates the tables to it (as MViTv2 does for
    detection); a warning says so once per grid. A checkpoint trained at another size has tables of other shapes and
    is refused by :func:`load_torchvision_checkpoint`, naming the tables.
    """

    checkpoint_dropped: tuple[str, ...] = ("head.", "norm.")  # plus the blocks after the cut (set in __init__)

    def __init__(self) -> None:
        super().__init__()
        model = tv_video.mvit_v2_s(weights=None)
        cut = max(i for i, block in enumerate(model.blocks) if block.pool_skip is not None)  # last spatial q-pool
        self.conv_proj = model.conv_proj
        self.pos_encoding = model.pos_encoding  # relative positions: holds only the class token
        self.blocks = nn.ModuleList(model.blocks[:cut])
        later = tuple(f"blocks.{i}." for i in range(cut, len(model.blocks)))
        self.checkpoint_dropped = (*type(self).checkpoint_dropped, *later)
        self.native_grid = (model.pos_encoding.temporal_size, *model.pos_encoding.spatial_size)
        self.stride = 16
        self.temporal_strides: tuple[int, ...] = (model.conv_proj.stride[0],)
        self.pathway_channels: tuple[int, ...] = (model.blocks[cut].norm1.normalized_shape[0],)
        self._warned: set[tuple[int, ...]] = set()

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[B, 3, T, H, W] -> ([B, 384, T/2, H/16, W/16],); the class token is dropped."""
        _check_clip(self, clip)
        x = self.conv_proj(clip)
        thw = tuple(x.shape[2:])
        if thw != self.native_grid and thw not in self._warned:
            self._warned.add(thw)
            logger.warning(
                "MViT-v2-S relative-position tables were built for a %s token grid (16x224x224 input); they are "
                "interpolated for this %s grid",
                "x".join(map(str, self.native_grid)),
                "x".join(map(str, thw)),
            )
        x = self.pos_encoding(x.flatten(2).transpose(1, 2))
        for block in self.blocks:
            x, thw = block(x, thw)
        tokens = x[:, 1:]
        return (tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *thw),)


# ---- channel-separated network (ir-CSN) -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CSNConfig:
    """A channel-separated ResNet (Tran et al., 2019), as the AVA-Kinetics reports use it (ir-CSN-152 at stride 16).

    ``mode="ir"`` (interaction-reduced) replaces each bottleneck's 3x3x3 conv by a depthwise one; ``"ip"``
    (interaction-preserved) puts a 1x1x1 conv before it. Res5 is dilated (stride 16) as in SlowFast's AVA models.
    Parameter names are ours (``stem.conv``, ``layer{1-4}.{i}.conv1..3/bn1..3/downsample``); no public checkpoint
    layout is mapped yet.
    """

    depth_layers: tuple[int, int, int, int] = (3, 8, 36, 3)
    width: int = 64
    mode: Literal["ir", "ip"] = "ir"
    temporal_strides: tuple[int, int, int, int] = (1, 2, 2, 2)
    res5_dilation: int = 2

    def __post_init__(self) -> None:
        if len(self.depth_layers) != 4 or min(self.depth_layers) < 1:
            raise ValueError(f"depth_layers needs four stage depths >= 1, got {self.depth_layers}")
        if self.mode not in ("ir", "ip"):
            raise ValueError(f"mode must be 'ir' or 'ip', got {self.mode!r}")
        if len(self.temporal_strides) != 4 or any(s not in (1, 2) for s in self.temporal_strides):
            raise ValueError(f"temporal_strides must be four values in (1, 2), got {self.temporal_strides}")
        if self.res5_dilation not in (1, 2):
            raise ValueError(f"res5_dilation must be 1 (stride 32) or 2 (stride 16), got {self.res5_dilation}")

    @classmethod
    def small(cls) -> CSNConfig:
        """One block per stage, width 8 (256 output channels): for tests and CPU runs."""
        return cls(depth_layers=(1, 1, 1, 1), width=8)


class _CSNBottleneck(nn.Module):
    """1x1x1 reduce, channel-separated 3x3x3 (depthwise, strided/dilated), 1x1x1 expand (x4), residual."""

    def __init__(self, cin: int, planes: int, stride: tuple[int, int, int], dilation: int, mode: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        depthwise = nn.Conv3d(
            planes,
            planes,
            3,
            stride=stride,
            padding=(1, dilation, dilation),
            dilation=(1, dilation, dilation),
            groups=planes,
            bias=False,
        )
        self.conv2 = nn.Sequential(nn.Conv3d(planes, planes, 1, bias=False), depthwise) if mode == "ip" else depthwise
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if cin != planes * 4 or stride != (1, 1, 1):
            self.downsample = nn.Sequential(
                nn.Conv3d(cin, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm3d(planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class CSNExtractor(VideoBackbone):
    """ir-/ip-CSN res5 map at stride 16 (res5 dilated); temporal stride is the product of ``temporal_strides``."""

    checkpoint_dropped: tuple[str, ...] = ("fc.",)

    def __init__(self, config: CSNConfig | None = None) -> None:
        super().__init__()
        config = config or CSNConfig()
        self.config = config
        w = config.width
        self.stem = nn.Sequential(
            nn.Conv3d(3, w, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(w),
            nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        cin = w
        layers = []
        for i, (depth, t_stride) in enumerate(zip(config.depth_layers, config.temporal_strides, strict=True)):
            planes = w * 2**i
            dilated = i == 3 and config.res5_dilation == 2
            s_stride = 1 if i == 0 or dilated else 2
            blocks = []
            for b in range(depth):
                stride = (t_stride, s_stride, s_stride) if b == 0 else (1, 1, 1)
                blocks.append(_CSNBottleneck(cin, planes, stride, config.res5_dilation if dilated else 1, config.mode))
                cin = planes * 4
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.stride = 16 if config.res5_dilation == 2 else 32
        t_total = 1
        for s in config.temporal_strides:
            t_total *= s
        self.temporal_strides: tuple[int, ...] = (t_total,)
        self.pathway_channels: tuple[int, ...] = (cin,)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[B, 3, T, H, W] -> ([B, 32 * width, T / t-stride, H/16, W/16],)."""
        _check_clip(self, clip)
        x = self.layer2(self.layer1(self.stem(clip)))
        return (self.layer4(self.layer3(x)),)


# ---- our SlowFast ---------------------------------------------------------------------------------------------------
class SlowFastBackbone(VideoBackbone):
    """Our two-pathway SlowFast seen through :class:`VideoBackbone`: (slow, fast) maps, temporal strides (alpha, 1).

    Checkpoints load into ``.model`` with ``stages.models.checkpoints`` (PySlowFast names), not the torchvision loader.
    """

    def __init__(self, model: SlowFast) -> None:
        super().__init__()
        self.model = model
        self.stride = model.config.stride
        self.pathway_channels: tuple[int, ...] = (model.slow_channels, model.fast_channels)
        self.temporal_strides: tuple[int, ...] = (model.config.alpha, 1)

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _check_clip(self, clip)
        return tuple(self.model(clip))


# ---- factory --------------------------------------------------------------------------------------------------------
def _fixed_architecture(name: str, factory: Callable[[], VideoBackbone]) -> Callable[..., VideoBackbone]:
    """A builder for a torchvision model, whose architecture its checkpoints fix: it takes no options."""

    def build(**options: Any) -> VideoBackbone:
        if options:
            raise TypeError(f"backbone {name!r} takes no options, got {sorted(options)}")
        return factory()

    return build


def _csn(**options: Any) -> VideoBackbone:
    return CSNExtractor(options.pop("config", None) or CSNConfig(**options))


def _slowfast(**options: Any) -> VideoBackbone:
    return SlowFastBackbone(SlowFast(options.pop("config", None) or SlowFastConfig(**options)))


# The registry, like heads.HEADS: name -> builder taking the architecture options.
BACKBONES: dict[str, Callable[..., VideoBackbone]] = {
    **{name: _fixed_architecture(name, partial(VideoResNetExtractor, name)) for name in _VIDEO_RESNETS},
    "mvit_v2_s": _fixed_architecture("mvit_v2_s", MViTv2Extractor),
    "csn": _csn,
    "slowfast": _slowfast,
}


def build_backbone(name: str, **options: Any) -> VideoBackbone:
    """A backbone by name (see ``BACKBONES``), randomly initialised; options go to its config.

    ``csn`` takes :class:`CSNConfig` fields (or ``config=``); ``slowfast`` takes ``config=SlowFastConfig(...)`` or
    its fields; the torchvision models take none (their architecture is fixed by their checkpoints).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {tuple(BACKBONES)}")
    return BACKBONES[name](**options)


# ---- torchvision checkpoints ----------------------------------------------------------------------------------------
def load_torchvision_checkpoint(extractor: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load a torchvision-format state dict (``model.state_dict()`` of the torchvision model) into an extractor.

    Read with ``torch.load(weights_only=True)``. Keys of the parts the extractor drops (``checkpoint_dropped``:
    classification head, MViT's stride-32 stage) are ignored and reported. A shape mismatch is always refused, naming
    keys and shapes; missing or unexpected keys are refused when ``strict`` (else logged), so a checkpoint of another
    architecture (r3d_18 into r2plus1d_18) never half-loads.
    """
    path = Path(path)
    state = tensor_state_dict(read_checkpoint(path), path)
    dropped = tuple(getattr(extractor, "checkpoint_dropped", ()))
    ignored = tuple(sorted(k for k in state if k.startswith(dropped)))
    ours = extractor.state_dict()
    wanted = {k: v for k, v in state.items() if not k.startswith(dropped)}
    mismatched = [
        f"{k}: checkpoint {list(v.shape)} vs model {list(ours[k].shape)}"
        for k, v in wanted.items()
        if k in ours and v.shape != ours[k].shape
    ]
    missing = tuple(sorted(set(ours) - set(wanted)))
    unexpected = tuple(sorted(set(wanted) - set(ours)))
    name = type(extractor).__name__
    if mismatched:
        hint = ""
        if any(".rel_pos_" in m for m in mismatched):
            hint = (
                " (relative-position tables are sized for the training input; torchvision's mvit_v2_s is built for "
                "16x224x224, so a checkpoint trained at another size does not fit)"
            )
        raise CheckpointError(
            f"{path} does not fit {name}: {len(mismatched)} shape mismatch(es): {listing(mismatched)}{hint}; "
            f"also {len(missing)} missing, {len(unexpected)} unexpected keys"
        )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {listing(unexpected)}")
    if problems and strict:
        raise CheckpointError(f"{path} does not fit {name}: " + "; ".join(problems))
    for problem in problems:
        logger.warning("%s into %s: %s", path, name, problem)
    extractor.load_state_dict(wanted, strict=False)
    report = LoadReport(
        layout="torchvision",
        sources={k: k for k in wanted if k in ours},
        ignored=list(ignored),
        missing=list(missing),
        unexpected=list(unexpected),
    )
    logger.info(
        "loaded %d tensors from %s into %s; ignored %d of dropped parts (%s)",
        report.loaded,
        path,
        name,
        len(ignored),
        listing(ignored),
    )
    return report


# ---- the backbone extraction runs -------------------------------------------------------------------------------
_SLOWFAST_PRESETS = {
    "small": SlowFastConfig.small(),
    "r50": SlowFastConfig(),
    "r101": SlowFastConfig(depth_layers=(3, 4, 23, 3), fusion_kernel=5),
}


@dataclass(frozen=True)
class BackboneConfig:
    """Which backbone produces the features, its architecture options, and the weights to load."""

    name: str = "slowfast"  # one of BACKBONES
    preset: Literal["small", "r50", "r101"] = "small"  # slowfast only
    options: Mapping[str, Any] = field(default_factory=dict)  # csn: CSNConfig fields; slowfast: overrides preset
    checkpoint: Path | None = None  # `pipeline finetune` output or a public checkpoint
    checkpoint_layout: Literal["auto", "pyslowfast", "caffe2", "pytorchvideo", "mmaction2", "acar"] = "auto"  # slowfast
    seed: int = 0  # initialisation seed when there is no checkpoint

    def slowfast_config(self) -> SlowFastConfig:
        if self.preset not in _SLOWFAST_PRESETS:
            raise ValueError(f"unknown slowfast preset {self.preset!r}; choose one of {sorted(_SLOWFAST_PRESETS)}")
        return replace(_SLOWFAST_PRESETS[self.preset], **dict(self.options))

    def architecture(self) -> dict[str, Any]:
        """What defines the network (for the store fingerprint)."""
        if self.name == "slowfast":
            return asdict(self.slowfast_config())
        return {"name": self.name, **dict(self.options)}

    @property
    def stride(self) -> int:
        """Spatial stride of the maps: 16 for every backbone but an undilated SlowFast (32)."""
        return self.slowfast_config().stride if self.name == "slowfast" else 16


def pool_context(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-pathway temporal average, concatenated on channels: [B, sum C_p, H, W], the map RoIs are read from."""
    shapes = {(m.shape[0], *m.shape[-2:]) for m in maps}
    if len(shapes) != 1:
        raise ValueError(f"pathway maps disagree: {[tuple(m.shape) for m in maps]}")
    return torch.cat([m.mean(dim=2) for m in maps], dim=1)


def load_backbone(config: BackboneConfig) -> tuple[VideoBackbone, str]:
    """The backbone in eval mode and a digest of its weights' origin (for the store fingerprint).

    SlowFast checkpoints load through ``stages.models.checkpoints`` (PySlowFast and the other public layouts); the
    torchvision backbones and CSN through :func:`load_torchvision_checkpoint`. Both read weights only.
    """
    torch.manual_seed(config.seed)
    options = {"config": config.slowfast_config()} if config.name == "slowfast" else dict(config.options)
    backbone = build_backbone(config.name, **options)
    if config.checkpoint is None:
        return backbone.eval(), f"random-init(seed={config.seed})"
    path = Path(config.checkpoint)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such backbone checkpoint. Run `pipeline finetune` first (it writes backbone.checkpoint), "
            "point backbone.checkpoint at a public checkpoint, or set it to null for random weights"
        )
    if isinstance(backbone, SlowFastBackbone):
        load_backbone_checkpoint(backbone.model, path, config.checkpoint_layout)
    else:
        load_torchvision_checkpoint(backbone, path)
    return backbone.eval(), hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def backbone_checkpoint(backbone: VideoBackbone) -> dict[str, Any]:
    """What to save so :func:`load_backbone` reads it back: PySlowFast's layout for SlowFast, else a state dict."""
    if isinstance(backbone, SlowFastBackbone):
        return {"model_state": backbone.model.state_dict()}
    return {"state_dict": backbone.state_dict()}
