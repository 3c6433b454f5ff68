"""ACAR-Net's relation head (Pan et al., CVPR 2021): first-order actor-context relations, then HR2O over actors.

Figure, left to right (context-first order, the paper's default):

1. ``conv_reduce`` (1x1, 2304 -> 1024, no bias) on the temporally pooled map; the actor is the 7x7 RoIAlign of
   the reduced map, max-pooled.
2. First order (ACRN, as ``heads.acrn``): [context, actor tiled] -> ``conv1`` 1x1 to 512 + ReLU -> ``conv2`` 3x3
   without padding + ReLU -> max pool 3, stride 2, pad 1.
3. HR2O: ``depth`` modified non-local blocks; at every position, each actor attends over the first-order
   features of the actors of its clip (3x3 conv q/k/v, scale 1/sqrt(512)), then GroupNorm(1), ReLU, 3x3
   ``conv``, dropout 0.2, residual.
4. Classifier: ReLU(``fc1``(actor)) concatenated with the average-pooled HR2O output -> ``fc2`` (no biases).

Variants (the paper's ablations): ``hr2o="nl"`` (the default above), ``"avg"`` (the same block with uniform
attention over the clip's actors: no query/key) and ``"rn"`` (relation network: a pair feature from
[actor i, actor j, context] per position, averaged over j, added residually); ``depth`` 1-3; ``order=
"actor_first"`` attends across the actor vectors (the same block with 1x1 kernels) before meeting the context,
instead of after.

What the cache gives and why it is enough: ACAR RoI-aligns the *reduced* map, our cache holds ``roi_spatial``,
the RoIAlign of the *unreduced* map. ``conv_reduce`` is 1x1 (a per-position linear map over channels) and
RoIAlign is linear over positions with weights independent of the channel, so the two commute:
``conv_reduce(RoIAlign(x)) == RoIAlign(conv_reduce(x))``. The head applies ``conv_reduce`` to ``roi_spatial``
and then max-pools; it cannot use ``roi_pooled``, because the max does not commute with ``conv_reduce``.

Padding: the reference crops each clip's map to its valid (unpadded) extent before the first-order encoding,
so its convolutions meet zero padding at the crop border and its pooling and GroupNorm see the valid cells only.
This head keeps the batch padded (one pass for all clips) and reproduces the crop exactly with the
``clip_extent`` view: positions beyond a clip's extent are zeroed before every convolution and max pool (the
pooled maps are ReLU'd, so a zero never wins a max over a valid cell), GroupNorm takes its statistics over the
valid cells, and the final average runs over them. A clip narrower than the unpadded 3x3 convolution (under 3
cells) is widened to 3, where the reference would have no output. The actor (``roi_spatial``) is read from
the padded map, as the reference reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cache_spec.views import CLIP_EXTENT, CONTEXT_MAP, ROI_SPATIAL
from heads._extent import clip_extent, extent_mask, masked_group_norm, masked_mean, pooled_extent
from heads._grouping import ClipGroups, masked_softmax
from heads._layers import Classifier, actor_context_conv
from heads.base import Head

log = logging.getLogger(__name__)

HR2OKind = Literal["nl", "avg", "rn"]
Order = Literal["context_first", "actor_first"]
CHECKPOINT_PREFIX = "module.head.module."


class HR2ONonLocal(nn.Module):
    """One modified non-local block: actors of a clip attend to each other separately at every position.

    ``uniform=True`` is the paper's "Avg" ablation: the same block with every actor of the clip weighted
    equally, so it has no query and key convolutions.
    """

    def __init__(self, channels: int = 512, kernel_size: int = 3, dropout: float = 0.2, uniform: bool = False):
        super().__init__()
        pad = kernel_size // 2
        self.channels, self.uniform = channels, uniform
        if not uniform:
            self.conv_q = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)
            self.conv_k = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)
        self.conv_v = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)
        self.norm = nn.GroupNorm(1, channels)
        self.dp = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, groups: ClipGroups, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [n_boxes, C, h, w] -> (updated x, attention [n_boxes, h, w, max_actors]).

        ``mask`` [n_boxes, 1, h, w] (1 on the valid cells; ``x`` already 0 beyond them) makes the block compute
        what it would on each map cropped to its valid cells; the output is 0 beyond them again.
        """
        value = groups.pad(self.conv_v(x)).permute(0, 3, 4, 1, 2)  # [G, h, w, A, C]
        key_valid = groups.valid[:, None, None, None, :]  # [G, 1, 1, 1, A(keys)]
        if self.uniform:
            shape = (*value.shape[:3], value.shape[3], value.shape[3])
            attention = masked_softmax(value.new_zeros(shape), key_valid)
        else:
            query = groups.pad(self.conv_q(x)).permute(0, 3, 4, 1, 2)
            key = groups.pad(self.conv_k(x)).permute(0, 3, 4, 1, 2)
            attention = masked_softmax(query @ key.transpose(-1, -2) / self.channels**0.5, key_valid)
        attended = groups.unpad((attention @ value).permute(0, 3, 4, 1, 2))  # [n_boxes, C, h, w]
        hidden = F.relu(masked_group_norm(attended, mask, self.norm))
        update = self.dp(self.conv(hidden if mask is None else hidden * mask))
        x = x + update
        return (x if mask is None else x * mask), groups.unpad(attention.permute(0, 3, 1, 2, 4))


