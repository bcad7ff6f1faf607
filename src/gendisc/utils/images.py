"""Image grids (``torchvision.utils.make_grid``) and PNG files of generated images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid


def to_uint8(images: Tensor) -> np.ndarray:
    """Images in [-1, 1] of shape (N, C, H, W) -> uint8 array (N, C, H, W) in 0..255."""
    scaled = (images.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5
    return scaled.round().to(torch.uint8).numpy()


def image_grid(
    images: Tensor | np.ndarray,
    nrow: int | None = None,
    padding: int = 2,
    pad_value: int = 255,
    min_cell: int = 28,
) -> np.ndarray:
    """An RGB uint8 grid (H, W, 3) of ``images`` laid out ``nrow`` per row (default: square),
    drawn by ``torchvision.utils.make_grid``.

    ``images``: a float tensor in [-1, 1] or a uint8 array, shape (N, C, H, W) with C = 1 or 3.
    Cells smaller than ``min_cell`` pixels are enlarged by an integer factor (nearest
    neighbour), so that 8x8 digits stay visible.
    """
    array = to_uint8(images) if isinstance(images, Tensor) else np.asarray(images, np.uint8)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {array.shape}")
    batch = torch.from_numpy(array)
    n, _, h, w = batch.shape
    scale = max(1, math.ceil(min_cell / max(min(h, w), 1)))
    if scale > 1:
        batch = F.interpolate(batch, scale_factor=scale, mode="nearest-exact")
    ncol = nrow or max(1, math.ceil(math.sqrt(n)))
    grid = make_grid(batch, nrow=ncol, padding=padding, pad_value=pad_value)  # grey -> 3 channels
    return grid.permute(1, 2, 0).contiguous().numpy()


def save_png(grid: np.ndarray, path: str | Path) -> Path:
    """Write an RGB uint8 array as a PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
