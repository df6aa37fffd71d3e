"""The contract every augmentation keeps: a padded batch and its lengths in, the same kind of pair out."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sdr_lightning.errors import ConfigError


class Augmentation(nn.Module):
    """A random, batched transform of a padded batch: (B, ..., L) tensor + (B,) valid lengths -> the same pair.

    It is the identity outside training mode, so a model that owns it evaluates and predicts on clean input.
    Each clip is transformed with probability `p`; a clip that is not drawn passes through unchanged.
    All randomness comes from torch's global generator, which `seed_everything` seeds, so runs repeat.
    Padding past a clip's length is zero on the way out, and lengths follow any change of duration.
    """

    def __init__(self, p: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{type(self).__name__}: p={p} is a probability; use a value in [0, 1].")
        self.p = p

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            return x, lengths
        return self.augment(x, lengths)

    def augment(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def drawn(self, batch: int, device: torch.device) -> Tensor:
        """(B,) bool: which clips this call transforms."""
        return torch.rand(batch, device=device) < self.p


def uniform(low: float, high: float, batch: int, device: torch.device) -> Tensor:
    """(B,) floats drawn uniformly from [low, high]."""
    return low + (high - low) * torch.rand(batch, device=device)


def check_range(owner: str, low: float, high: float, lowest: float | None = None) -> None:
    """Config errors for a [low, high] range, named after the augmentation that takes it."""
    if low > high:
        raise ConfigError(f"{owner}: the range [{low}, {high}] is empty; give the smaller value first.")
    if lowest is not None and low < lowest:
        raise ConfigError(f"{owner}: {low} is below the smallest allowed value {lowest}.")
