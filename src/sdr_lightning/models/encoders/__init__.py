"""Encoders: (B, n_mels, T) features + (B,) frame counts -> (B, output_dim) embeddings.

Each is a plain `nn.Module` built by `conf/encoder/<name>.yaml`; DigitClassifier passes `n_mels` (the featurizer's)
and reads `output_dim` (and `members`, for a packed ensemble). docs/architecture.md shows how to add one.
"""

from sdr_lightning.models.encoders.bcresnet import BCResNet
from sdr_lightning.models.encoders.cnn import TemporalCNN
from sdr_lightning.models.encoders.downsampled_mel import DownsampledMel
from sdr_lightning.models.encoders.vit import SpectrogramTransformer

__all__ = ["BCResNet", "DownsampledMel", "SpectrogramTransformer", "TemporalCNN"]
