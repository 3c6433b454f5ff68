"""The layers several heads share: the post-LN cross-attention Transformer layer, learned token positions, the
actor-context 1x1 convolution, and the classifier (dropout + linear) every head ends with.

Each keeps the parameter names the heads had when they wrote it themselves (``attention``, ``norm1``, ``ffn.0``,
``classifier.weight``, ...), so saved head checkpoints and ACAR-Net's load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Classifier(nn.Linear):
    """Dropout, then a linear layer: the last step of every head.

    A subclass of ``nn.Linear`` rather than a container, so its parameters sit directly under the head's
    attribute (``classifier.weight``, ACAR's ``fc2.weight``) as a bare ``nn.Linear``'s would, and it is built
    with the same random draws.

    Args:
        in_features: width of the vector it classifies.
        num_classes: number of action classes (80 for AVA).
        dropout: dropout on the vector before the linear layer.
        bias: whether the linear layer has a bias (ACAR-Net's has none).
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.5, bias: bool = True):
        super().__init__(in_features, num_classes, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.dropout(x))


class CrossAttentionLayer(nn.Module):
    """One post-LN Transformer layer whose keys/values may differ from its queries (PCCA eq. 2-3).

    ``X = LN(Q + Dropout(MultiHead(Q, C, C)))``, then ``LN(X + Dropout(FFN(X)))``. With ``context`` = the
    queries it is an ordinary encoder layer (self-attention), as in STCA's blocks and the S-only/T-only encoder.
    Attention weights are returned per head, before any dropout (dropout is applied to the attended output
    instead), so each row sums to 1 over the valid keys.

    Args:
        width: token width d (queries and context already projected to it).
        num_heads: attention heads (d must divide by it).
        mlp_ratio: the feed-forward's hidden width, as a multiple of d.
        dropout: dropout on the attended output, inside the feed-forward and on its output.
    """

    def __init__(self, width: int, num_heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.1):
        super().__init__()
        self.attention = nn.MultiheadAttention(width, num_heads, batch_first=True)
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


def learned_positions(tokens: int, width: int) -> nn.Parameter:
    """A learned embedding per token, [1, tokens, width], initialised N(0, 0.02^2) (ViT's)."""
    return nn.Parameter(torch.randn(1, tokens, width) * 0.02)


def actor_context_conv(
    conv: nn.Conv2d, context: torch.Tensor, actor: torch.Tensor, box_clip: torch.Tensor
) -> torch.Tensor:
    """``conv(cat([context[box_clip], actor tiled over H x W], dim=1))`` for a 1x1 ``conv``, without the tiling.

    The first step of ACRN and of ACAR-Net's first-order relation. A 1x1 convolution is linear in its input
    channels, so it splits into a context half applied once per clip and an actor half applied once per box (a
    matrix product, the same at every position); their broadcast sum is exactly the convolution of the
    concatenation. The concatenation order (context first, then actor) is ACAR-Net's, so ``conv.weight`` loads
    from its checkpoints unchanged.

    ``context`` [n_clips, C_x, H, W], ``actor`` [n_boxes, C_a], ``conv`` 1x1 over C_x + C_a channels ->
    [n_boxes, out, H, W].
    """
    if conv.kernel_size != (1, 1) or conv.in_channels != context.shape[1] + actor.shape[1]:
        raise ValueError(
            f"need a 1x1 conv over {context.shape[1]} + {actor.shape[1]} channels, got {conv.kernel_size} "
            f"over {conv.in_channels}"
        )
    weight = conv.weight[:, :, 0, 0]
    split = context.shape[1]
    context_term = F.conv2d(context, weight[:, :split, None, None], conv.bias)
    actor_term = actor @ weight[:, split:].T
    return context_term[box_clip] + actor_term[:, :, None, None]
