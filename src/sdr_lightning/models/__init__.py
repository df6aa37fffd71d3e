"""The LightningModules: DigitClassifier (featurizer, augmentation, encoder and head, built from config) and SimCLR
(the same parts, trained contrastively). Architectures are encoders (`models/encoders/`)."""

from sdr_lightning.models.classifier import DigitClassifier
from sdr_lightning.models.simclr import SimCLR

__all__ = ["DigitClassifier", "SimCLR"]
