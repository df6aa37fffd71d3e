"""Training-time data augmentation: batched, length-aware modules that the model owns (identity in eval mode).

base.py: the Augmentation contract. waveform.py: speed, pitch, gain, noise, time shift, fade on (B, L) samples.
spectrogram.py: SpecAugment masks, Mel frequency warp, random equaliser (FilterAugment), time stretch, crop and
warp on (B, n_mels, T) features.
pipeline.py: the model's two chains, built from the `augment` config (conf/augment/).
"""

from sdr_lightning.audio.augment.base import Augmentation
from sdr_lightning.audio.augment.pipeline import AugmentationPipeline
from sdr_lightning.audio.augment.spectrogram import (
           FilterAugment,
           FreqWarp,
           SpecAugment,
           TimeCrop,
           TimeStretch,
           TimeWarp,
)
from sdr_lightning.audio.augment.waveform import AddNoise, Fade, Gain, PitchShift, SpeedPerturb, TimeShift

__all__ = ["AddNoise", "Augmentation", "AugmentationPipeline", "Fade", "FilterAugment", "FreqWarp", "Gain",
           "PitchShift", "SpecAugment", "SpeedPerturb", "TimeCrop", "TimeShift", "TimeStretch", "TimeWarp"]
