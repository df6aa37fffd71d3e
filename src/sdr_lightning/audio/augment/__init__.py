"""Training-time data augmentation: batched, length-aware modules that the model owns (identity in eval mode).

base.py: the Augmentation contract. waveform.py: speed, pitch, gain, noise, babble, band limit, mu-law codec,
reverb, clipping, voice shift, time shift, fade on (B, L) samples, on the functional core of audio/corrupt.py
(which the robustness suite's fixed conditions use too). spectrogram.py: SpecAugment masks, Mel frequency warp,
random equaliser (FilterAugment), time stretch, crop and warp on (B, n_mels, T) features.
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
from sdr_lightning.audio.augment.waveform import (
    AddNoise,
    BabbleNoise,
    BandLimit,
    Clipping,
    Fade,
    Gain,
    MuLaw,
    PitchShift,
    Reverb,
    RoomTonePauses,
    SpeedPerturb,
    TimeShift,
    VoiceShift,
)

__all__ = ["AddNoise", "Augmentation", "AugmentationPipeline", "BabbleNoise", "BandLimit", "Clipping", "Fade",
           "FilterAugment", "FreqWarp", "Gain", "MuLaw", "PitchShift", "Reverb", "RoomTonePauses", "SpecAugment",
           "SpeedPerturb", "TimeCrop", "TimeShift", "TimeStretch", "TimeWarp", "VoiceShift"]
