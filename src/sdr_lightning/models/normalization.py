"""BatchNorm that, at inference, lets each clip normalise itself a little (a single-clip form of the prior blend of
Schneider et al., 2020, "Improving robustness against common corruptions by covariate shift adaptation").

A BatchNorm layer normalises with the mean and variance it saw in training. A voice, room or noise the model never
heard shifts those statistics, and the layers after it then read their inputs wrongly. Here each channel's mean and
variance at inference are (1 - w) times the training statistics plus w times the clip's own, over its valid frames
only: the clip alone decides (no calibration set, unlike adapt.py), padding is never counted, and training is
unchanged. docs/robustness.md (twenty-seventh round) measures it on held-out speakers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def clip_batch_norm(x: Tensor, mask: Tensor | None, layer: nn.modules.batchnorm._BatchNorm,
                    clip_weight: float, shared: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """`layer` (a BatchNorm1d) applied to `x` (B, C, T), with each clip's statistics over the frames where `mask`
    (B, 1, T) is nonzero blended at `clip_weight` (0: plain BatchNorm) into `shared` (mean, variance), by default
    the layer's running ones."""
    if mask is None:
        mask = x.new_ones(x.shape[0], 1, x.shape[-1])
    shared_mean, shared_var = (layer.running_mean, layer.running_var) if shared is None else shared
    count = mask.sum(-1).clamp(min=1)  # (B, 1)
    mean = (x * mask).sum(-1) / count  # (B, C)
    var = ((x - mean[..., None]).square() * mask).sum(-1) / count
    mean = (1 - clip_weight) * shared_mean + clip_weight * mean
    var = (1 - clip_weight) * shared_var + clip_weight * var
    out = (x - mean[..., None]) * torch.rsqrt(var + layer.eps)[..., None]
    if layer.affine:
        out = out * layer.weight[:, None] + layer.bias[:, None]
    return out


class ClipBatchNorm1d(nn.BatchNorm1d):
    """`nn.BatchNorm1d` (the same parameters, buffers and state-dict keys) that, in eval mode with `clip_weight` > 0,
    blends each clip's own statistics into the running ones (`clip_batch_norm`). Training is plain BatchNorm, unless
    `in_training`: then each clip's statistics are blended into the batch's alike, and the running statistics still
    follow the batch's, as plain BatchNorm keeps them."""

    def __init__(self, num_features: int, clip_weight: float = 0.0, in_training: bool = False) -> None:
        super().__init__(num_features)
        self.clip_weight = float(clip_weight)
        self.in_training = in_training

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if not self.clip_weight or (self.training and not self.in_training):
            return super().forward(x)
        if not self.training:
            return clip_batch_norm(x, mask, self, self.clip_weight)
        super().forward(x)  # the running statistics, updated exactly as plain BatchNorm updates them
        batch = (x.mean(dim=(0, 2)), x.var(dim=(0, 2), unbiased=False))
        return clip_batch_norm(x, mask, self, self.clip_weight, shared=batch)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", clip_weight={self.clip_weight}"


def set_clip_weight(model: nn.Module, clip_weight: float, in_training: bool | None = None) -> int:
    """Set `clip_weight` (and `in_training`, when given) on every ClipBatchNorm1d of `model` (e.g. to score a
    checkpoint trained before the option); returns how many layers it set."""
    layers = [m for m in model.modules() if isinstance(m, ClipBatchNorm1d)]
    for layer in layers:
        layer.clip_weight = float(clip_weight)
        if in_training is not None:
            layer.in_training = in_training
    return len(layers)
