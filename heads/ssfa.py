"""SSFA / TSFA, slow and fast self-attention before RoI pooling (Kim, Kim, Kim: "Spatio-Temporal SlowFast
Network for Action Recognition", POSTECH).

Figure, left to right: a pathway's full map [C, T, H, W] goes through self-attention layers whose query, key
and value projections are 3D convolutions, kernel 7x1x1 on the slow map (``ssfa``: slow actions over time)
and 1x1x1 on the fast map (``tsfa``); every position of every frame attends to every other; a 1x1x1
convolution maps the result back to C channels, added residually (LayerNorm optional). Each actor's box
(``box_on_map``) is then RoI-pooled from the attended map of its clip as the conventional head the paper
builds on pools it: an average over the whole temporal axis, RoIAlign 7x7 (``spatial_scale=1``,
``aligned=True``, adaptive sampling: the coordinates extraction pools with), then GMP or GAP over the 7x7
cells and a linear classifier. Ablations: GMP vs GAP (``pool``), ``depth``, ``width`` (512 / 2048), LayerNorm
(``layer_norm``); the defaults are the paper's best row (GAP, 2 layers, 2048, LayerNorm).

Padding: positions beyond a clip's valid extent (``clip_extent``) are masked out of the keys, and RoIAlign
reads the attended map with the cells beyond the extent replaced by the nearest valid one (what RoIAlign
reads of a map cropped to the extent), so a box's output is that of the cropped map whatever the padding
holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
from torch import nn
from torchvision.ops import roi_align

from cache_spec.views import BOX_ON_MAP, CLIP_EXTENT, FAST_FULL, SLOW_FULL
from heads._extent import clip_extent, extent_mask, replicate_beyond
from heads._grouping import ClipGroups, masked_softmax
from heads._layers import Classifier
from heads.base import Head

ROI_SIZE = 7


class MapSelfAttention(nn.Module):
    """One self-attention layer over all T*H*W positions of a clip's map, with 3D-convolution projections."""

    def __init__(self, channels: int, width: int, temporal_kernel: int, layer_norm: bool):
        super().__init__()
        kernel, pad = (temporal_kernel, 1, 1), (temporal_kernel // 2, 0, 0)
        self.width = width
        self.conv_q = nn.Conv3d(channels, width, kernel, padding=pad, bias=False)
        self.conv_k = nn.Conv3d(channels, width, kernel, padding=pad, bias=False)
        self.conv_v = nn.Conv3d(channels, width, kernel, padding=pad, bias=False)
        self.conv_out = nn.Conv3d(width, channels, 1)
        self.norm = nn.LayerNorm(channels) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, C, T, H, W], ``key_valid`` [B, T*H*W] -> (updated x, attention [B, T*H*W, T*H*W]).

        The projections are 1x1 in space, so a padded cell reaches a valid one only as a key, which the mask
        removes.
        """
        query = self.conv_q(x).flatten(2).transpose(1, 2)  # [B, N, width]
        key = self.conv_k(x).flatten(2)  # [B, width, N]
        value = self.conv_v(x).flatten(2).transpose(1, 2)
        attention = masked_softmax(query @ key / self.width**0.5, key_valid[:, None, :])
        update = self.conv_out((attention @ value).transpose(1, 2).reshape(x.shape[0], self.width, *x.shape[2:]))
        return self.norm((x + update).movedim(1, -1)).movedim(-1, 1), attention


class PathwaySelfAttentionHead(Head):
    """Self-attention over one pathway's full map, then each box RoI-aligned from it, pooled and classified.

    ``last_attention``: ``map.{i}`` -> [n_clips_with_boxes, N, N] (N = T*H*W; keys beyond the clip's extent at
    0; memory grows as N^2 per clip).

    Args:
        in_channels: channels of the pathway's full map, the store's ``C_s`` or ``C_f`` (SlowFast R50: 2048 / 256).
        num_classes: number of action classes (80 for AVA).
        width: the query/key/value width of each self-attention layer (paper: 2048; ablation 512).
        depth: self-attention layers (paper: 2; ablation 1).
        layer_norm: LayerNorm after each layer's residual (paper: yes).
        pool: ``"avg"`` (GAP, paper) or ``"max"`` (GMP) over the 7x7 RoI cells.
        dropout: the classifier's dropout before the linear layer (not given: 0.5, as the SlowFast baseline).
    """

    full_view: ClassVar[str]
    temporal_kernel: ClassVar[int]

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 2048,
        depth: int = 2,
        layer_norm: bool = True,
        pool: Literal["avg", "max"] = "avg",
        dropout: float = 0.5,
    ):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' (GAP) or 'max' (GMP), got {pool!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.channels, self.pool = in_channels, pool
        k = self.temporal_kernel
        self.layers = nn.ModuleList(MapSelfAttention(in_channels, width, k, layer_norm) for _ in range(depth))
        self.classifier = Classifier(in_channels, num_classes, dropout)
        self.last_attention: dict[str, torch.Tensor] = {}

    def forward(self, views: Mapping[str, torch.Tensor], box_clip: torch.Tensor) -> torch.Tensor:
        groups = ClipGroups.from_box_clip(box_clip)
        full = views[self.full_view]
        height, width = full.shape[-2:]
        maps = full.float()[groups.clip]  # [G, C, T, H, W]: only clips with boxes are attended
        extent = clip_extent(views, len(full), height, width).to(maps.device)[groups.clip]
        key_valid = extent_mask(extent, height, width)[:, None].expand(-1, maps.shape[2], -1, -1).flatten(1)
        attention = {}
        for i, layer in enumerate(self.layers):
            maps, weights = layer(maps, key_valid)
            attention[f"map.{i}"] = weights.detach()
        self.last_attention = attention
        # RoIAlign is linear: pooling the time-averaged map equals averaging the per-frame RoIs over time
        pooled_map = replicate_beyond(maps.mean(dim=2), extent)  # [G, C, H, W]
        boxes = views[BOX_ON_MAP].float().to(maps.device)
        rois = torch.cat([groups.group[:, None].to(boxes.dtype), boxes], dim=1)  # box i reads its clip's map
        roi = roi_align(pooled_map, rois, ROI_SIZE, spatial_scale=1.0, sampling_ratio=0, aligned=True)
        pooled = roi.mean(dim=(2, 3)) if self.pool == "avg" else roi.amax(dim=(2, 3))
        return self.classifier(pooled)


class SSFAHead(PathwaySelfAttentionHead):
    """Slow self-attention: ``slow_full`` with 7x1x1 projections.

    Args: those of :class:`PathwaySelfAttentionHead`; ``in_channels`` is the store's ``C_s``.
    """

    views = (SLOW_FULL, BOX_ON_MAP, CLIP_EXTENT)
    in_channels_dim = "C_s"
    full_view = SLOW_FULL
    temporal_kernel = 7


class TSFAHead(PathwaySelfAttentionHead):
    """Fast self-attention: ``fast_full`` with 1x1x1 projections.

    Args: those of :class:`PathwaySelfAttentionHead`; ``in_channels`` is the store's ``C_f``.
    """

    views = (FAST_FULL, BOX_ON_MAP, CLIP_EXTENT)
    in_channels_dim = "C_f"
    full_view = FAST_FULL
    temporal_kernel = 1
