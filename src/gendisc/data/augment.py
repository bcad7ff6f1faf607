"""Data augmentation of training batches: translation, small affine maps, flips (the
``augment=`` group), and FixMatch's strong view (torchvision's RandAugment, then Cutout).

The classical ops are written with plain torch ops so that each transforms a whole batch at
once, every image its own draw, on the device where the batch already is (torchvision's v2
transforms draw one set of parameters per batch tensor). Randomness comes from torch's global
generator of that device, which gendisc seeds per rank and keeps in checkpoints, so augmented
runs are seeded and resumable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from gendisc.errors import ConfigError

# augment.padding -> (F.pad mode, F.grid_sample padding_mode)
PADDING = {
    "constant": ("constant", "zeros"),
    "edge": ("replicate", "border"),
    "reflect": ("reflect", "reflection"),
}


def _check_padding(padding: str) -> None:
    if padding not in PADDING:
        raise ConfigError(f"augment.padding={padding}: use one of {sorted(PADDING)}.")


def translate(
    images: Tensor,
    shifts: Tensor,
    padding: str = "constant",
    fill: float = -1.0,
    pad: int | None = None,
) -> Tensor:
    """Each image moved by its own whole number of pixels.

    Args:
        images: (N, C, H, W) batch.
        shifts: (N, 2) integer (dx, dy): ``out[..., y, x] = images[..., y - dy, x - dx]``
            (positive dx moves the content right, positive dy down).
        padding: what enters at the borders: ``constant`` (``fill``), ``edge`` (the nearest
            border pixel) or ``reflect`` (mirrored without repeating the border pixel).
        fill: the constant value (-1 is black for images in [-1, 1]).
        pad: the largest |shift| (default: read from ``shifts``, which syncs with the device).
    """
    _check_padding(padding)
    n, _, height, width = images.shape
    if pad is None:
        pad = int(shifts.abs().max()) if len(shifts) else 0
    mode = PADDING[padding][0]
    value = {"value": fill} if mode == "constant" else {}
    padded = F.pad(images, (pad, pad, pad, pad), mode=mode, **value)
    device = images.device
    shifts = shifts.to(device=device, dtype=torch.long)
    rows = torch.arange(height, device=device) + pad - shifts[:, 1:2]  # (N, H)
    cols = torch.arange(width, device=device) + pad - shifts[:, 0:1]  # (N, W)
    batch = torch.arange(n, device=device).view(n, 1, 1)
    # advanced indices around a slice put their dimensions first: (N, H, W, C)
    moved = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return moved.permute(0, 3, 1, 2).contiguous()


def affine(
    images: Tensor,
    angle: Tensor,
    scale: Tensor,
    shift: Tensor,
    padding: str = "constant",
    fill: float = -1.0,
) -> Tensor:
    """Each image rotated about its centre, scaled, then moved (bilinear resampling).

    Args:
        images: (N, C, H, W) batch.
        angle: (N,) rotation in degrees, clockwise as displayed (image y axis pointing down).
        scale: (N,) zoom factor (above 1 enlarges the content).
        shift: (N, 2) translation (dx, dy) in pixels, after rotation and scaling.
        padding: ``constant`` (``fill``), ``edge`` or ``reflect``, as for :func:`translate`.
        fill: the constant value.
    """
    _check_padding(padding)
    n, _, height, width = images.shape
    work = images.float()
    radians = angle.to(work) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    inverse_scale = 1.0 / scale.to(work)
    # output pixel p samples input pixel M (p - t), M = R(-angle) / scale, in pixel units about
    # the centre. affine_grid wants normalised units; with align_corners=True the corner pixels'
    # centres are at -1 and 1 (so reflection mirrors about the border pixels, as F.pad does):
    # theta = D^-1 M D with D = diag((W - 1) / 2, (H - 1) / 2)
    aspect = _half_span(height) / _half_span(width)
    theta = torch.zeros(n, 2, 3, device=work.device, dtype=work.dtype)
    theta[:, 0, 0] = cos * inverse_scale
    theta[:, 0, 1] = sin * inverse_scale * aspect
    theta[:, 1, 0] = -sin * inverse_scale / aspect
    theta[:, 1, 1] = cos * inverse_scale
    offset = -torch.einsum(
        "nij,nj->ni", theta[:, :, :2], _normalised(shift.to(work), width, height)
    )
    theta[:, :, 2] = offset
    grid = F.affine_grid(theta, list(work.shape), align_corners=True)
    mode = PADDING[padding][1]
    if mode == "zeros":  # grid_sample fills with 0: sample the offset image, then add fill back
        out = F.grid_sample(work - fill, grid, padding_mode=mode, align_corners=True) + fill
    else:
        out = F.grid_sample(work, grid, padding_mode=mode, align_corners=True)
    return out.to(images.dtype)


def _half_span(size: int) -> float:
    """Pixels from the centre to a corner pixel's centre along an axis of ``size`` pixels."""
    return max(size - 1, 1) / 2.0


