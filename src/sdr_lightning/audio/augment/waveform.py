"""Waveform augmentations: (B, L) padded samples + (B,) lengths, batched, padding kept at zero.

Random choices that change a clip's duration or spectrum are drawn from a few discrete values, so that a
batch costs one torchaudio call per value present rather than one per clip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchaudio.functional as AF
from torch import Tensor

from sdr_lightning.audio.augment.base import Augmentation, check_range, uniform
from sdr_lightning.audio.features import lengths_to_mask
from sdr_lightning.errors import ConfigError

# Pitch-shift resampling rates are rounded to this many Hz, so the rational resampling ratio has a small
# denominator (8000 -> 8500 Hz is 16/17) and its polyphase kernel stays short.
RATE_GRID_HZ = 50


class SpeedPerturb(Augmentation):
    """Kaldi-style speed perturbation: each clip plays `factor` times as fast, tempo and pitch together.

    A clip of n samples comes out with ceil(n / factor). One `torchaudio.functional.resample` per factor
    present in the batch.
    """

    def __init__(self, factors: Sequence[float] = (0.9, 1.0, 1.1), sample_rate: int = 8000, p: float = 1.0) -> None:
        super().__init__(p)
        if not factors or any(f <= 0 for f in factors):
            raise ConfigError(f"SpeedPerturb: factors={list(factors)}; give one or more positive factors, "
                              "e.g. [0.9, 1.0, 1.1].")
        self.factors = tuple(float(f) for f in factors)
        self.sample_rate = int(sample_rate)

    def augment(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        choice = _choose(len(self.factors), self.drawn(len(waveform), waveform.device))
        new_lengths = lengths.clone()
        groups = []
        for index, factor in enumerate(self.factors):
            rows = torch.nonzero(choice == index).squeeze(1)
            # Treat the clip as recorded at factor x the rate: played at sample_rate it is factor x faster.
            source_rate = round(self.sample_rate * factor)
            if rows.numel() == 0 or source_rate == self.sample_rate:
                continue
            groups.append((rows, AF.resample(waveform[rows], source_rate, self.sample_rate)))
            new_lengths[rows] = (lengths[rows] * self.sample_rate + source_rate - 1) // source_rate
        if not groups:
            return waveform, lengths
        width = int(new_lengths.max())
        out = fit_width(waveform, width)
        for rows, resampled in groups:
            out[rows] = fit_width(resampled, width)
        return out * lengths_to_mask(new_lengths, width), new_lengths


class PitchShift(Augmentation):
    """Shift each clip's pitch by a whole number of `semitones`, keeping its duration.

    The batched form of `torchaudio.functional.pitch_shift`: a phase-vocoder time stretch by 2^(n/12)
    (one batched STFT per step present), then resampling back to the original duration. The resampling rate
    is rounded to RATE_GRID_HZ, which keeps the resampling kernel short (the per-clip torchaudio function is
    slow because 2^(n/12) makes a long one); a step is then off by at most ~0.1 semitone.
    """

    def __init__(self, semitones: Sequence[float] = (-2, -1, 0, 1, 2), sample_rate: int = 8000, n_fft: int = 256,
                 hop_length: int = 64, p: float = 1.0) -> None:
        super().__init__(p)
        if not semitones:
            raise ConfigError("PitchShift: semitones is empty; give the steps to draw from, e.g. [-2, -1, 0, 1, 2].")
        self.semitones = tuple(float(s) for s in semitones)
        self.sample_rate, self.n_fft, self.hop_length = int(sample_rate), n_fft, hop_length

    def augment(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        choice = _choose(len(self.semitones), self.drawn(len(waveform), waveform.device))
        out = waveform.clone()
        for index, step in enumerate(self.semitones):
            rows = torch.nonzero(choice == index).squeeze(1)
            if rows.numel() == 0 or self.source_rate(step) == self.sample_rate:
                continue
            out[rows] = self.shift(waveform[rows], step)
        return out * lengths_to_mask(lengths, out.shape[-1]), lengths

    def source_rate(self, step: float) -> int:
        return round(self.sample_rate * 2.0 ** (step / 12) / RATE_GRID_HZ) * RATE_GRID_HZ

    def shift(self, waveform: Tensor, step: float) -> Tensor:
        source_rate = self.source_rate(step)
        rate = self.sample_rate / source_rate  # < 1 for an upward shift: stretch longer, then play faster
        length = waveform.shape[-1]
        window = torch.hann_window(self.n_fft, device=waveform.device, dtype=waveform.dtype)
        # Zero (not reflect) padding: works for clips shorter than half a window and adds no mirrored audio.
        spectrum = torch.stft(waveform, self.n_fft, self.hop_length, window=window, pad_mode="constant",
                              return_complex=True)
        advance = torch.linspace(0, math.pi * self.hop_length, spectrum.shape[-2], device=waveform.device)[:, None]
        stretched = AF.phase_vocoder(spectrum, rate, advance)
        slow = torch.istft(stretched, self.n_fft, self.hop_length, window=window, length=round(length / rate))
        return fit_width(AF.resample(slow, source_rate, self.sample_rate), length)


class Gain(Augmentation):
    """Scale each clip by a random gain in [min_db, max_db] dB.

    The default LogMel (peak-relative floor, per-utterance normalisation) is blind to a clip's level, so
    this matters only for scale-sensitive features (`normalization: none`) or before a fixed-level stage.
    """

    def __init__(self, min_db: float = -6.0, max_db: float = 6.0, p: float = 1.0) -> None:
        super().__init__(p)
        check_range("Gain: [min_db, max_db]", min_db, max_db)
        self.min_db, self.max_db = min_db, max_db

    def augment(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        batch = len(waveform)
        db = uniform(self.min_db, self.max_db, batch, waveform.device) * self.drawn(batch, waveform.device)
        return waveform * (10.0 ** (db / 20.0)).to(waveform.dtype)[:, None], lengths


NOISE_COLORS = ("white", "pink")


class AddNoise(Augmentation):
    """Add white or pink noise at an SNR drawn from [min_snr_db, max_snr_db].

    Signal and noise power are both measured over the clip's valid samples, so the SNR is exact per clip
    whatever the padding; the noise stops at the clip's end.
    """

    def __init__(self, min_snr_db: float = 10.0, max_snr_db: float = 30.0,
                 colors: Sequence[str] = NOISE_COLORS, p: float = 1.0) -> None:
        super().__init__(p)
        check_range("AddNoise: [min_snr_db, max_snr_db]", min_snr_db, max_snr_db)
        unknown = sorted(set(colors) - set(NOISE_COLORS))
        if not colors or unknown:
            raise ConfigError(f"AddNoise: colors={list(colors)}; choose from {list(NOISE_COLORS)}.")
        self.min_snr_db, self.max_snr_db = min_snr_db, max_snr_db
        self.colors = tuple(colors)

    def augment(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        batch, width = waveform.shape
        device, dtype = waveform.device, waveform.dtype
        snr_db = uniform(self.min_snr_db, self.max_snr_db, batch, device)
        color = _choose(len(self.colors), self.drawn(batch, device))
        noise = torch.zeros_like(waveform)
        for index, name in enumerate(self.colors):  # noise only for the clips that get it
            rows = torch.nonzero(color == index).squeeze(1)
            if rows.numel():
                make = pink_noise if name == "pink" else white_noise
                noise[rows] = make(rows.numel(), width, device, dtype)
        mask = lengths_to_mask(lengths, width).to(dtype)
        noise = noise * mask
        count = lengths.clamp(min=1).to(dtype)
        signal_power = (waveform.square() * mask).sum(1) / count
        noise_power = noise.square().sum(1) / count
        scale = torch.sqrt(signal_power / (noise_power.clamp(min=1e-12) * 10.0 ** (snr_db / 10.0)))
        return waveform + noise * scale[:, None], lengths


def white_noise(batch: int, length: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(batch, length, device=device, dtype=dtype)


def pink_noise(batch: int, length: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, length) noise with a 1/f power spectrum: white noise shaped in the frequency domain."""
    spectrum = torch.fft.rfft(torch.randn(batch, length, device=device, dtype=dtype))
    frequency = torch.arange(spectrum.shape[-1], device=device, dtype=dtype).clamp(min=1)
    return torch.fft.irfft(spectrum / frequency.sqrt(), n=length)


