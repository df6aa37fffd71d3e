"""The Task I baseline's fixed-size input: the downsampled Mel vector (with a linear head: logistic regression)."""

from __future__ import annotations

from torch import Tensor, nn

from sdr_lightning.audio.features import downsample_spectrogram


class DownsampledMel(nn.Module):
    """Fixed-size vector per clip: `n_chunks` time-chunk means of every Mel bin, standardised like
    scikit-learn's StandardScaler (statistics of the training data, kept as running averages)."""

    def __init__(self, n_mels: int, n_chunks: int = 10, standardize: bool = True) -> None:
        super().__init__()
        self.n_chunks = n_chunks
        self.output_dim = n_mels * n_chunks
        self.scaler = nn.BatchNorm1d(self.output_dim, affine=False) if standardize else nn.Identity()

    def forward(self, features: Tensor, frames: Tensor) -> Tensor:
        return self.scaler(downsample_spectrogram(features, self.n_chunks, frames))