def _normalised(shift: Tensor, width: int, height: int) -> Tensor:
    """Pixel (dx, dy) -> affine_grid's units (corner pixel centres at -1 and 1)."""
    scale = [1.0 / _half_span(width), 1.0 / _half_span(height)]
    return shift * torch.tensor(scale, device=shift.device, dtype=shift.dtype)


def flip(images: Tensor, mask: Tensor) -> Tensor:
    """The images whose ``mask`` entry is true mirrored left-right, the others unchanged."""
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)


class Augment(nn.Module):
    """Random augmentation of the training batches (``augment=`` config group).

    Every image gets its own draw: a left-right flip with probability 1/2 (``flip``), then
    either a small affine map (``rotate`` or ``scale`` set: uniform angle in [-rotate, rotate]
    degrees, zoom in [1 - scale, 1 + scale] and a continuous shift in [-max_shift, max_shift]
    pixels per axis, bilinear) or an integer translation by up to ``max_shift`` pixels per axis.
    All off is the identity and draws no random numbers.

    Args:
        max_shift: largest translation in pixels per axis (0: none).
        rotate: largest rotation in degrees (0: none).
        scale: largest relative zoom (0.1: 0.9x to 1.1x; 0: none).
        flip: random left-right flips; only for data whose classes survive mirroring (CIFAR-10,
            SVHN is not, digits and letters are not).
        padding: what enters at the borders: ``constant`` (``fill``), ``edge`` or ``reflect``.
        fill: the constant border value (-1: black for images in [-1, 1]).
        unlabeled: also augment the unlabeled batches (``x_unl``, ``x_unl2``, ...) of modules
            that use them; the labeled batch ``x`` is always augmented.
    """

    def __init__(
        self,
        max_shift: int = 0,
        rotate: float = 0.0,
        scale: float = 0.0,
        flip: bool = False,
        padding: str = "constant",
        fill: float = -1.0,
        unlabeled: bool = False,
    ) -> None:
        super().__init__()
        if int(max_shift) != max_shift or max_shift < 0:
            raise ConfigError(f"augment.max_shift={max_shift}: a whole number of pixels >= 0.")
        if not 0.0 <= rotate <= 180.0:
            raise ConfigError(f"augment.rotate={rotate}: degrees in [0, 180].")
        if not 0.0 <= scale < 1.0:
            raise ConfigError(f"augment.scale={scale}: a relative zoom in [0, 1).")
        _check_padding(padding)
        self.max_shift = int(max_shift)
        self.rotate = float(rotate)
        self.scale = float(scale)
        self.flip = bool(flip)
        self.padding = padding
        self.fill = float(fill)
        self.unlabeled = bool(unlabeled)

    @property
    def active(self) -> bool:
        """Whether any transformation is on (else the batches pass through untouched)."""
        return bool(self.max_shift or self.rotate or self.scale or self.flip)

    def extra_repr(self) -> str:
        return (
            f"max_shift={self.max_shift}, rotate={self.rotate}, scale={self.scale}, "
            f"flip={self.flip}, padding={self.padding}, unlabeled={self.unlabeled}"
        )

    def forward(self, images: Tensor) -> Tensor:
        """A randomly transformed copy of the (N, C, H, W) batch (the batch itself when off)."""
        if not self.active:
            return images
        n, _, height, width = images.shape
        if self.padding == "reflect" and self.max_shift >= min(height, width):
            raise ConfigError(
                f"augment.max_shift={self.max_shift}: reflect padding needs a shift below the "
                f"image size {height}x{width}; lower it or use augment.padding=edge."
            )
        device = images.device
        if self.flip:
            images = flip(images, torch.rand(n, device=device) < 0.5)
        if self.rotate or self.scale:
            angle = (torch.rand(n, device=device) * 2 - 1) * self.rotate
            zoom = 1 + (torch.rand(n, device=device) * 2 - 1) * self.scale
            shift = (torch.rand(n, 2, device=device) * 2 - 1) * self.max_shift
            return affine(images, angle, zoom, shift, self.padding, self.fill)
        if self.max_shift:
            m = self.max_shift
            shifts = torch.randint(-m, m + 1, (n, 2), device=device)
            return translate(images, shifts, self.padding, self.fill, pad=m)
        return images

    def keys(self, batch: dict[str, Tensor]) -> list[str]:
        """The batch entries this augments: ``x``, and the unlabeled streams when asked."""
        return [key for key in batch if key == "x" or (self.unlabeled and key.startswith("x_unl"))]

    def augment_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """A training batch dict with its images augmented (each entry its own draws)."""
        if not self.active:
            return batch
        return {
            key: self(value) if key in self.keys(batch) else value for key, value in batch.items()
        }


