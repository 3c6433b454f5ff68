"""PCCA, person-context cross attention (Ning et al., DeeperAction/MultiSports 2021).

Figure, left to right: the person vector (``roi_pooled``) is the query; its context is the 9x9 RoIAlign over
the person box enlarged 2x (``context_ext``), flattened to 81 key/value tokens. Both are projected to the
width (1024). D = 3 post-LN cross-attention layers with 8 heads follow (eq. 2-3):
``X = LN(MultiHead(Q, C, C) + Q)``, ``Q = LN(FFN(X) + X)``; the context tokens are the same at every layer
(they are not updated). A linear classifier reads the final query.

The paper does not give the feed-forward width, dropout or any position embedding of the context tokens:
``mlp_ratio`` 4 and dropout 0.1 follow the Transformer; ``position_embedding`` (off by default, as in the
paper's text) adds a learned embedding per context token so attention can tell where a token lies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cache_spec.views import CONTEXT_EXT, ROI_POOLED
from heads.base import Head


class CrossAttentionLayer(nn.Module):
    """One post-LN Transformer layer whose keys/values may differ from its queries (PCCA eq. 2-3).

    With ``context`` = the queries it is an ordinary encoder layer (self-attention), which STCA and the
    S-only/T-only heads reuse. Attention weights are returned per head, before any dropout (dropout is applied
    to the attended output instead), so each row sums to 1 over the valid keys.
    """

    def __init__(self, width: int, heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.1):
        super().__init__()
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, int(width * mlp_ratio)),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(int(width * mlp_ratio), width),
        )
        self.norm2 = nn.LayerNorm(width)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(
        self, query: torch.Tensor, context: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``query`` [B, L, d], ``context`` [B, S, d], mask [B, S] True on padding -> ([B, L, d], [B, heads, L, S])."""
        attended, weights = self.attention(
            query,
            context,
            context,
            key_padding_mask=key_padding_mask,
            need_weights=True,
            average_attn_weights=False,
        )
        x = self.norm1(query + self.dropout1(attended))
        return self.norm2(x + self.dropout2(self.ffn(x))), weights


class PCCAHead(Head):
    """Person-context cross attention: the actor vector attends to the 81 tokens of its enlarged box.

    ``last_attention``: ``layers.{i}`` -> [n_boxes, heads, 81].
    """

    views = (ROI_POOLED, CONTEXT_EXT)

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 1024,
        heads: int = 8,
        depth: int = 3,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        classifier_dropout: float = 0.5,
        position_embedding: bool = False,
        context_tokens: int = 81,
    ):
        super().__init__()
        self.query_proj = nn.Linear(in_channels, width)
        self.context_proj = nn.Linear(in_channels, width)
        self.position = nn.Parameter(torch.randn(1, context_tokens, width) * 0.02) if position_embedding else None
        self.layers = nn.ModuleList(CrossAttentionLayer(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(width, num_classes)
        self.last_attention: dict[str, torch.Tensor] = {}

    @classmethod
    def from_dims(cls, dims: Mapping[str, int], num_classes: int, **options: Any) -> PCCAHead:
        return cls(dims["C"], num_classes, **options)

    def forward(self, views: Mapping[str, torch.Tensor], box_clip: torch.Tensor) -> torch.Tensor:
        query = self.query_proj(views[ROI_POOLED].float())[:, None, :]  # [n, 1, d]
        context = self.context_proj(views[CONTEXT_EXT].float().flatten(2).transpose(1, 2))  # [n, 81, d]
        if self.position is not None:
            context = context + self.position
        attention = {}
        for i, layer in enumerate(self.layers):
            query, weights = layer(query, context)
            attention[f"layers.{i}"] = weights[:, :, 0, :].detach()
        self.last_attention = attention
        return self.classifier(self.dropout(query[:, 0]))
