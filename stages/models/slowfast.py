"""SlowFast backbone (Feichtenhofer et al., 2019) with PySlowFast's module names, plus the AVA head's RoI pooling.

The modules are named exactly as in PySlowFast (``s1.pathway0_stem.conv``, ``s2.pathway0_res0.branch2.a_bn``,
``s1_fuse.conv_f2s``, ``s4.pathway0_nonlocal6.conv_theta`` ...), so a PySlowFast ``.pyth`` ``model_state`` (minus
``head.*``) loads by identity. The classification/detection head is left out: stage one only needs the res5 maps, and
stage two owns the heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torchvision.ops import roi_align

SlowSampling = Literal["linspace", "stride"]
NonlocalInstantiation = Literal["dot_product", "softmax"]
# Block indices after which a non-local block runs: res2..res5, each (slow, fast).
NonlocalLocation = tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]

# Temporal kernel of the first (Tx1x1) conv of the bottlenecks in res2..res5, per pathway (PySlowFast
# _TEMPORAL_KERNEL_BASIS["slowfast"]): the slow pathway is temporally convolved only in res4/res5.
_SLOW_TEMPORAL_KERNELS = (1, 1, 3, 3)
_FAST_TEMPORAL_KERNELS = (3, 3, 3, 3)
_SLOW_STEM_TEMPORAL_KERNEL = 1
_FAST_STEM_TEMPORAL_KERNEL = 5
_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class SlowFastConfig:
    """The SlowFast hyper-parameters that change the network, named as in the paper.

    Defaults are PySlowFast's SLOWFAST_8x8_R50 / AVA SLOWFAST_32x2_R50: fusion kernel 7 (the 4x16 and R101
    configs use 5), dilated res5 at stride 16, zero-initialised final BN of each bottleneck (``ZERO_INIT_FINAL_BN:
    True`` in every SlowFast config, although the defaults.py default is False). ``temporal_kernel_blocks`` is
    PySlowFast's NUM_BLOCK_TEMP_KERNEL: only the first k blocks of a stage get their temporal kernel, the rest 1
    (None = all; the R101 "50_50" models use (3, 4, 6, 3)).

    ``res5_stride`` None keeps PySlowFast's pairing (stride 2 when ``res5_dilation`` is 1, else 1); mmaction2's AVA
    configs need ``res5_stride=1, res5_dilation=1`` (stride 16, undilated). ``lateral_norm=False`` builds conv-only
    fast->slow laterals (no BN, no ReLU), as mmaction2's default ``lateral_norm=False`` and ACAR's default
    ``fuse_only_conv=True``.

    Non-local blocks follow PySlowFast's NONLOCAL section: ``nonlocal_location`` (LOCATION) lists, for res2..res5 and
    (slow, fast), the blocks after which one runs (the AVA R101 "50_50" models: ``((), ()), ((), ()), ((6, 13, 20),
    ()), ((), ())``); ``nonlocal_group`` (GROUP, None = 1) splits time into that many independent chunks;
    ``nonlocal_pool`` (POOL, one size for every block, as in all PySlowFast configs: (1, 2, 2) default, (2, 2, 2)
    in the AVA R101 models) max-pools phi/g's input; ``nonlocal_instantiation`` is INSTANTIATION.
    """

    depth_layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    alpha: int = 4
    beta_inv: int = 8
    fusion_channel_ratio: int = 2
    fusion_kernel: int = 7
    res5_dilation: int = 2
    zero_init_final_bn: bool = True
    slow_sampling: SlowSampling = "linspace"
    temporal_kernel_blocks: tuple[int, int, int, int] | None = None
    res5_stride: int | None = None
    lateral_norm: bool = True
    nonlocal_location: NonlocalLocation | None = None
    nonlocal_group: tuple[tuple[int, int], ...] | None = None
    nonlocal_pool: tuple[int, int, int] = (1, 2, 2)
    nonlocal_instantiation: NonlocalInstantiation = "dot_product"

    def __post_init__(self) -> None:
        # options may come from JSON/YAML as lists: store tuples so configs compare and hash alike
        for name in ("depth_layers", "temporal_kernel_blocks", "nonlocal_location", "nonlocal_group", "nonlocal_pool"):
            object.__setattr__(self, name, _tuples(getattr(self, name)))
        if len(self.depth_layers) != 4 or min(self.depth_layers) < 1:
            raise ValueError(f"depth_layers needs four stage depths >= 1, got {self.depth_layers}")
        if self.width % self.beta_inv:
            raise ValueError(f"width ({self.width}) must be divisible by beta_inv ({self.beta_inv})")
        if self.res5_dilation not in (1, 2):
            raise ValueError(f"res5_dilation must be 1 (stride 32) or 2 (stride 16), got {self.res5_dilation}")
        if self.res5_stride not in (None, 1, 2):
            raise ValueError(f"res5_stride must be None, 1 or 2, got {self.res5_stride}")
        if self.temporal_kernel_blocks is not None and (
            len(self.temporal_kernel_blocks) != 4
            or any(not 0 <= k <= d for k, d in zip(self.temporal_kernel_blocks, self.depth_layers, strict=True))
        ):
            raise ValueError(f"temporal_kernel_blocks {self.temporal_kernel_blocks} must fit {self.depth_layers}")
        if self.slow_sampling not in ("linspace", "stride"):
            raise ValueError(f"slow_sampling must be 'linspace' or 'stride', got {self.slow_sampling!r}")
        self._check_nonlocal()

    def _check_nonlocal(self) -> None:
        location, group = self.nonlocal_location, self.nonlocal_group
        if location is not None and (
            len(location) != 4
            or any(len(stage) != 2 for stage in location)
            or any(
                len(set(blocks)) != len(blocks) or any(not 0 <= i < depth for i in blocks)
                for stage, depth in zip(location, self.depth_layers, strict=True)
                for blocks in stage
            )
        ):
            raise ValueError(
                f"nonlocal_location {location} must give, for each of the 4 stages, (slow, fast) block indices "
                f"within {self.depth_layers}"
            )
        if group is not None and (len(group) != 4 or any(len(stage) != 2 or min(stage) < 1 for stage in group)):
            raise ValueError(f"nonlocal_group {group} must give 4 stages of (slow, fast) group counts >= 1")
        if len(self.nonlocal_pool) != 3 or min(self.nonlocal_pool) < 1:
            raise ValueError(f"nonlocal_pool must be a (T, H, W) kernel of sizes >= 1, got {self.nonlocal_pool}")
        if self.nonlocal_instantiation not in ("dot_product", "softmax"):
            raise ValueError(
                f"nonlocal_instantiation must be 'dot_product' or 'softmax', got {self.nonlocal_instantiation!r}"
            )

    @classmethod
    def small(cls) -> SlowFastConfig:
        """A tiny CPU config for tests and the synthetic data set: one block per stage, 256 + 32 res5 channels."""
        return cls(depth_layers=(1, 1, 1, 1), width=8)

    @property
    def res5_spatial_stride(self) -> int:
        """Spatial stride of res5's first block: ``res5_stride``, or PySlowFast's pairing with the dilation."""
        if self.res5_stride is not None:
            return self.res5_stride
        return 2 if self.res5_dilation == 1 else 1

    @property
    def stride(self) -> int:
        """Spatial stride of the res5 maps."""
        return 16 if self.res5_spatial_stride == 1 else 32

    def nonlocal_blocks(self, stage: int, pathway: int) -> tuple[int, ...]:
        """Blocks of res``stage`` (2..5) on ``pathway`` followed by a non-local block."""
        return () if self.nonlocal_location is None else self.nonlocal_location[stage - 2][pathway]


def _tuples(value: object) -> object:
    """Lists (from JSON/YAML options) -> tuples, recursively; anything else unchanged."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def slow_indices(num_fast_frames: int, alpha: int, mode: SlowSampling = "linspace") -> torch.Tensor:
    """Which fast frames feed the slow pathway.

    ``linspace`` is PySlowFast's ``pack_pathway_output`` (``linspace(0, T-1, T // alpha).long()``: first and last
    frame included, e.g. 0, 5, 10, 15 for T=16), which its checkpoints were trained with; ``stride`` is
    ``[::alpha]`` (0, 4, 8, 12).
    """
    if num_fast_frames % alpha:
        raise ValueError(f"fast frames ({num_fast_frames}) must be a multiple of alpha ({alpha})")
    if mode == "stride":
        return torch.arange(0, num_fast_frames, alpha)
    return torch.linspace(0, num_fast_frames - 1, num_fast_frames // alpha).long()


def split_pathways(x: torch.Tensor, alpha: int, mode: SlowSampling = "linspace") -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, T_f, H, W] fast input -> (slow input [B, C, T_f/alpha, H, W], fast input)."""
    index = slow_indices(x.shape[2], alpha, mode).to(x.device)
    return x.index_select(2, index), x


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class _Stem(nn.Module):
    """Conv Tx7x7 stride 1x2x2, BN, ReLU, max pool 1x3x3 stride 1x2x2 (PySlowFast ResNetBasicStem)."""

    def __init__(self, in_channels: int, out_channels: int, temporal_kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size=(temporal_kernel, 7, 7),
            stride=(1, 2, 2),
            padding=(temporal_kernel // 2, 3, 3),
            bias=False,
        )
        self.bn = _bn(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool_layer = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_layer(self.relu(self.bn(self.conv(x))))


class _TwoPathwayStem(nn.Module):
    """Holds the two stems under ``s1`` so names read ``s1.pathway{0,1}_stem``."""

    def __init__(self, slow: _Stem, fast: _Stem) -> None:
        super().__init__()
        self.pathway0_stem = slow
        self.pathway1_stem = fast

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pathway0_stem(slow), self.pathway1_stem(fast)


class _FuseFastToSlow(nn.Module):
    """Lateral connection: time-strided conv on the fast map (then BN, ReLU unless conv-only), concatenated on slow."""

    def __init__(self, fast_channels: int, channel_ratio: int, kernel: int, alpha: int, norm: bool = True) -> None:
        super().__init__()
        self.conv_f2s = nn.Conv3d(
            fast_channels,
            fast_channels * channel_ratio,
            kernel_size=(kernel, 1, 1),
            stride=(alpha, 1, 1),
            padding=(kernel // 2, 0, 0),
            bias=False,
        )
        # conv-only laterals (mmaction2 lateral_norm=False, ACAR fuse_only_conv=True) have neither BN nor ReLU
        self.bn = _bn(fast_channels * channel_ratio) if norm else None
        self.relu = nn.ReLU(inplace=True) if norm else None

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lateral = self.conv_f2s(fast)
        if self.bn is not None and self.relu is not None:
            lateral = self.relu(self.bn(lateral))
        return torch.cat([slow, lateral], dim=1), fast


class _Bottleneck(nn.Module):
    """Tx1x1, 1x3x3 (spatial stride and dilation here, PySlowFast STRIDE_1X1=False), 1x1x1; BN after each."""

    def __init__(
        self, in_channels: int, inner: int, out_channels: int, temporal_kernel: int, stride: int, dilation: int
    ) -> None:
        super().__init__()
        self.a = nn.Conv3d(
            in_channels, inner, kernel_size=(temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0), bias=False
        )
        self.a_bn = _bn(inner)
        self.a_relu = nn.ReLU(inplace=True)
        self.b = nn.Conv3d(
            inner,
            inner,
            kernel_size=(1, 3, 3),
            stride=(1, stride, stride),
            padding=(0, dilation, dilation),
            dilation=(1, dilation, dilation),
            bias=False,
        )
        self.b_bn = _bn(inner)
        self.b_relu = nn.ReLU(inplace=True)
        self.c = nn.Conv3d(inner, out_channels, kernel_size=1, bias=False)
        self.c_bn = _bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a_relu(self.a_bn(self.a(x)))
        x = self.b_relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class _ResBlock(nn.Module):
    """Bottleneck plus shortcut; the shortcut is a strided 1x1x1 projection + BN when shape changes."""

    def __init__(
        self, in_channels: int, inner: int, out_channels: int, temporal_kernel: int, stride: int, dilation: int
    ) -> None:
        super().__init__()
        self.branch1: nn.Conv3d | None
        self.branch1_bn: nn.BatchNorm3d | None
        if in_channels != out_channels or stride != 1:
            self.branch1 = nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=(1, stride, stride), bias=False)
            self.branch1_bn = _bn(out_channels)
        else:
            self.branch1 = None
            self.branch1_bn = None
        self.branch2 = _Bottleneck(in_channels, inner, out_channels, temporal_kernel, stride, dilation)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.branch2(x)
        shortcut = x if self.branch1 is None or self.branch1_bn is None else self.branch1_bn(self.branch1(x))
        return self.relu(shortcut + residual)


class _NonLocal(nn.Module):
    """Non-local block (Wang et al., 2018) as PySlowFast's ``Nonlocal``: ``x + BN(conv_out(A g))``.

    theta/phi/g are biased 1x1x1 convs to ``dim // 2`` channels; phi and g read the input max-pooled by ``pool`` (no
    ``pool`` module when it is all ones, as in PySlowFast). The affinity ``A = theta^T phi`` is divided by the number
    of pooled positions (``dot_product``) or scaled by ``(dim // 2) ** -0.5`` and softmaxed (``softmax``).
    """

    def __init__(self, dim: int, pool: tuple[int, int, int], instantiation: NonlocalInstantiation) -> None:
        super().__init__()
        inner = dim // 2
        self.instantiation = instantiation
        self.conv_theta = nn.Conv3d(dim, inner, kernel_size=1)
        self.conv_phi = nn.Conv3d(dim, inner, kernel_size=1)
        self.conv_g = nn.Conv3d(dim, inner, kernel_size=1)
        self.conv_out = nn.Conv3d(inner, dim, kernel_size=1)
        self.bn = _bn(dim)
        self.pool = nn.MaxPool3d(kernel_size=pool, stride=pool) if max(pool) > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, h, w = x.shape
        theta = self.conv_theta(x).flatten(2)  # [N, C', THW]
        pooled = x if self.pool is None else self.pool(x)
        phi = self.conv_phi(pooled).flatten(2)  # [N, C', P]
        g = self.conv_g(pooled).flatten(2)
        affinity = torch.einsum("ncq,ncp->nqp", theta, phi)
        if self.instantiation == "softmax":
            affinity = torch.softmax(affinity * theta.shape[1] ** -0.5, dim=2)
        else:
            affinity = affinity / affinity.shape[2]
        attended = torch.einsum("nqp,ncp->ncq", affinity, g).reshape(n, theta.shape[1], t, h, w)
        return x + self.bn(self.conv_out(attended))


def _fold_time(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B * groups, C, T / groups, H, W]: consecutive time chunks become batch entries."""
    b, c, t, h, w = x.shape
    if t % groups:
        raise ValueError(f"non-local group {groups} does not divide the {t} frames at this stage")
    return x.transpose(1, 2).reshape(b * groups, t // groups, c, h, w).transpose(1, 2)


def _unfold_time(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of ``_fold_time``."""
    bg, c, tg, h, w = x.shape
    return x.transpose(1, 2).reshape(bg // groups, tg * groups, c, h, w).transpose(1, 2)


class _ResStage(nn.Module):
    """One ResNet stage for both pathways: ``pathway{p}_res{i}``, each maybe followed by ``pathway{p}_nonlocal{i}``."""

    def __init__(
        self,
        in_channels: tuple[int, int],
        inner: tuple[int, int],
        out_channels: tuple[int, int],
        temporal_kernels: tuple[int, int],
        num_blocks: int,
        stride: int,
        dilation: int,
        temporal_kernel_blocks: int,
        nonlocal_blocks: tuple[tuple[int, ...], tuple[int, ...]] = ((), ()),
        nonlocal_group: tuple[int, int] = (1, 1),
        nonlocal_pool: tuple[int, int, int] = (1, 2, 2),
        nonlocal_instantiation: NonlocalInstantiation = "dot_product",
    ) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        self.nonlocal_group = nonlocal_group
        for pathway in range(2):
            for i in range(num_blocks):
                block = _ResBlock(
                    in_channels[pathway] if i == 0 else out_channels[pathway],
                    inner[pathway],
                    out_channels[pathway],
                    temporal_kernels[pathway] if i < temporal_kernel_blocks else 1,
                    stride if i == 0 else 1,
                    dilation,
                )
                self.add_module(f"pathway{pathway}_res{i}", block)
                if i in nonlocal_blocks[pathway]:  # registered right after its block, as PySlowFast does
                    nonlocal_block = _NonLocal(out_channels[pathway], nonlocal_pool, nonlocal_instantiation)
                    self.add_module(f"pathway{pathway}_nonlocal{i}", nonlocal_block)

    def _run(self, pathway: int, x: torch.Tensor) -> torch.Tensor:
        groups = self.nonlocal_group[pathway]
        for i in range(self.num_blocks):
            x = getattr(self, f"pathway{pathway}_res{i}")(x)
            nonlocal_block = getattr(self, f"pathway{pathway}_nonlocal{i}", None)
            if nonlocal_block is not None:
                if groups > 1:
                    x = _unfold_time(nonlocal_block(_fold_time(x, groups)), groups)
                else:
                    x = nonlocal_block(x)
        return x

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(0, slow), self._run(1, fast)


class SlowFast(nn.Module):
    """SlowFast ResNet backbone returning the res5 maps of both pathways (no head)."""

    # registered with add_module under PySlowFast's names (s2..s5, s2_fuse..s4_fuse), so declared for the checker
    s2: nn.Module
    s3: nn.Module
    s4: nn.Module
    s5: nn.Module
    s2_fuse: nn.Module
    s3_fuse: nn.Module
    s4_fuse: nn.Module

    def __init__(self, config: SlowFastConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SlowFastConfig()
        width, beta_inv, ratio = config.width, config.beta_inv, config.fusion_channel_ratio

        def fuse(fast_channels: int) -> _FuseFastToSlow:
            return _FuseFastToSlow(fast_channels, ratio, config.fusion_kernel, config.alpha, config.lateral_norm)

        self.s1 = _TwoPathwayStem(
            _Stem(3, width, _SLOW_STEM_TEMPORAL_KERNEL), _Stem(3, width // beta_inv, _FAST_STEM_TEMPORAL_KERNEL)
        )
        self.s1_fuse = fuse(width // beta_inv)
        slow_in, fast_in = width + width // beta_inv * ratio, width // beta_inv
        strides = (1, 2, 2, config.res5_spatial_stride)
        dilations = (1, 1, 1, config.res5_dilation)
        tk_blocks = config.temporal_kernel_blocks or config.depth_layers
        for stage in range(4):
            inner = width * 2**stage
            slow_out = 4 * inner
            stage_module = _ResStage(
                in_channels=(slow_in, fast_in),
                inner=(inner, inner // beta_inv),
                out_channels=(slow_out, slow_out // beta_inv),
                temporal_kernels=(_SLOW_TEMPORAL_KERNELS[stage], _FAST_TEMPORAL_KERNELS[stage]),
                num_blocks=config.depth_layers[stage],
                stride=strides[stage],
                dilation=dilations[stage],
                temporal_kernel_blocks=tk_blocks[stage],
                nonlocal_blocks=(config.nonlocal_blocks(stage + 2, 0), config.nonlocal_blocks(stage + 2, 1)),
                nonlocal_group=config.nonlocal_group[stage] if config.nonlocal_group else (1, 1),
                nonlocal_pool=config.nonlocal_pool,
                nonlocal_instantiation=config.nonlocal_instantiation,
            )
            self.add_module(f"s{stage + 2}", stage_module)
            if stage < 3:
                self.add_module(f"s{stage + 2}_fuse", fuse(slow_out // beta_inv))
            if stage == 0:
                # PySlowFast's pathway pools after res2 are 1x1x1 for SlowFast (no-ops); kept for the layout.
                self.pathway0_pool = nn.Identity()
                self.pathway1_pool = nn.Identity()
            slow_in = slow_out + slow_out // beta_inv * ratio
            fast_in = slow_out // beta_inv
        self._slow_channels = 32 * width
        self._fast_channels = 32 * width // beta_inv
        self._init_weights()

    @property
    def slow_channels(self) -> int:
        return self._slow_channels

    @property
    def fast_channels(self) -> int:
        return self._fast_channels

    def _init_weights(self) -> None:
        """PySlowFast's init: MSRA (kaiming normal, fan_out) convs with zero bias, BN gamma 1 / beta 0; the final BN
        of each bottleneck and of each non-local block gamma 0, so both start as identities around the shortcut."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.config.zero_init_final_bn:
            for module in self.modules():
                if isinstance(module, _Bottleneck):
                    nn.init.zeros_(module.c_bn.weight)
                elif isinstance(module, _NonLocal):
                    nn.init.zeros_(module.bn.weight)

    def forward(self, fast_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, T_f, H, W] -> (slow [B, 32w, T_f/alpha, H/s, W/s], fast [B, 32w/beta_inv, T_f, H/s, W/s])."""
        if fast_input.ndim != 5:
            raise ValueError(f"expected [B, C, T, H, W], got {tuple(fast_input.shape)}")
        slow, fast = split_pathways(fast_input, self.config.alpha, self.config.slow_sampling)
        slow, fast = self.s1(slow, fast)
        slow, fast = self.s1_fuse(slow, fast)
        slow, fast = self.s2(slow, fast)
        slow, fast = self.s2_fuse(slow, fast)
        slow, fast = self.pathway0_pool(slow), self.pathway1_pool(fast)
        slow, fast = self.s3(slow, fast)
        slow, fast = self.s3_fuse(slow, fast)
        slow, fast = self.s4(slow, fast)
        slow, fast = self.s4_fuse(slow, fast)
        return self.s5(slow, fast)


def roi_pool_features(
    context: torch.Tensor,
    boxes_xyxy: torch.Tensor,
    batch_index: torch.Tensor,
    spatial_scale: float = 1.0 / 16,
    output_size: int = 7,
) -> torch.Tensor:
    """SlowFast AVA head pooling: RoIAlign (aligned, adaptive sampling) then spatial max -> [N, C].

    ``boxes_xyxy`` are [N, 4] pixel coordinates on the padded input canvas (continuous coordinates, pixel i covers
    [i, i+1)); ``batch_index`` [N] says which clip of ``context`` each box belongs to.
    """
    if boxes_xyxy.ndim != 2 or boxes_xyxy.shape[1] != 4 or batch_index.shape != boxes_xyxy.shape[:1]:
        raise ValueError(f"boxes must be [N, 4] with batch_index [N]: {boxes_xyxy.shape}, {batch_index.shape}")
    rois = torch.cat([batch_index.to(boxes_xyxy.dtype).unsqueeze(1), boxes_xyxy], dim=1).to(context.dtype)
    pooled = roi_align(
        context, rois, output_size=output_size, spatial_scale=spatial_scale, sampling_ratio=0, aligned=True
    )
    return pooled.amax(dim=(2, 3))
