"""2-D CNN over the log-Mel image after BC-ResNet (Kim et al., Interspeech 2021, "Broadcasted Residual Learning
for Efficient Keyword Spotting"): frequency-wise depthwise convolutions with sub-spectral normalisation, and
temporal convolutions on the frequency-averaged map broadcast back over frequency.

Convolving along the Mel axis shares weights across frequency, so a formant or pitch moved a few bins (another
voice) meets the same filters: the invariance the 1-D CNN (Mel bins as channels) lacks. Padding frames are
zeroed after every block and pooling covers valid frames only, so predictions do not depend on batch padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sdr_lightning.audio.features import lengths_to_mask


class SubSpectralNorm(nn.Module):
    """Batch norm with separate statistics per frequency sub-band (low and high bands differ in level)."""

    def __init__(self, channels: int, sub_bands: int) -> None:
        super().__init__()
        self.sub_bands = sub_bands
        self.norm = nn.BatchNorm2d(channels * sub_bands)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, freq, time = x.shape
        if freq % self.sub_bands:
            raise ValueError(f"SubSpectralNorm: {freq} frequency bins do not split into {self.sub_bands} sub-bands; "
                             f"choose n_mels and sub_bands so that they do.")
        x = self.norm(x.reshape(batch, channels * self.sub_bands, freq // self.sub_bands, time))
        return x.reshape(batch, channels, freq, time)


class BroadcastedBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, freq_stride: int, dilation: int, dropout: float,
                 sub_bands: int) -> None:
        super().__init__()
        self.residual = in_channels == out_channels and freq_stride == 1
        self.project = None if in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())
        self.frequency = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, (3, 1), stride=(freq_stride, 1), padding=(1, 0),
                      groups=out_channels, bias=False),
            SubSpectralNorm(out_channels, sub_bands),
        )
        self.temporal = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, (1, 3), padding=(0, dilation), dilation=(1, dilation),
                      groups=out_channels, bias=False),
            nn.BatchNorm2d(out_channels), nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
            nn.Dropout2d(dropout),
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        shortcut = x
        if self.project is not None:
            x = self.project(x) * mask
        spectral = self.frequency(x)
        temporal = self.temporal(spectral.mean(dim=2, keepdim=True) * mask)
        out = spectral + temporal  # broadcast over frequency
        if self.residual:
            out = out + shortcut
        return torch.relu(out) * mask


class BCResNet(nn.Module):
    """(B, n_mels, T) features + (B,) frame counts -> (B, head_channels) embedding."""

    def __init__(
        self,
        n_mels: int,
        width: int = 8,
        stage_channels: Sequence[int] = (8, 12, 16, 20),
        stage_blocks: Sequence[int] = (2, 2, 4, 4),
        stage_freq_strides: Sequence[int] = (1, 2, 2, 1),
        stage_dilations: Sequence[int] = (1, 2, 4, 8),
        head_channels: int = 32,
        sub_bands: int = 5,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        channels = [width * c for c in stage_channels]
        stem = 2 * width * 8
        self.stem = nn.Sequential(
            nn.Conv2d(1, stem, 5, stride=(2, 1), padding=2, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
        blocks, previous = [], stem
        for out, count, stride, dilation in zip(channels, stage_blocks, stage_freq_strides, stage_dilations):
            for index in range(count):
                blocks.append(BroadcastedBlock(previous, out, stride if index == 0 else 1, dilation, dropout,
                                               sub_bands))
                previous = out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(
            nn.Conv2d(previous, previous, (3, 5), padding=(1, 2), groups=previous, bias=False),
            nn.BatchNorm2d(previous), nn.ReLU(),
            nn.Conv2d(previous, width * head_channels, 1, bias=False),
            nn.BatchNorm2d(width * head_channels), nn.ReLU(),
        )
        self.output_dim = width * head_channels

    def forward(self, features: Tensor, frames: Tensor) -> Tensor:
        mask = lengths_to_mask(frames, features.shape[-1])[:, None, None, :].to(features.dtype)
        x = self.stem(features[:, None]) * mask
        for block in self.blocks:
            x = block(x, mask)
        x = self.head(x) * mask
        return x.sum(dim=(2, 3)) / (mask.sum(dim=(2, 3)) * x.shape[2]).clamp(min=1)
