"""BatchNorm that, at inference, lets each clip normalise itself a little (a single-clip form of the prior blend of
Schneider et al., 2020, "Improving robustness against common corruptions by covariate shift adaptation").

A BatchNorm layer normalises with the mean and variance it saw in training. A voice, room or noise the model never
heard shifts those statistics, and the layers after it then read their inputs wrongly. Here each channel's mean and
variance at inference are (1 - w) times the training statistics plus w times the clip's own, over its valid frames
only: the clip alone decides (no calibration set, unlike adapt.py), and padding is never counted. Training is plain
BatchNorm unless `in_training` asks for the same blend there too. docs/robustness.md (twenty-seventh round) measures
it on held-out speakers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def clip_statistics(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Each clip's per-channel mean and (biased) variance over the frames where `mask` (B, 1, T) is nonzero, both
    (B, C), and each clip's frame count (B, 1)."""
    if mask is None:
        count = x.new_full((x.shape[0], 1), x.shape[-1])
        total, square = x.sum(-1), x.square().sum(-1)
    else:
        count = mask.sum(-1).clamp(min=1)
        masked = x * mask
        total, square = masked.sum(-1), (masked * x).sum(-1)
    mean = total / count
    return mean, (square / count - mean.square()).clamp(min=0), count


def clip_batch_norm(x: Tensor, mask: Tensor | None, layer: nn.modules.batchnorm._BatchNorm,
                    clip_weight: float, shared: tuple[Tensor, Tensor] | None = None,
                    clip: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """`layer` (a BatchNorm1d) applied to `x` (B, C, T), with each clip's statistics over the frames where `mask`
    (B, 1, T) is nonzero (or `clip`, those already computed) blended at `clip_weight` (0: plain BatchNorm) into
    `shared` (mean, variance), by default the layer's running ones."""
    shared_mean, shared_var = (layer.running_mean, layer.running_var) if shared is None else shared
    clip_mean, clip_var = clip_statistics(x, mask)[:2] if clip is None else clip
    mean = torch.lerp(shared_mean.expand_as(clip_mean), clip_mean, clip_weight)
    var = torch.lerp(shared_var.expand_as(clip_var), clip_var, clip_weight)
    scale = torch.rsqrt(var + layer.eps)
    if layer.affine:
        scale = scale * layer.weight
    shift = -mean * scale if not layer.affine else layer.bias - mean * scale
    return torch.addcmul(shift[..., None], x, scale[..., None])  # one pass over x: x * scale + shift


class ClipBatchNorm1d(nn.BatchNorm1d):
    """`nn.BatchNorm1d` (the same parameters, buffers and state-dict keys) that, in eval mode with `clip_weight` > 0,
    blends each clip's own statistics into the running ones (`clip_batch_norm`). Training is plain BatchNorm, unless
    `in_training`: then each clip's statistics are blended into the batch's (both over valid frames only), and the
    running statistics follow the batch's by BatchNorm's own momentum rule."""

    def __init__(self, num_features: int, clip_weight: float = 0.0, in_training: bool = False) -> None:
        super().__init__(num_features)
        self.clip_weight = float(clip_weight)
        self.in_training = in_training

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if not self.clip_weight or (self.training and not self.in_training):
            return super().forward(x)
        if not self.training:
            return clip_batch_norm(x, mask, self, self.clip_weight)
        mean, var, count = clip_statistics(x, mask)
        frames = count.sum()
        weights = count / frames  # the batch's statistics over every valid frame: the clips' pooled
        batch_mean = (weights * mean).sum(0)
        batch_var = (weights * (var + (mean - batch_mean).square())).sum(0)
        self._update_running(batch_mean.detach(), batch_var.detach(), frames)
        return clip_batch_norm(x, mask, self, self.clip_weight, shared=(batch_mean, batch_var), clip=(mean, var))

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, frames: Tensor) -> None:
        """As nn.BatchNorm1d updates them in training: momentum (or a cumulative average when it is None), the
        variance unbiased."""
        if not self.track_running_stats:
            return
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (frames / (frames - 1).clamp(min=1))
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(unbiased, factor)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", clip_weight={self.clip_weight}, in_training={self.in_training}"


def set_clip_weight(model: nn.Module, clip_weight: float, in_training: bool | None = None) -> int:
    """Set `clip_weight` (and `in_training`, when given) on every ClipBatchNorm1d of `model` (e.g. to score a
    checkpoint trained before the option); returns how many layers it set."""
    layers = [m for m in model.modules() if isinstance(m, ClipBatchNorm1d)]
    for layer in layers:
        layer.clip_weight = float(clip_weight)
        if in_training is not None:
            layer.in_training = in_training
    return len(layers)
