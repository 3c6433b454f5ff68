"""The valid (unpadded) region of each clip's feature map, read from the ``clip_extent`` view.

Clips of different aspect ratios share one padded canvas, so a clip's map holds image in its first ``rows`` x
``cols`` cells and padding beyond them (whatever the backbone made of the zero-padded frames, not zeros). A head
that reads map positions restricts itself to the valid cells so that it computes what it would on the map
cropped to the clip's extent, the way the reference implementations crop it; these helpers do so vectorised.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from cache_spec.views import CLIP_EXTENT


def clip_extent(
    views: Mapping[str, torch.Tensor], n_clips: int, height: int, width: int, minimum: int = 1
) -> torch.Tensor:
    """[n_clips, 2] long: valid rows, columns per clip, clamped to ``[minimum, map size]``.

    The whole map when the view is absent (a caller with unpadded maps need not make one). ``minimum`` lets a
    head whose unpadded convolution needs k cells keep an output on a degenerate clip rather than none.
    """
    if CLIP_EXTENT not in views:
        return torch.tensor([[height, width]]).expand(n_clips, 2)
    extent = views[CLIP_EXTENT].float().round().long().reshape(-1, 2)
    limit = torch.tensor([height, width], device=extent.device)
    return torch.minimum(extent.clamp(min=minimum), limit)


def extent_mask(extent: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[n, height, width] bool, True on the first ``extent[i]`` rows and columns of map i."""
    rows = torch.arange(height, device=extent.device)[None, :, None] < extent[:, 0, None, None]
    cols = torch.arange(width, device=extent.device)[None, None, :] < extent[:, 1, None, None]
    return rows & cols


def pooled_extent(extent: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """The valid extent after ``pool`` (an ``nn.MaxPool2d`` or identity): what pooling the cropped map leaves."""
    if not isinstance(pool, nn.MaxPool2d):
        return extent
    if _pair(pool.dilation) != (1, 1) or pool.ceil_mode:
        raise ValueError("pooled_extent supports undilated floor-mode pooling only")
    settings = (pool.kernel_size, pool.stride, pool.padding)
    kernel, stride, pad = (torch.tensor(_pair(v), device=extent.device) for v in settings)
    return torch.div(extent + 2 * pad - kernel, stride, rounding_mode="floor") + 1


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[n, C, H, W], mask [n, 1, H, W] (float 0/1) -> [n, C]: the average over the valid positions only (GAP)."""
    return (x * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3))


def masked_group_norm(x: torch.Tensor, mask: torch.Tensor | None, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm`` (one group) with its statistics taken over the valid positions only, as on the cropped map."""
    if mask is None:
        return norm(x)
    if norm.num_groups != 1:
        raise ValueError(f"masked GroupNorm supports one group, got {norm.num_groups}")
    count = mask.sum(dim=(1, 2, 3), keepdim=True) * x.shape[1]
    mean = (x * mask).sum(dim=(1, 2, 3), keepdim=True) / count
    var = ((x - mean) * mask).square().sum(dim=(1, 2, 3), keepdim=True) / count
    out = (x - mean) * torch.rsqrt(var + norm.eps)
    if norm.affine:
        out = out * norm.weight[None, :, None, None] + norm.bias[None, :, None, None]
    return out


def replicate_beyond(x: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """[n, ..., H, W] with every cell beyond map i's extent replaced by the nearest valid cell.

    ``torchvision.ops.roi_align`` clamps samples past a map's last cell to that cell, so RoIAlign of this map
    equals RoIAlign of the map cropped to the extent for every box inside it, whatever the padding holds.
    """
    height, width = x.shape[-2:]
    rows = torch.minimum(torch.arange(height, device=x.device)[None, :], extent[:, :1] - 1)  # [n, H]
    cols = torch.minimum(torch.arange(width, device=x.device)[None, :], extent[:, 1:] - 1)  # [n, W]
    ones = [1] * (x.dim() - 3)
    x = torch.gather(x, -2, rows.reshape(len(x), *ones, height, 1).expand_as(x))
    return torch.gather(x, -1, cols.reshape(len(x), *ones, 1, width).expand_as(x))
