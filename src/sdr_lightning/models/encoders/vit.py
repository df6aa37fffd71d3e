"""Audio spectrogram transformer: patch embedding, class token, pre-norm encoder, any clip length.

`stem_layers` > 0 puts a convolutional stem in front of the patches (a hybrid, as ViT's own hybrid and "early
convolutions", Xiao et al. 2021): that many 1-D convolutions (kernel 3, batch norm, GELU) over time across the Mel
bins, each seeing only the clip's own frames, then patches of `patch_time` frames of the stem's output.

Positions along time are sinusoidal and computed for the length at hand (the seed study's fixed
150-entry table capped the input length); positions along frequency are learned (their count is fixed).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class SpectrogramTransformer(nn.Module):
    def __init__(
        self,
        n_mels: int,
        patch_freq: int | None = None,
        patch_time: int = 4,
        stride_freq: int | None = None,
        stride_time: int | None = None,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_dim: int = 256,
        dropout: float = 0.1,
        pool: str = "cls",
        stem_layers: int = 0,
        stem_channels: int = 128,
    ) -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"model.encoder.pool={pool!r}; use 'cls' or 'mean'.")
        patch_freq = min(patch_freq or n_mels, n_mels)
        if stem_layers < 0 or (stem_layers and patch_freq != n_mels):
            raise ValueError(f"model.encoder.stem_layers={stem_layers}: use 0 (no stem), or > 0 with patches that span "
                             "every Mel bin (patch_freq=null), since the stem mixes the bins.")
        self.stem = nn.ModuleList()
        channels = n_mels
        for _ in range(stem_layers):
            self.stem.append(nn.Sequential(nn.Conv1d(channels, stem_channels, 3, padding=1),
                                           nn.BatchNorm1d(stem_channels), nn.GELU()))
            channels = stem_channels
        if stem_layers:  # the stem's channels become the "frequency" axis of one patch row
            n_mels = patch_freq = channels
        self.patch_time, self.stride_time = patch_time, stride_time or patch_time
        stride_freq = stride_freq or patch_freq
        self.patch = nn.Conv2d(1, dim, (patch_freq, patch_time), stride=(stride_freq, self.stride_time))
        self.freq_patches = (n_mels - patch_freq) // stride_freq + 1
        self.freq_position = nn.Parameter(torch.zeros(self.freq_patches, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.pool = pool
        self.output_dim = dim

    def forward(self, features: Tensor, frames: Tensor) -> Tensor:
        if len(self.stem):
            valid = (torch.arange(features.shape[-1], device=features.device)[None, :] < frames[:, None])[:, None]
            features = features * valid
            for layer in self.stem:  # padding frames are zeroed before each layer: a clip sees only its own frames
                features = layer(features) * valid
        if features.shape[-1] < self.patch_time:
            features = nn.functional.pad(features, (0, self.patch_time - features.shape[-1]))
        patches = self.patch(features[:, None])  # (B, D, Fp, Tp)
        batch, dim, freq_patches, time_patches = patches.shape
        tokens = patches.permute(0, 3, 2, 1)  # (B, Tp, Fp, D)
        tokens = tokens + sinusoidal_positions(time_patches, dim, tokens.device)[None, :, None, :]
        tokens = (tokens + self.freq_position).reshape(batch, time_patches * freq_patches, dim)
        valid_patches = ((frames - self.patch_time).clamp(min=0) // self.stride_time + 1).clamp(max=time_patches)
        padding = torch.arange(time_patches, device=frames.device)[None, :] >= valid_patches[:, None]
        padding = padding.repeat_interleave(freq_patches, dim=1)  # (B, Tp*Fp), True = ignore
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        padding = torch.cat([padding.new_zeros(batch, 1), padding], dim=1)
        out = self.norm(self.transformer(tokens, src_key_padding_mask=padding))
        if self.pool == "cls":
            return out[:, 0]
        keep = (~padding[:, 1:]).to(out.dtype)[..., None]
        return (out[:, 1:] * keep).sum(1) / keep.sum(1).clamp(min=1)
