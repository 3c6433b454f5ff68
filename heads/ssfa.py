"""SSFA / TSFA, slow and fast self-attention before RoI pooling (Kim, Kim, Kim: "Spatio-Temporal SlowFast
Network for Action Recognition", POSTECH).

Figure, left to right: a pathway's full map [C, T, H, W] goes through self-attention layers whose query, key
and value projections are 3D convolutions, kernel 7x1x1 on the slow map (``ssfa``: slow actions over time)
and 1x1x1 on the fast map (``tsfa``); every position of every frame attends to every other; a 1x1x1
convolution maps the result back to C channels, added residually (LayerNorm optional). The actor's region is
then pooled (GMP or GAP) and classified. Ablations: GMP vs GAP, depth, width (512 / 2048), LayerNorm; the
defaults are the paper's best row (GAP, 2 layers, 2048, LayerNorm).

The cache has no box positions on the map, so the region cannot be RoI-aligned out of the attended map.
Instead the last layer is evaluated at the actor's region only: its queries are the actor's 7x7 RoIAlign
tokens (this pathway's channels of ``roi_spatial``, which hold the time-averaged map at the box), its
keys/values the full map after the earlier layers; the residual adds to those same tokens, which are then
pooled. Queries restricted to the box are what RoI pooling would have kept of a last full layer, with two
differences: the query projection sees the time-averaged region (a linear layer, not the 7x1x1 convolution),
and the residual stream at the region is the cached one, without the earlier layers' updates there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from cache_spec.views import FAST_FULL, ROI_SPATIAL, SLOW_FULL
from heads._grouping import ClipGroups
from heads.base import Head


class MapSelfAttention(nn.Module):
    """One self-attention layer over all T*H*W positions of a clip's map, with 3D-convolution projections."""

    def __init__(self, channels: int, dim: int, temporal_kernel: int, layer_norm: bool):
        super().__init__()
        kernel, pad = (temporal_kernel, 1, 1), (temporal_kernel // 2, 0, 0)
        self.dim = dim
        self.conv_q = nn.Conv3d(channels, dim, kernel, padding=pad, bias=False)
        self.conv_k = nn.Conv3d(channels, dim, kernel, padding=pad, bias=False)
        self.conv_v = nn.Conv3d(channels, dim, kernel, padding=pad, bias=False)
        self.conv_out = nn.Conv3d(dim, channels, 1)
        self.norm = nn.LayerNorm(channels) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, C, T, H, W] -> (updated x, attention [B, T*H*W, T*H*W])."""
        query = self.conv_q(x).flatten(2).transpose(1, 2)  # [B, N, dim]
        key = self.conv_k(x).flatten(2)  # [B, dim, N]
        value = self.conv_v(x).flatten(2).transpose(1, 2)
        attention = torch.softmax(query @ key / self.dim**0.5, dim=-1)
        update = self.conv_out((attention @ value).transpose(1, 2).reshape(x.shape[0], self.dim, *x.shape[2:]))
        return self.norm((x + update).movedim(1, -1)).movedim(-1, 1), attention


class RegionReadout(nn.Module):
    """The last self-attention layer evaluated at the actor's RoI tokens only (queries), keys over the map."""

    def __init__(self, channels: int, dim: int, temporal_kernel: int, layer_norm: bool):
        super().__init__()
        kernel, pad = (temporal_kernel, 1, 1), (temporal_kernel // 2, 0, 0)
        self.dim = dim
        self.proj_q = nn.Linear(channels, dim, bias=False)
        self.conv_k = nn.Conv3d(channels, dim, kernel, padding=pad, bias=False)
        self.conv_v = nn.Conv3d(channels, dim, kernel, padding=pad, bias=False)
        self.proj_out = nn.Linear(dim, channels)
        self.norm = nn.LayerNorm(channels) if layer_norm else nn.Identity()

    def forward(
        self, tokens: torch.Tensor, maps: torch.Tensor, groups: ClipGroups
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` [n_boxes, R, C], ``maps`` [n_groups, C, T, H, W] -> ([n_boxes, R, C], [n_boxes, R, N])."""
        n_tokens = tokens.shape[1]
        query = self.proj_q(groups.pad(tokens).flatten(1, 2))  # [G, A * R, dim]: a clip's actors share keys
        key = self.conv_k(maps).flatten(2)  # [G, dim, N]
        value = self.conv_v(maps).flatten(2).transpose(1, 2)
        attention = torch.softmax(query @ key / self.dim**0.5, dim=-1)
        update = groups.unpad(self.proj_out(attention @ value).unflatten(1, (groups.max_actors, n_tokens)))
        weights = groups.unpad(attention.unflatten(1, (groups.max_actors, n_tokens)))
        return self.norm(tokens + update), weights


class PathwaySelfAttentionHead(Head):
    """Self-attention over one pathway's full map, read out at the actor's region, pooled and classified.

    ``last_attention``: ``map.{i}`` -> [n_clips_with_boxes, N, N] for the full-map layers (N = T*H*W; memory
    grows as N^2 per clip), ``readout`` -> [n_boxes, 49, N].
    """

    full_view: ClassVar[str]
    temporal_kernel: ClassVar[int]

    def __init__(
        self,
        channels: int,
        roi_offset: int,
        num_classes: int,
        dim: int = 2048,
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
        self.channels, self.roi_offset, self.pool = channels, roi_offset, pool
        k = self.temporal_kernel
        self.layers = nn.ModuleList(MapSelfAttention(channels, dim, k, layer_norm) for _ in range(depth - 1))
        self.readout = RegionReadout(channels, dim, k, layer_norm)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)
        self.last_attention: dict[str, torch.Tensor] = {}

    def forward(self, views: Mapping[str, torch.Tensor], box_clip: torch.Tensor) -> torch.Tensor:
        groups = ClipGroups.from_box_clip(box_clip)
        maps = views[self.full_view].float()[groups.clip]  # [G, C, T, H, W]
        attention = {}
        for i, layer in enumerate(self.layers):
            maps, weights = layer(maps)
            attention[f"map.{i}"] = weights.detach()
        roi = views[ROI_SPATIAL].float()[:, self.roi_offset : self.roi_offset + self.channels]
        tokens, weights = self.readout(roi.flatten(2).transpose(1, 2), maps, groups)
        attention["readout"] = weights.detach()
        self.last_attention = attention
        pooled = tokens.mean(dim=1) if self.pool == "avg" else tokens.amax(dim=1)
        return self.classifier(self.dropout(pooled))


class SSFAHead(PathwaySelfAttentionHead):
    """Slow self-attention: ``slow_full`` with 7x1x1 projections; the slow channels of ``roi_spatial``."""

    views = (ROI_SPATIAL, SLOW_FULL)
    full_view = SLOW_FULL
    temporal_kernel = 7

    @classmethod
    def from_dims(cls, dims: Mapping[str, int], num_classes: int, **options: Any) -> SSFAHead:
        return cls(dims["C_s"], 0, num_classes, **options)


class TSFAHead(PathwaySelfAttentionHead):
    """Fast self-attention: ``fast_full`` with 1x1x1 projections; the fast channels of ``roi_spatial``."""

    views = (ROI_SPATIAL, FAST_FULL)
    full_view = FAST_FULL
    temporal_kernel = 1

    @classmethod
    def from_dims(cls, dims: Mapping[str, int], num_classes: int, **options: Any) -> TSFAHead:
        return cls(dims["C_f"], dims["C_s"], num_classes, **options)
