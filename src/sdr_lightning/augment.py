"""Batched spectrogram augmentation (SpecAugment-style masking) that respects each clip's length."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpecAugment(nn.Module):
    """Per-clip random frequency and time masks, filled with 0 (the mean of normalised features).

    Time masks lie inside the clip's valid frames and are at most `max_time_fraction` of its length, so a
    short clip is never masked away.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 6, time_masks: int = 2, time_width: int = 10,
                 max_time_fraction: float = 0.2) -> None:
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width
        self.max_time_fraction = max_time_fraction

    def forward(self, features: Tensor, frames: Tensor) -> Tensor:
        batch, bins, steps = features.shape
        keep = torch.ones_like(features, dtype=torch.bool)
        bin_index = torch.arange(bins, device=features.device)[None, :, None]
        step_index = torch.arange(steps, device=features.device)[None, None, :]
        for _ in range(self.freq_masks):
            width = _uniform_int(torch.full((batch,), self.freq_width + 1, device=features.device))
            start = _uniform_int(bins - width + 1)
            keep &= ~((bin_index >= start[:, None, None]) & (bin_index < (start + width)[:, None, None]))
        limit = torch.minimum(torch.full_like(frames, self.time_width),
                              (frames.float() * self.max_time_fraction).long())
        for _ in range(self.time_masks):
            width = _uniform_int(limit + 1)
            start = _uniform_int((frames - width + 1).clamp(min=1))
            keep &= ~((step_index >= start[:, None, None]) & (step_index < (start + width)[:, None, None]))
        return features * keep


def _uniform_int(high: Tensor) -> Tensor:
    """One integer in [0, high) per entry."""
    return (torch.rand(high.shape, device=high.device) * high).long().clamp(max=high - 1)