class HR2ORelation(nn.Module):
    """The relation-network instantiation: H_i = mean_j f([A_i, A_j, X]) per position, added to F_i.

    f is two convolutions: a 1x1 over the concatenated triple (split into its three parts so each is
    computed once, not once per pair) + ReLU, then a ``kernel_size`` convolution. The second is linear, so it
    is applied after the average over j (once per actor rather than once per pair): the same result.
    """

    def __init__(self, actor_dim: int, context_dim: int, channels: int = 512, kernel_size: int = 3):
        super().__init__()
        self.actor_dim = actor_dim
        self.conv_pair = nn.Conv2d(2 * actor_dim + context_dim, channels, 1)
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        actor: torch.Tensor,
        context: torch.Tensor,
        groups: ClipGroups,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` [n_boxes, C, h, w], ``actor`` [n_boxes, R], ``context`` [n_clips, R_x, h, w] -> updated x.

        ``mask`` [n_boxes, 1, h, w] as in :class:`HR2ONonLocal`: the output is what the cropped maps give.
        """
        weight = self.conv_pair.weight[:, :, 0, 0]
        a = self.actor_dim
        first = groups.pad(actor @ weight[:, :a].T)  # [G, A, C]
        second = groups.pad(actor @ weight[:, a : 2 * a].T)
        scene = F.conv2d(context, weight[:, 2 * a :, None, None], self.conv_pair.bias)[groups.clip]  # [G, C, h, w]
        pairs = first[:, :, None, :, None, None] + second[:, None, :, :, None, None] + scene[:, None, None]
        pairs = F.relu(pairs) * groups.valid[:, None, :, None, None, None]  # [G, A_i, A_j, C, h, w]
        mean = groups.unpad(pairs.sum(dim=2) / groups.counts[:, None, None, None, None])
        if mask is None:
            return x + self.conv(mean)
        return (x + self.conv(mean * mask)) * mask


class ACARHead(Head):
    """Actor-context-actor relations (HR2O) over first-order actor-context maps; names load ACAR checkpoints.

    ``last_attention``: ``hr2o.{i}`` -> [n_boxes, h, w, max_actors] for the NL and Avg variants (context-first),
    [n_boxes, 1, 1, max_actors] for actor-first; the RN variant has no attention weights. Positions beyond a
    clip's extent attend uniformly (their features are zero) and mean nothing.

    Args:
        in_channels: channels of ``context_map`` and ``roi_spatial``, the store's ``C`` (SlowFast R50: 2304).
        num_classes: number of action classes (80 for AVA).
        reduce_width: channels out of ``conv_reduce``, the reduced map's C that the actor vector and the
            context share (paper: 1024).
        width: the first-order relation maps' channels, which HR2O keeps (paper: d = 512), and the width of
            ``fc1``'s actor vector.
        depth: HR2O blocks (paper: 2; ablations 1-3).
        hr2o: the HR2O instantiation: ``"nl"`` non-local (paper), ``"avg"`` uniform attention, ``"rn"``
            relation network.
        order: ``"context_first"`` (paper) or ``"actor_first"`` (HR2O over the actor vectors, then the context).
        kernel_size: the HR2O convolutions' kernel (paper: 3).
        attn_dropout: dropout on each HR2O block's update, before the residual (paper: 0.2).
        dropout: the classifier's dropout before ``fc2`` (reference: 0).
        bias: whether ``fc2`` has a bias (reference: no).
        downsample: the max pool 3, stride 2, pad 1 after the first-order convolutions (reference: yes).
    """

    views = (CONTEXT_MAP, ROI_SPATIAL, CLIP_EXTENT)

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        reduce_width: int = 1024,
        width: int = 512,
        depth: int = 2,
        hr2o: HR2OKind = "nl",
        order: Order = "context_first",
        kernel_size: int = 3,
        attn_dropout: float = 0.2,
        dropout: float = 0.0,
        bias: bool = False,
        downsample: bool = True,
    ):
        super().__init__()
        if hr2o not in ("nl", "avg", "rn"):
            raise ValueError(f"hr2o must be 'nl', 'avg' or 'rn', got {hr2o!r}")
        if order not in ("context_first", "actor_first"):
            raise ValueError(f"order must be 'context_first' or 'actor_first', got {order!r}")
        if order == "actor_first" and hr2o == "rn":
            raise ValueError("the relation-network HR2O works on maps: it has no actor-first order")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.hr2o_kind, self.order = hr2o, order
        self.conv_reduce = nn.Conv2d(in_channels, reduce_width, 1, bias=False)
        self.conv1 = nn.Conv2d(2 * reduce_width, width, 1, bias=False)
        self.conv2 = nn.Conv2d(width, width, 3, bias=False)
        self.downsample = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if downsample else nn.Identity()
        blocks: list[nn.Module] = []
        for _ in range(depth):
            if order == "actor_first":
                blocks.append(HR2ONonLocal(reduce_width, 1, attn_dropout, uniform=hr2o == "avg"))
            elif hr2o == "rn":
                blocks.append(HR2ORelation(reduce_width, reduce_width, width, kernel_size))
            else:
                blocks.append(HR2ONonLocal(width, kernel_size, attn_dropout, uniform=hr2o == "avg"))
        self.hr2o = nn.ModuleList(blocks)
        self.fc1 = nn.Linear(reduce_width, width, bias=False)
        self.fc2 = Classifier(2 * width, num_classes, dropout, bias=bias)
        self.last_attention: dict[str, torch.Tensor] = {}

    @classmethod
    def from_dims(cls, dims: Mapping[str, int], num_classes: int, **options: Any) -> ACARHead:
        if dims["H"] < 3 or dims["W"] < 3:
            raise ValueError(f"ACAR's unpadded 3x3 conv needs a map of at least 3x3, store has {dims['H']}x{dims['W']}")
        head = super().from_dims(dims, num_classes, **options)
        assert isinstance(head, ACARHead)
        return head

    def forward(self, views: Mapping[str, torch.Tensor], box_clip: torch.Tensor) -> torch.Tensor:
        box_clip = box_clip.long()
        groups = ClipGroups.from_box_clip(box_clip)
        context = self.conv_reduce(views[CONTEXT_MAP].float())  # [n_clips, R, H, W]
        height, width = context.shape[-2:]
        extent = clip_extent(views, len(context), height, width, minimum=3).to(context.device)
        # conv_reduce commutes with RoIAlign (both linear, see the module docstring): this is ACAR's actor.
        actor = self.conv_reduce(views[ROI_SPATIAL].float()).amax(dim=(2, 3))  # [n_boxes, R]
        attention: dict[str, torch.Tensor] = {}
        if self.order == "actor_first":
            x = actor[:, :, None, None]
            for i, block in enumerate(self.hr2o):
                x, attention[f"hr2o.{i}"] = block(x, groups)
            actor = x[:, :, 0, 0]
        first = F.relu(actor_context_conv(self.conv1, context, actor, box_clip))
        # conv2 has no padding: its valid outputs are those whose 3x3 window lies inside the extent
        first_extent = extent - 2
        x = F.relu(self.conv2(first))
        x = x * self._mask(first_extent[box_clip], x)  # ReLU'd: a zero never wins the max over a valid cell
        x = self.downsample(x)  # [n_boxes, width, h, w]
        hr2o_extent = pooled_extent(first_extent, self.downsample)
        mask = self._mask(hr2o_extent[box_clip], x)
        x = x * mask
        if self.order == "context_first":
            rn_context = self._rn_context(context, first_extent, hr2o_extent) if self.hr2o_kind == "rn" else None
            for i, block in enumerate(self.hr2o):
                if isinstance(block, HR2ORelation):
                    x = block(x, actor, rn_context, groups, mask)
                else:
                    x, attention[f"hr2o.{i}"] = block(x, groups, mask)
        self.last_attention = {name: w.detach() for name, w in attention.items()}
        out = torch.cat([F.relu(self.fc1(actor)), masked_mean(x, mask)], dim=1)
        return self.fc2(out)

    @staticmethod
    def _mask(extent: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """[n, 1, h, w] 0/1 in ``like``'s dtype: the valid cells of maps shaped like ``like``."""
        return extent_mask(extent, *like.shape[-2:])[:, None].to(like.dtype)

    def _rn_context(self, context: torch.Tensor, inner: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The context on the first-order grid (border cells dropped, pooled), 0 beyond each clip's extent.

        The reduced context can be negative, so cells beyond the extent are filled with -inf before the max pool
        (as the pool's own padding is), which leaves the valid cells' maxima those of the cropped map.
        """
        inner_map = context[:, :, 1:-1, 1:-1]
        valid = extent_mask(inner, *inner_map.shape[-2:])[:, None]
        pooled_map = self.downsample(inner_map.masked_fill(~valid, float("-inf")))
        return pooled_map.masked_fill(~extent_mask(pooled, *pooled_map.shape[-2:])[:, None], 0.0)


class LoadReport(NamedTuple):
    """Keys the head has that the checkpoint lacks, and checkpoint keys (under the prefix) the head lacks."""

    missing: list[str]
    unexpected: list[str]


def load_acar_checkpoint(head: ACARHead, path: str | Path, prefix: str = CHECKPOINT_PREFIX) -> LoadReport:
    """Load the head weights of an ACAR-Net checkpoint into ``head``; returns (and logs) missing/unexpected keys.

    Reads with ``weights_only=True`` (nothing in the file is executed); takes ``state_dict`` when the file is a
    training checkpoint; keeps the keys under ``prefix`` (the reference wraps its head twice in ``module``).
    A tensor whose shape differs from the head's is refused with every mismatch listed, since loading the rest
    would leave a silently half-initialised head.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    weights = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not weights:
        raise ValueError(f"{path}: no key starts with {prefix!r} (first keys: {list(state)[:5]})")
    own = head.state_dict()
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)} vs head {tuple(own[key].shape)}"
        for key, value in weights.items()
        if key in own and tuple(value.shape) != tuple(own[key].shape)
    ]
    if mismatched:
        raise ValueError(f"{path}: shapes do not fit this head: " + "; ".join(mismatched))
    result = head.load_state_dict(weights, strict=False)
    report = LoadReport(list(result.missing_keys), list(result.unexpected_keys))
    if report.missing or report.unexpected:
        log.warning("%s: missing keys %s, unexpected keys %s", path, report.missing, report.unexpected)
    return report
