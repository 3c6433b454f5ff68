"""STCA, spatio-temporal context cross attention (Calderó, Varas, Bou-Balust: "Spatio-Temporal Context for
Action Detection").

Figure, left to right: the actor is its 7x7 RoIAlign *without* spatial pooling (``roi_spatial``): 49 tokens.
Block 1 cross-attends from them to the slow map pooled over time (``slow_tpool``, H*W tokens); block 2
cross-attends from block 1's output to the fast map pooled over space (``fast_spool``, T_f tokens). Each block
is multi-head attention + feed-forward (post-LN, as in the Transformer). A global max pool over the 49 tokens
and two linear layers give the logits.

Ablations (the paper's Table 1): ``actor="pooled"`` max-pools the 49 tokens to one before attention (what
earlier heads do), ``context="spatial"`` keeps block 1 only, whose keys/values are then, as in the paper, both
pathways pooled over time and concatenated: ``context_map`` (that variant's ``views`` name it instead of
``slow_tpool`` and ``fast_spool``).

Padding: the map tokens beyond a clip's valid extent (``clip_extent``) are masked out of the keys, so the
padding of the canvas never reaches an actor. ``fast_spool`` is pooled over the padded map at extraction; the
head cannot undo that.

The paper gives no widths: ``width`` 512, ``num_heads`` 8, ``mlp_ratio`` 4 and ``attn_dropout`` 0.1 are
Transformer defaults.
Learned position embeddings are added to the actor tokens (7x7), the slow tokens (H x W) and the fast tokens
(T_f): without them every step would be per-token and the max pool would make the head blind to where inside
the box a feature lies, which is the point of spatial actor tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cache_spec.views import CLIP_EXTENT, CONTEXT_MAP, FAST_SPOOL, ROI_SPATIAL, SLOW_TPOOL
from heads._extent import clip_extent, extent_mask
from heads._grouping import ClipGroups
from heads._layers import Classifier, CrossAttentionLayer, learned_positions
from heads.base import Head


class STCAHead(Head):
    """Spatial actor tokens enriched by a spatial (slow) then a temporal (fast) cross-attention block.

    Cross attention does not mix actors, so the actor tokens of a clip share one query sequence per clip and
    the clip's keys/values are projected once (the same result as one sequence per actor, with less work).
    ``last_attention``: ``spatial`` -> [n_boxes, num_heads, n_actor_tokens, H*W] (0 on padded cells),
    ``temporal`` -> [..., T_f].

    Args:
        in_channels: channels of ``roi_spatial`` (and of ``context_map``), the store's ``C`` (SlowFast R50: 2304).
        slow_channels: channels of ``slow_tpool``, the store's ``C_s`` (SlowFast R50: 2048).
        fast_channels: channels of ``fast_spool``, the store's ``C_f`` (SlowFast R50: 256).
        map_hw: the map's H x W, the slow tokens' positions.
        fast_frames: the fast map's T_f, the fast tokens' positions.
        num_classes: number of action classes (80 for AVA).
        width: the tokens' width in both blocks and the hidden classifier layer's (not given: 512).
        num_heads: attention heads per block (not given: 8).
        mlp_ratio: the feed-forward's hidden width as a multiple of ``width`` (not given; Transformer: 4).
        attn_dropout: dropout inside each block, on attention and feed-forward outputs (Transformer: 0.1).
        dropout: the classifier's dropout before the last linear layer (not given: 0.5).
        context: ``"spatiotemporal"`` (both blocks, the paper's) or ``"spatial"`` (block 1 on ``context_map``).
        actor: ``"spatial"`` (49 tokens, the paper's) or ``"pooled"`` (one max-pooled token).
        roi_size: the side of ``roi_spatial`` (7: 7 x 7 = 49 actor tokens).
    """

    views: tuple[str, ...] = (ROI_SPATIAL, SLOW_TPOOL, FAST_SPOOL, CLIP_EXTENT)

    def __init__(
        self,
        in_channels: int,
        slow_channels: int,
        fast_channels: int,
        map_hw: tuple[int, int],
        fast_frames: int,
        num_classes: int,
        width: int = 512,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        attn_dropout: float = 0.1,
        dropout: float = 0.5,
        context: Literal["spatiotemporal", "spatial"] = "spatiotemporal",
        actor: Literal["spatial", "pooled"] = "spatial",
        roi_size: int = 7,
    ):
        super().__init__()
        if context not in ("spatiotemporal", "spatial"):
            raise ValueError(f"context must be 'spatiotemporal' or 'spatial', got {context!r}")
        if actor not in ("spatial", "pooled"):
            raise ValueError(f"actor must be 'spatial' or 'pooled', got {actor!r}")
        self.context, self.actor = context, actor
        # the spatial block's keys: the slow map pooled over time, or both pathways (context_map) when spatial-only
        self.spatial_view = SLOW_TPOOL if context == "spatiotemporal" else CONTEXT_MAP
        if context == "spatial":
            self.views = (ROI_SPATIAL, CONTEXT_MAP, CLIP_EXTENT)
        self.actor_proj = nn.Linear(in_channels, width)
        self.actor_position = learned_positions(roi_size * roi_size, width) if actor == "spatial" else None
        self.slow_proj = nn.Linear(slow_channels if context == "spatiotemporal" else in_channels, width)
        self.slow_position = learned_positions(map_hw[0] * map_hw[1], width)
        self.spatial_block = CrossAttentionLayer(width, num_heads, mlp_ratio, attn_dropout)
        if context == "spatiotemporal":
            self.fast_proj = nn.Linear(fast_channels, width)
            self.fast_position = learned_positions(fast_frames, width)
            self.temporal_block = CrossAttentionLayer(width, num_heads, mlp_ratio, attn_dropout)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = Classifier(width, num_classes, dropout)
        self.last_attention: dict[str, torch.Tensor] = {}

    @classmethod
    def from_dims(cls, dims: Mapping[str, int], num_classes: int, **options: Any) -> STCAHead:
        return cls(dims["C"], dims["C_s"], dims["C_f"], (dims["H"], dims["W"]), dims["T_f"], num_classes, **options)

    def forward(self, views: Mapping[str, torch.Tensor], box_clip: torch.Tensor) -> torch.Tensor:
        roi = views[ROI_SPATIAL].float()  # [n, C, 7, 7]
        if self.actor == "pooled":
            tokens = self.actor_proj(roi.amax(dim=(2, 3)))[:, None, :]  # [n, 1, d]
        else:
            tokens = self.actor_proj(roi.flatten(2).transpose(1, 2)) + self.actor_position  # [n, 49, d]
        groups = ClipGroups.from_box_clip(box_clip)
        n_tokens = tokens.shape[1]
        queries = groups.pad(tokens).flatten(1, 2)  # [G, A * n_tokens, d]
        spatial_map = views[self.spatial_view].float()  # [n_clips, C_s or C, H, W]
        extent = clip_extent(views, len(spatial_map), *spatial_map.shape[-2:]).to(spatial_map.device)
        padded = ~extent_mask(extent[groups.clip], *spatial_map.shape[-2:]).flatten(1)  # [G, H*W], True on padding
        keys = self.slow_proj(spatial_map[groups.clip].flatten(2).transpose(1, 2)) + self.slow_position
        queries, spatial = self.spatial_block(queries, keys, key_padding_mask=padded)
        attention = {"spatial": spatial}
        if self.context == "spatiotemporal":
            fast = views[FAST_SPOOL].float()[groups.clip].transpose(1, 2)  # [G, T_f, C_f]
            queries, attention["temporal"] = self.temporal_block(queries, self.fast_proj(fast) + self.fast_position)
        self.last_attention = {
            name: groups.unpad(w.unflatten(2, (groups.max_actors, n_tokens)).transpose(1, 2)).detach()
            for name, w in attention.items()
        }
        actor = groups.unpad(queries.unflatten(1, (groups.max_actors, n_tokens))).amax(dim=1)  # GMP over tokens
        return self.fc2(F.relu(self.fc1(actor)))
