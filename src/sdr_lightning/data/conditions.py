"""The robustness suite: named, fixed-parameter corruptions of a split's clips (audio/corrupt.py does the work).

A condition is deterministic: its random draws (noise, babble talkers, room responses) come from a generator seeded
by the condition's name and the suite seed, so every model is scored on the very same corrupted clips. The
datamodule computes each condition's clips once and caches them with the other features (data/cache.py).

    SUITES["robustness"]   every condition, for eval.py suite=robustness and benchmarks/robustness.py
    SUITES["dev_robust"]   the subset DEV is seen under during training (data.robust_dev), for val/acc_robust
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sdr_lightning.audio import corrupt

# (waveforms, lengths, context) -> (waveforms, lengths)
Transform = Callable[[Tensor, Tensor, "Context"], tuple[Tensor, Tensor]]


@dataclass
class Context:
    """What a condition may draw on besides the clips: the rate, its own generator, and for babble a pool of
    recordings of speakers outside the evaluated split (the TRAIN speakers')."""

    sample_rate: int
    generator: torch.Generator
    babble_pool: Sequence[Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class Condition:
    name: str
    description: str
    transform: Transform
    # what a user meets it as: noise, channel, room, level, timing, sampling, voice
    kind: str

    def apply(self, waveforms: Sequence[Tensor], sample_rate: int, seed: int = 0,
              babble_pool: Sequence[Tensor] = (), batch_size: int = 64) -> list[Tensor]:
        """The corrupted version of each clip (1-D tensors in, 1-D tensors out), the same for the same seed."""
        context = Context(sample_rate, torch.Generator().manual_seed(condition_seed(self.name, seed)), babble_pool)
        out: list[Tensor] = []
        for start in range(0, len(waveforms), batch_size):
            chunk = waveforms[start:start + batch_size]
            lengths = torch.tensor([len(w) for w in chunk])
            batch = torch.stack([corrupt.fit_width(w, int(lengths.max())) for w in chunk])
            with torch.no_grad():
                corrupted, new_lengths = self.transform(batch, lengths, context)
            out.extend(row[:n].clone() for row, n in zip(corrupted, new_lengths.tolist()))
        return out

    @property
    def cache_key(self) -> str:
        return f"condition={self.name}|v1"


def condition_seed(name: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{name}|{seed}".encode()).digest()[:8], "little") & (2**63 - 1)


# ---- the transforms, each with its fixed parameters ----

def noise(color: str, snr_db: float) -> Transform:
    def transform(x: Tensor, n: Tensor, c: Context) -> tuple[Tensor, Tensor]:
        if color == "babble":
            source = corrupt.babble_noise(c.babble_pool, len(x), x.shape[-1], talkers=4, generator=c.generator)
        else:
            make = corrupt.pink_noise if color == "pink" else corrupt.white_noise
            source = make(len(x), x.shape[-1], c.generator)
        return corrupt.mix_at_snr(x, n, source, snr_db), n
    return transform


def telephone(x: Tensor, n: Tensor, c: Context) -> tuple[Tensor, Tensor]:
    return corrupt.mu_law(corrupt.band_pass(x, n, c.sample_rate, 300.0, 3400.0)) * corrupt.mask(n, x.shape[-1]), n


def reverb(x: Tensor, n: Tensor, c: Context) -> tuple[Tensor, Tensor]:
    rt60 = 0.3 + 0.3 * torch.rand(len(x), generator=c.generator)  # a room, per clip, RT60 0.3-0.6 s
    rir = corrupt.synthetic_rir(rt60, c.sample_rate, len(x), c.generator)
    return corrupt.reverberate(x, n, rir, tail_s=0.3, sample_rate=c.sample_rate)


def quiet(x: Tensor, n: Tensor, c: Context) -> tuple[Tensor, Tensor]:
    return corrupt.gain(x, -30.0), n


def clipped(x: Tensor, n: Tensor, c: Context) -> tuple[Tensor, Tensor]:
    return corrupt.overdrive(x, n, 4.0), n


def pauses(x: Tensor, n: Tensor, c: Context) -> tuple[Tensor, Tensor]:
    return corrupt.pad_with_room_tone(x, n, c.sample_rate, 0.5, 0.5, level_db=-40.0, generator=c.generator)


def resampled(rate: int) -> Transform:
    def transform(x: Tensor, n: Tensor, c: Context) -> tuple[Tensor, Tensor]:
        return corrupt.resample_through(x, n, c.sample_rate, rate)
    return transform


def voice(semitones: float, formant_factor: float) -> Transform:
    def transform(x: Tensor, n: Tensor, c: Context) -> tuple[Tensor, Tensor]:
        return corrupt.shift_voice(x, n, c.sample_rate, semitones, formant_factor), n
    return transform


def clean(x: Tensor, n: Tensor, c: Context) -> tuple[Tensor, Tensor]:
    return x, n


CONDITIONS: dict[str, Condition] = {c.name: c for c in [
    Condition("clean", "the clips as they are", clean, "reference"),
    *(Condition(f"{color}_{snr}db", f"{color} noise at {snr} dB SNR", noise(color, float(snr)), "noise")
      for color in ("white", "pink", "babble") for snr in (20, 10, 5)),
    Condition("telephone", "300-3400 Hz band and an 8-bit mu-law codec", telephone, "channel"),
    Condition("reverb", "a synthetic room, RT60 0.3-0.6 s", reverb, "room"),
    Condition("quiet", "30 dB quieter (gain -30 dB)", quiet, "level"),
    Condition("clipped", "overdriven 4x into hard clipping", clipped, "level"),
    Condition("pauses", "0.5 s of pause before and after, room tone 40 dB down", pauses, "timing"),
    Condition("resampled_16k", "recorded at 16 kHz and resampled to 8 kHz", resampled(16000), "sampling"),
    Condition("resampled_44k", "recorded at 44.1 kHz and resampled to 8 kHz", resampled(44100), "sampling"),
    Condition("higher_voice", "pitch +4 semitones, formants x1.08", voice(4.0, 1.08), "voice"),
    Condition("woman_voice", "pitch +9 semitones, formants x1.17 (a woman's, from a man's)", voice(9.0, 1.17),
              "voice"),
]}

SUITES: dict[str, list[str]] = {
    "robustness": [name for name in CONDITIONS if name != "clean"],
    # DEV under a fixed subset, for model selection: one of each kind a user meets
    "dev_robust": ["white_10db", "babble_10db", "telephone", "reverb", "clipped", "woman_voice"],
}


def suite(name_or_names: str | Sequence[str]) -> list[Condition]:
    """The conditions of a suite by name, or of a list of condition names; ValueError naming the unknown ones."""
    names = SUITES.get(name_or_names) if isinstance(name_or_names, str) else list(name_or_names)
    if names is None:
        raise ValueError(f"unknown suite {name_or_names!r}; use one of {sorted(SUITES)} or a list of conditions "
                         f"from {sorted(CONDITIONS)}")
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition(s) {unknown}; choose from {sorted(CONDITIONS)}")
    return [CONDITIONS[n] for n in names]
