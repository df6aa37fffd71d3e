"""1-D temporal CNN over Mel frames (channels = Mel bins), any clip length, padding masked out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sdr_lightning.audio.features import lengths_to_mask


class TemporalCNN(nn.Module):
    """Stem conv, residual dilated conv blocks, then mean and max pooling over valid frames only.

    `members` > 1 packs that many independent CNNs of `channels` channels each into grouped convolutions (a
    "packed ensemble"): one forward pass, members that share nothing but the input.

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
        members: int = 1,
    ) -> None:
        super().__init__()
        self.members = members
        width = members * channels
        self.stem = nn.Sequential(
            nn.Conv1d(n_mels, width, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm1d(width), nn.ReLU(),
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(width, width, kernel_size, padding=d * (kernel_size // 2), dilation=d, groups=members,
                          bias=False),
                nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout),
            )
            for d in dilations
        )
        self.output_dim = 2 * width

    def forward(self, features: Tensor, frames: Tensor) -> Tensor:
        mask = lengths_to_mask(frames, features.shape[-1])[:, None, :].to(features.dtype)
        x = self.stem(features) * mask
        for block in self.blocks:
            x = (x + block(x)) * mask
        mean = x.sum(-1) / mask.sum(-1).clamp(min=1)
        peak = x.masked_fill(mask == 0, -torch.inf).amax(-1)
        # member-major layout, (B, members * 2 * channels), so each member's slice is contiguous for its head
        batch = x.shape[0]
        return torch.cat([mean.view(batch, self.members, -1), peak.view(batch, self.members, -1)], dim=2).flatten(1)
