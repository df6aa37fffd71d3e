"""Spectrogram augmentations: (B, n_mels, T) padded features + (B,) frame counts, batched, padding kept at zero.

Masks are filled with 0, the mean of normalised features. Warps resample the Mel or time axis by linear
interpolation at per-clip positions (one gather for the whole batch).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sdr_lightning.audio.augment.base import Augmentation, check_range, uniform
from sdr_lightning.audio.features import lengths_to_mask
from sdr_lightning.errors import ConfigError


class SpecAugment(Augmentation):
    """Per-clip random frequency and time masks (Park et al., 2019).

    Time masks lie inside the clip's valid frames and are at most `max_time_fraction` of its length, so a
    short clip is never masked away.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 6, time_masks: int = 2, time_width: int = 10,
                 max_time_fraction: float = 0.2, p: float = 1.0) -> None:
        super().__init__(p)
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width
        self.max_time_fraction = max_time_fraction

    def augment(self, features: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        batch, bins, steps = features.shape
        device = features.device
        keep = torch.ones_like(features, dtype=torch.bool)
        bin_index = torch.arange(bins, device=device)[None, :, None]
        step_index = torch.arange(steps, device=device)[None, None, :]
        for _ in range(self.freq_masks):
            width = _uniform_int(torch.full((batch,), self.freq_width + 1, device=device))
            start = _uniform_int(bins - width + 1)
            keep &= ~((bin_index >= start[:, None, None]) & (bin_index < (start + width)[:, None, None]))
        limit = torch.minimum(torch.full_like(frames, self.time_width),
                              (frames.float() * self.max_time_fraction).long())
        for _ in range(self.time_masks):
            width = _uniform_int(limit + 1)
            start = _uniform_int((frames - width + 1).clamp(min=1))
            keep &= ~((step_index >= start[:, None, None]) & (step_index < (start + width)[:, None, None]))
        keep |= ~self.drawn(batch, device)[:, None, None]
        return features * keep, frames


class FreqWarp(Augmentation):
    """Vocal-tract-length perturbation on the Mel axis: stretch each clip's spectrum by a factor alpha.

    Below a cut-off bin the content at Mel bin b moves to alpha * b (alpha > 1: formants move up, as for a
    shorter vocal tract); above it a second linear piece keeps the top bin in place, so nothing is pushed
    off the axis or left empty (the piecewise-linear warp of VTLN). alpha = 1 is the identity.
    """

    def __init__(self, min_factor: float = 0.85, max_factor: float = 1.15, boundary: float = 0.8,
                 p: float = 1.0) -> None:
        super().__init__(p)
        check_range("FreqWarp: [min_factor, max_factor]", min_factor, max_factor, lowest=1e-3)
        if not 0.0 < boundary < 1.0:
            raise ConfigError(f"FreqWarp: boundary={boundary}; use a fraction of the Mel axis in (0, 1), e.g. 0.8.")
        self.min_factor, self.max_factor, self.boundary = min_factor, max_factor, boundary

    def augment(self, features: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        batch, bins, _ = features.shape
        device = features.device
        if bins < 2:
            return features, frames
        alpha = uniform(self.min_factor, self.max_factor, batch, device)
        alpha = torch.where(self.drawn(batch, device), alpha, torch.ones_like(alpha))
        return warp_bins(features, alpha, self.boundary), frames


def warp_bins(features: Tensor, alpha: Tensor, boundary: float = 0.8) -> Tensor:
    """(B, n_mels, T) features with each clip's Mel axis stretched by alpha[i] (piecewise linear, ends fixed)."""
    top = features.shape[1] - 1
    output_bin = torch.arange(top + 1, device=features.device, dtype=alpha.dtype)[None, :]  # (1, F)
    alpha = alpha[:, None]
    cut = boundary * top * alpha.clamp(max=1.0)  # output bin where the second piece starts; its source is < top
    cut_source = cut / alpha
    upper = cut_source + (output_bin - cut) * (top - cut_source) / (top - cut)
    source = torch.where(output_bin <= cut, output_bin / alpha, upper)
    source = torch.where(alpha == 1.0, output_bin, source)  # exactly the identity, not off by rounding
    return interpolate(features, source, dim=1)


class TimeStretch(Augmentation):
    """Stretch each clip in time by a factor in [min_factor, max_factor]: n frames become round(n * factor)
    (a factor above 1 slows the clip down)."""

    def __init__(self, min_factor: float = 0.85, max_factor: float = 1.15, p: float = 1.0) -> None:
        super().__init__(p)
        check_range("TimeStretch: [min_factor, max_factor]", min_factor, max_factor, lowest=1e-3)
        self.min_factor, self.max_factor = min_factor, max_factor

    def augment(self, features: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        batch, device = len(features), features.device
        factor = uniform(self.min_factor, self.max_factor, batch, device)
        new_frames = torch.where(self.drawn(batch, device), (frames * factor).round().long().clamp(min=1), frames)
        width = int(new_frames.max())
        step = torch.arange(width, device=device, dtype=torch.float32)[None, :]
        # First and last frame stay in place; frames in between are read at evenly spaced source positions.
        scale = (frames - 1).clamp(min=0).float() / (new_frames - 1).clamp(min=1).float()
        stretched = interpolate(features, step * scale[:, None], dim=2)
        return stretched * lengths_to_mask(new_frames, width)[:, None, :], new_frames


class TimeCrop(Augmentation):
    """Random crop: keep one contiguous span of each clip's frames, a fraction in [min_fraction, max_fraction]
    of them (at least one frame), drawn anywhere inside the clip. The frame count shrinks to the span's."""

    def __init__(self, min_fraction: float = 0.7, max_fraction: float = 1.0, p: float = 1.0) -> None:
        super().__init__(p)
        check_range("TimeCrop: [min_fraction, max_fraction]", min_fraction, max_fraction, lowest=0.0)
        if max_fraction > 1.0 or min_fraction <= 0.0:
            raise ConfigError(f"TimeCrop: [min_fraction, max_fraction] = [{min_fraction}, {max_fraction}]; "
                              "use fractions of the clip in (0, 1], e.g. [0.7, 1.0].")
        self.min_fraction, self.max_fraction = min_fraction, max_fraction

    def augment(self, features: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        batch, bins, steps = features.shape
        device = features.device
        fraction = uniform(self.min_fraction, self.max_fraction, batch, device)
        kept = torch.minimum((frames * fraction).round().long().clamp(min=1), frames)
        kept = torch.where(self.drawn(batch, device), kept, frames)
        start = _uniform_int(frames - kept + 1)
        width = int(kept.max())
        source = (start[:, None] + torch.arange(width, device=device)[None, :]).clamp(max=steps - 1)
        cropped = torch.gather(features, 2, source[:, None, :].expand(batch, bins, width))
        return cropped * lengths_to_mask(kept, width)[:, None, :], kept


class TimeWarp(Augmentation):
    """SpecAugment's time warp: a random frame c moves by up to `max_fraction` of the clip's length, the
    frames on either side are stretched or squeezed linearly to follow it; the ends and the length stay."""

    def __init__(self, max_fraction: float = 0.1, p: float = 1.0) -> None:
        super().__init__(p)
        check_range("TimeWarp: max_fraction", 0.0, max_fraction)
        if max_fraction >= 0.5:
            raise ConfigError(f"TimeWarp: max_fraction={max_fraction}; use less than 0.5 (e.g. 0.1).")
        self.max_fraction = max_fraction

    def augment(self, features: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        batch, _, steps = features.shape
        device = features.device
        last = (frames - 1).clamp(min=0).float()[:, None]
        reach = self.max_fraction * last
        centre = reach + uniform(0.0, 1.0, batch, device)[:, None] * (last - 2 * reach)
        target = centre + uniform(-1.0, 1.0, batch, device)[:, None] * reach
        step = torch.arange(steps, device=device, dtype=torch.float32)[None, :]
        before = step * centre / target.clamp(min=1e-6)
        after = centre + (step - target) * (last - centre) / (last - target).clamp(min=1e-6)
        source = torch.where(step <= target, before, after).clamp(max=last)
        source = torch.where(self.drawn(batch, device)[:, None], source, step)
        warped = interpolate(features, source, dim=2)
        return warped * lengths_to_mask(frames, steps)[:, None, :], frames


def interpolate(x: Tensor, source: Tensor, dim: int) -> Tensor:
    """Linear interpolation of (B, F, T) `x` at fractional positions `source` (B, N) along `dim` (1 or 2)."""
    size = x.shape[dim]
    source = source.clamp(0, size - 1)
    low = source.floor().long().clamp(max=size - 1)
    high = (low + 1).clamp(max=size - 1)
    weight = (source - low).to(x.dtype)
    if dim == 1:
        shape = (x.shape[0], source.shape[1], x.shape[2])
        low, high, weight = (t[:, :, None].expand(shape) for t in (low, high, weight))
    else:
        shape = (x.shape[0], x.shape[1], source.shape[1])
        low, high, weight = (t[:, None, :].expand(shape) for t in (low, high, weight))
    return torch.gather(x, dim, low) * (1 - weight) + torch.gather(x, dim, high) * weight


def _uniform_int(high: Tensor) -> Tensor:
    """One integer in [0, high) per entry."""
    return (torch.rand(high.shape, device=high.device) * high).long().clamp(max=high - 1)


class FilterAugment(Augmentation):
    """A random smooth equaliser per clip (FilterAugment, Nam et al., ICASSP 2022): a piecewise-linear gain
    curve over the Mel axis through `points` knots (both ends and random bins between), each with a gain drawn from
    [-max_gain, max_gain] in units of the normalised features (std 1), added to every valid frame.

    It stands for microphones and rooms: averaged over their clips, FSDD's speakers differ by up to 15 dB per band."""

    def __init__(self, max_gain: float = 0.5, points: int = 4, p: float = 1.0) -> None:
        super().__init__(p)
        check_range("FilterAugment: max_gain", 0.0, max_gain)
        if points < 2:
            raise ConfigError(f"FilterAugment: points={points}; use at least 2 (the two ends of the Mel axis).")
        self.max_gain, self.points = max_gain, points

    def augment(self, features: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        batch, bins, steps = features.shape
        device, dtype = features.device, features.dtype
        inner = torch.rand(batch, self.points - 2, device=device, dtype=dtype).sort(dim=1).values * (bins - 1)
        first = torch.zeros(batch, 1, device=device, dtype=dtype)
        knots = torch.cat([first, inner, first + (bins - 1)], dim=1)  # (B, points), ascending
        gains = (2 * torch.rand(batch, self.points, device=device, dtype=dtype) - 1) * self.max_gain
        gains = gains * self.drawn(batch, device)[:, None]
        position = torch.arange(bins, device=device, dtype=dtype).expand(batch, bins).contiguous()
        right = torch.searchsorted(knots, position, right=True).clamp(1, self.points - 1)
        left = right - 1
        x0, x1 = knots.gather(1, left), knots.gather(1, right)
        y0, y1 = gains.gather(1, left), gains.gather(1, right)
        curve = y0 + (y1 - y0) * (position - x0) / (x1 - x0).clamp(min=1e-6)
        return (features + curve[:, :, None]) * lengths_to_mask(frames, steps)[:, None, :], frames
