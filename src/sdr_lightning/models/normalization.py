"""BatchNorm that, at inference, lets each clip normalise itself a little (a single-clip form of the prior blend of
Schneider et al., 2020, "Improving robustness against common corruptions by covariate shift adaptation").

A BatchNorm layer normalises with the mean and variance it saw in training. A voice, room or noise the model never
heard shifts those statistics, and the layers after it then read their inputs wrongly. Here each channel's mean and
variance at inference are (1 - w) times the training statistics plus w times the clip's own, over its valid frames
only: the clip alone decides (no calibration set, unlike adapt.py), padding is never counted, and training is
unchanged (the same blend in training too was measured and rejected). docs/robustness.md (twenty-seventh round)
measures it on held-out speakers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def clip_statistics(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Each clip's per-channel mean and (biased) variance over the frames where `mask` (B, 1, T) is nonzero, both
    (B, C)."""
    if mask is None:
        count = x.new_full((x.shape[0], 1), x.shape[-1])
        total, square = x.sum(-1), x.square().sum(-1)
    else:
        count = mask.sum(-1).clamp(min=1)
        masked = x * mask
        total, square = masked.sum(-1), (masked * x).sum(-1)
    mean = total / count
    return mean, (square / count - mean.square()).clamp(min=0)


def clip_batch_norm(x: Tensor, mask: Tensor | None, layer: nn.modules.batchnorm._BatchNorm,
                    clip_weight: float) -> Tensor:
    """`layer` (a BatchNorm1d in eval mode) applied to `x` (B, C, T), with each clip's statistics over the frames
    where `mask` (B, 1, T) is nonzero blended into the running ones at `clip_weight` (0: plain BatchNorm)."""
    dtype = x.dtype  # statistics in the running ones' precision (float32 under bf16/fp16 autocast), as BatchNorm does
    x = x.to(layer.running_mean.dtype)
    clip_mean, clip_var = clip_statistics(x, None if mask is None else mask.to(x.dtype))
    mean = torch.lerp(layer.running_mean.expand_as(clip_mean), clip_mean, clip_weight)
    var = torch.lerp(layer.running_var.expand_as(clip_var), clip_var, clip_weight)
    scale = torch.rsqrt(var + layer.eps)
    shift = -mean * scale
    if layer.affine:
        scale, shift = scale * layer.weight, shift * layer.weight + layer.bias
    return torch.addcmul(shift[..., None], x, scale[..., None]).to(dtype)  # one pass over x: x * scale + shift


class ClipBatchNorm1d(nn.BatchNorm1d):
    """`nn.BatchNorm1d` (the same parameters, buffers and state-dict keys) that, in eval mode with `clip_weight` > 0,
    blends each clip's own statistics into the running ones (`clip_batch_norm`). Training is plain BatchNorm."""

    def __init__(self, num_features: int, clip_weight: float = 0.0) -> None:
        super().__init__(num_features)
        self.clip_weight = float(clip_weight)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.training or not self.clip_weight:
            return super().forward(x)
        return clip_batch_norm(x, mask, self, self.clip_weight)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", clip_weight={self.clip_weight}"


def set_clip_weight(model: nn.Module, clip_weight: float) -> int:
    """Set `clip_weight` on every ClipBatchNorm1d of `model` (e.g. to score a checkpoint trained before the option);
    returns how many layers it set."""
    layers = [m for m in model.modules() if isinstance(m, ClipBatchNorm1d)]
    for layer in layers:
        layer.clip_weight = float(clip_weight)
    return len(layers)
