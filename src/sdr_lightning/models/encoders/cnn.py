"""1-D temporal CNN over Mel frames (channels = Mel bins), any clip length, padding masked out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sdr_lightning.audio.features import lengths_to_mask
from sdr_lightning.models.dropout import Dropout16
from sdr_lightning.models.normalization import ClipBatchNorm1d


class TemporalCNN(nn.Module):
    """Stem conv, residual dilated conv blocks, then mean and max pooling over valid frames only.

    `members` > 1 packs that many independent CNNs of `channels` channels each into grouped convolutions (a
    "packed ensemble"): one forward pass, members that share nothing but the input.

    Activations are zeroed past each clip's end after every block, so a clip's output (in eval mode)
    does not depend on how much padding its batch added.

    `fast_dropout` draws the dropout masks with 16 random bits per element (models/dropout.py) instead of torch's
    64: the same regularizer, another random stream, and a training step about a third shorter on CPU.

    Its BatchNorm layers can blend each clip's own statistics into the training ones at inference
    (models/normalization.py; the classifier's `clip_norm` sets the weight, 0 by default).
    """

    def __init__(
        self,
        n_mels: int,
        channels: int = 128,
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 2, 4, 8),
        dropout: float = 0.2,
        members: int = 1,
        fast_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.members = members
        width = members * channels
        self.stem = nn.Sequential(
            nn.Conv1d(n_mels, width, kernel_size, padding=kernel_size // 2, bias=False),
            ClipBatchNorm1d(width), nn.ReLU(),
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(width, width, kernel_size, padding=d * (kernel_size // 2), dilation=d, groups=members,
                          bias=False),
                ClipBatchNorm1d(width), nn.ReLU(),
                Dropout16(dropout) if fast_dropout else nn.Dropout(dropout),
            )
            for d in dilations
        )
        self.output_dim = 2 * width
        # one clip at inference: grouped convolutions as one matrix product (grouped_conv1d); an attribute, not a
        # hyperparameter, so benchmarks/inference_latency.py can time the library's kernel beside it
        self.single_clip_matmul = True

    def forward(self, features: Tensor, frames: Tensor) -> Tensor:
        mask = lengths_to_mask(frames, features.shape[-1])[:, None, :].to(features.dtype)
        conv, norm, relu = self.stem
        x = relu(norm(conv(features), mask)) * mask
        one_clip = (self.single_clip_matmul and self.members > 1 and not self.training and x.shape[0] == 1
                    and not _tracing())
        for block in self.blocks:
            conv, norm, *layers = block  # not block[1:]: slicing builds a new Sequential on every call
            # one clip: the same convolution as one matrix product (see grouped_conv1d)
            out = norm(grouped_conv1d(x, conv) if one_clip else conv(x), mask)
            for layer in layers:
                out = layer(out)
            x = (x + out) * mask
        mean = x.sum(-1) / mask.sum(-1).clamp(min=1)
        peak = x.masked_fill(mask == 0, -torch.inf).amax(-1)
        # member-major layout, (B, members * 2 * channels), so each member's slice is contiguous for its head
        batch = x.shape[0]
        return torch.cat([mean.view(batch, self.members, -1), peak.view(batch, self.members, -1)], dim=2).flatten(1)


def grouped_conv1d(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """`conv(x)` for a grouped, dilated, stride-1 convolution, computed as one batched matrix product over the
    gathered taps. For a single clip at inference oneDNN's grouped kernel is slower than this (a packed ensemble's
    single-clip latency falls by about 8%, docs/speed.md); for batches and for training the library's kernel is
    faster, so the encoder calls this for one clip in eval mode only. The sums run in another order: outputs agree
    to float rounding (about 1e-6 relative), not bit for bit."""
    if conv.stride != (1,) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return conv(x)
    (dilation,), (padding,), taps = conv.dilation, conv.padding, conv.kernel_size[0]
    batch, channels, length = x.shape
    groups, out_channels = conv.groups, conv.out_channels
    out_length = length + 2 * padding - dilation * (taps - 1)
    padded = nn.functional.pad(x, (padding, padding))
    # (batch, groups, in_channels/groups * taps, out_length): input channel-major, tap-minor, as the weight is laid out
    gathered = torch.stack([padded[..., k * dilation:k * dilation + out_length] for k in range(taps)], dim=2)
    gathered = gathered.reshape(batch, groups, channels // groups * taps, out_length)
    weight = conv.weight.reshape(groups, out_channels // groups, channels // groups * taps)
    out = torch.matmul(weight, gathered).reshape(batch, out_channels, out_length)
    return out if conv.bias is None else out + conv.bias[:, None]


def _tracing() -> bool:
    """Whether the model is being traced or exported (TorchScript, ONNX, torch.export, torch.compile): the exported
    graph keeps one path for every batch size."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling() or \
        torch.onnx.is_in_onnx_export()
