"""1-D temporal CNN over Mel frames (channels = Mel bins), any clip length, padding masked out."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from sdr_lightning.features import lengths_to_mask
from sdr_lightning.models.classifier import DigitClassifier


class TemporalCNN(nn.Module):
    """Stem conv, residual dilated conv blocks, then mean and max pooling over valid frames only.

    Activations are zeroed past each clip's end after every block, so a clip's output (in eval mode)
    does not depend on how much padding its batch added.
    """

    def __init__(
        self,
        n_mels: int,
        channels: int = 128,
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 2, 4, 8),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(n_mels, channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm1d(channels), nn.ReLU(),
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(channels, channels, kernel_size, padding=d * (kernel_size // 2), dilation=d, bias=False),
                nn.BatchNorm1d(channels), nn.ReLU(), nn.Dropout(dropout),
            )
            for d in dilations
        )
        self.output_dim = 2 * channels

    def forward(self, features: Tensor, frames: Tensor) -> Tensor:
        mask = lengths_to_mask(frames, features.shape[-1])[:, None, :].to(features.dtype)
        x = self.stem(features) * mask
        for block in self.blocks:
            x = (x + block(x)) * mask
        mean = x.sum(-1) / mask.sum(-1).clamp(min=1)
        peak = x.masked_fill(mask == 0, -torch.inf).amax(-1)
        return torch.cat([mean, peak], dim=1)


class CNNClassifier(DigitClassifier):
    def __init__(
        self,
        channels: int = 128,
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 2, 4, 8),
        dropout: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.encoder = TemporalCNN(self.featurizer.n_mels, channels, kernel_size, dilations, dropout)
        self.attach_head()