def cutout(images: Tensor, size: int, fill: float = 0.0) -> Tensor:
    """Each image with one ``size`` x ``size`` square (centre uniform over the image, clipped at
    the borders) set to ``fill`` (0: mid-grey in [-1, 1]), as FixMatch's Cutout. Hand-written:
    torchvision's RandomErasing draws one box for a whole batch tensor."""
    n, _, height, width = images.shape
    device = images.device
    centre_y = torch.randint(0, height, (n, 1, 1), device=device)
    centre_x = torch.randint(0, width, (n, 1, 1), device=device)
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    low, high = size // 2, size - size // 2
    inside = ((rows >= centre_y - low) & (rows < centre_y + high) & (cols >= centre_x - low)) & (
        cols < centre_x + high
    )
    return images.masked_fill(inside.unsqueeze(1), fill)


class RandAugmentCutout(nn.Module):
    """FixMatch's strong augmentation: torchvision's RandAugment (``num_ops`` random ops per
    image, each image its own ops and, with ``magnitude=null``, its own magnitude, uniform over
    the bins as in FixMatch's RA), then Cutout of a square ``cutout`` x the image side.

    Images in [-1, 1] are quantised to uint8 for RandAugment (its colour ops are defined on
    pixel levels) and mapped back. The draws come from torch's global generator, which gendisc
    seeds and keeps in checkpoints. Per-image ops run in a Python loop on the batch's device.
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int | None = None,
        num_magnitude_bins: int = 31,
        cutout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_ops < 0 or num_magnitude_bins < 2:
            raise ConfigError(
                f"num_ops={num_ops}, num_magnitude_bins={num_magnitude_bins}: need num_ops >= 0 "
                "and at least 2 bins."
            )
        if magnitude is not None and not 0 <= magnitude < num_magnitude_bins:
            raise ConfigError(
                f"magnitude={magnitude}: a bin in [0, {num_magnitude_bins - 1}], or null (random "
                "per image)."
            )
        if not 0.0 <= cutout <= 1.0:
            raise ConfigError(f"cutout={cutout}: a fraction of the image side in [0, 1].")
        self.magnitude = magnitude
        self.num_magnitude_bins = int(num_magnitude_bins)
        self.cutout = float(cutout)
        self.randaugment = v2.RandAugment(
            num_ops=int(num_ops),
            magnitude=magnitude if magnitude is not None else 0,
            num_magnitude_bins=self.num_magnitude_bins,
            fill=0,
        )

    def extra_repr(self) -> str:
        return f"magnitude={self.magnitude}, cutout={self.cutout}"

    def forward(self, images: Tensor) -> Tensor:
        """A strongly augmented copy of the (N, C, H, W) batch of images in [-1, 1]."""
        levels = ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        out = []
        for image in levels:
            if self.magnitude is None:
                self.randaugment.magnitude = int(torch.randint(0, self.num_magnitude_bins, ()))
            out.append(self.randaugment(image))
        strong = torch.stack(out).to(images.dtype) / 127.5 - 1.0
        size = round(self.cutout * min(images.shape[-2:]))
        return cutout(strong, size) if size > 0 else strong