FADE_SHAPES = ("linear", "logarithmic", "exponential", "quarter_sine", "half_sine")


class Fade(Augmentation):
    """Fade each clip in and out: gain ramps up from silence over its first samples and down to silence over
    its last ones, each ramp up to `max_fraction` of the clip's length, in a shape drawn per clip from `shapes`
    (torchaudio.transforms.Fade's curves). With time masks, CLAR's best contrastive view (Al-Tahan and
    Mohsenzadeh, 2021); lengths never change.
    """

    def __init__(self, max_fraction: float = 0.5, shapes: Sequence[str] = ("linear", "logarithmic", "exponential"),
                 p: float = 1.0) -> None:
        super().__init__(p)
        check_range("Fade: max_fraction", 0.0, max_fraction)
        if max_fraction > 1.0:
            raise ConfigError(f"Fade: max_fraction={max_fraction}; use a fraction of the clip in [0, 1], e.g. 0.5.")
        unknown = sorted(set(shapes) - set(FADE_SHAPES))
        if not shapes or unknown:
            raise ConfigError(f"Fade: shapes={list(shapes)}; choose from {list(FADE_SHAPES)}.")
        self.max_fraction, self.shapes = max_fraction, tuple(shapes)

    def augment(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        batch, width = waveform.shape
        device = waveform.device
        fade_in, fade_out = ((uniform(0.0, self.max_fraction, batch, device) * lengths).round() for _ in range(2))
        step = torch.arange(width, device=device, dtype=torch.float32)[None, :]
        # Ramp positions in [0, 1]: 0 at the clip's first (last) sample, 1 from the end of the fade on.
        rise = (step / fade_in[:, None].clamp(min=1)).clamp(max=1.0)
        fall = ((lengths[:, None] - 1 - step) / fade_out[:, None].clamp(min=1)).clamp(0.0, 1.0)
        rise = torch.where(fade_in[:, None] > 0, rise, torch.ones_like(rise))
        fall = torch.where(fade_out[:, None] > 0, fall, torch.ones_like(fall))
        shape = _choose(len(self.shapes), self.drawn(batch, device))
        gain = torch.ones_like(waveform)
        for index, name in enumerate(self.shapes):
            rows = torch.nonzero(shape == index).squeeze(1)
            if rows.numel():
                gain[rows] = (fade_curve(rise[rows], name) * fade_curve(fall[rows], name)).to(waveform.dtype)
        return waveform * gain * lengths_to_mask(lengths, width), lengths


def fade_curve(ramp: Tensor, shape: str) -> Tensor:
    """Gain in [0, 1] at ramp positions in [0, 1] (0: silent, 1: full level), torchaudio's fade shapes."""
    if shape == "linear":
        return ramp
    if shape == "logarithmic":
        return (torch.log10(0.1 + ramp) + 1.0).clamp(0.0, 1.0)
    if shape == "exponential":
        return torch.pow(2.0, (ramp - 1.0) * 5.0)
    if shape == "quarter_sine":
        return torch.sin(ramp * math.pi / 2)
    return torch.sin(ramp * math.pi - math.pi / 2) / 2 + 0.5  # half_sine


SHIFT_MODES = ("circular", "pad")


class TimeShift(Augmentation):
    """Shift each clip by up to `max_fraction` of its own length, either way, inside its valid samples.

    `circular`: what leaves one end comes back at the other (nothing is lost). `pad`: zeros come in and
    what is shifted past the clip's end is dropped. Lengths never change.
    """

    def __init__(self, max_fraction: float = 0.1, mode: str = "circular", p: float = 1.0) -> None:
        super().__init__(p)
        if mode not in SHIFT_MODES:
            raise ConfigError(f"TimeShift: mode={mode!r}; use one of {list(SHIFT_MODES)}.")
        check_range("TimeShift: max_fraction", 0.0, max_fraction)
        self.max_fraction, self.mode = max_fraction, mode

    def augment(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        batch, width = waveform.shape
        device = waveform.device
        shift = (uniform(-1.0, 1.0, batch, device) * self.max_fraction * lengths).round().long()
        shift = shift * self.drawn(batch, device)
        step = torch.arange(width, device=device)[None, :]
        source = step - shift[:, None]
        valid = step < lengths[:, None]
        if self.mode == "circular":
            source = torch.remainder(source, lengths.clamp(min=1)[:, None])
        else:
            valid &= (source >= 0) & (source < lengths[:, None])
        return torch.gather(waveform, 1, source.clamp(0, width - 1)) * valid, lengths


def fit_width(x: Tensor, width: int) -> Tensor:
    """Zero-pad or cut the last axis to `width`."""
    if x.shape[-1] >= width:
        return x[..., :width].clone()
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]))


def _choose(options: int, drawn: Tensor) -> Tensor:
    """(B,) index of the option each drawn clip takes; -1 for clips left alone."""
    choice = torch.randint(options, drawn.shape, device=drawn.device)
    return torch.where(drawn, choice, torch.full_like(choice, -1))
