"""Task I baseline: multinomial logistic regression on the downsampled Mel vector."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from sdr_lightning.features import downsample_spectrogram
from sdr_lightning.models.classifier import DigitClassifier


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


class LinearClassifier(DigitClassifier):
    def __init__(self, n_chunks: int = 10, standardize: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoder = DownsampledMel(self.featurizer.n_mels, n_chunks, standardize)
        self.attach_head()
