"""Waveform augmentations: (B, L) padded samples + (B,) lengths, batched, padding kept at zero.

Random choices that change a clip's duration or spectrum are drawn from a few discrete values, so that a
batch costs one torchaudio call per value present rather than one per clip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sdr_lightning.audio import corrupt
from sdr_lightning.audio.augment.base import Augmentation, check_range, uniform
from sdr_lightning.audio.corrupt import fit_width
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
            if rows.numel() == 0 or round(self.sample_rate * factor) == self.sample_rate:
                continue
            faster, new_lengths[rows] = corrupt.speed(waveform[rows], lengths[rows], self.sample_rate, factor)
            groups.append((rows, faster))
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
        return corrupt.pitch_shift(waveform, self.sample_rate, step, RATE_GRID_HZ, self.n_fft, self.hop_length)


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
        return corrupt.gain(waveform, db.to(waveform.dtype)), lengths


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
                make = corrupt.pink_noise if name == "pink" else corrupt.white_noise
                noise[rows] = make(rows.numel(), width, device=device, dtype=dtype)
        return corrupt.mix_at_snr(waveform, lengths, noise, snr_db), lengths


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


def _choose(options: int, drawn: Tensor) -> Tensor:
    """(B,) index of the option each drawn clip takes; -1 for clips left alone."""
    choice = torch.randint(options, drawn.shape, device=drawn.device)
    return torch.where(drawn, choice, torch.full_like(choice, -1))


class BabbleNoise(Augmentation):
    """Babble: each clip mixed with `talkers` other clips of its batch (other training speakers, mostly), each at
    unit loudness from a random start, at an SNR drawn from [min_snr_db, max_snr_db]. The robustness suite's babble
    conditions mix clips of speakers outside the evaluated split the same way (corrupt.babble_noise)."""

    def __init__(self, min_snr_db: float = 5.0, max_snr_db: float = 25.0, talkers: int = 3, p: float = 0.5) -> None:
        super().__init__(p)
        check_range("BabbleNoise: [min_snr_db, max_snr_db]", min_snr_db, max_snr_db)
        if talkers < 1:
            raise ConfigError(f"BabbleNoise: talkers={talkers}; use at least 1.")
        self.min_snr_db, self.max_snr_db, self.talkers = min_snr_db, max_snr_db, talkers

    def augment(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        batch, width = waveform.shape
        device, dtype = waveform.device, waveform.dtype
        drawn = self.drawn(batch, device)
        snr_db = uniform(self.min_snr_db, self.max_snr_db, batch, device)
        if batch < 2:
            return waveform, lengths
        unit = waveform / corrupt.power(waveform, lengths).sqrt().clamp(min=1e-8)[:, None]
        step = torch.arange(width, device=device)[None, :]
        noise = torch.zeros_like(waveform)
        for _ in range(self.talkers):
            other = (torch.arange(batch, device=device) + torch.randint(1, batch, (batch,), device=device)) % batch
            start = (torch.rand(batch, device=device) * lengths[other]).long()
            source = torch.remainder(step + start[:, None], lengths[other].clamp(min=1)[:, None])  # loops the talker
            noise += torch.gather(unit[other], 1, source)
        mixed = corrupt.mix_at_snr(waveform, lengths, noise * drawn[:, None].to(dtype), snr_db)
        return torch.where(drawn[:, None], mixed, waveform), lengths


class BandLimit(Augmentation):
    """A narrower channel: keep a band whose low edge is drawn from [min_low_hz, max_low_hz] and whose high edge
    from [min_high_hz, max_high_hz] per clip (a telephone passes 300-3400 Hz; corrupt.band_pass)."""

    def __init__(self, min_low_hz: float = 50.0, max_low_hz: float = 400.0, min_high_hz: float = 2800.0,
                 max_high_hz: float = 4000.0, sample_rate: int = 8000, p: float = 0.5) -> None:
        super().__init__(p)
        check_range("BandLimit: [min_low_hz, max_low_hz]", min_low_hz, max_low_hz, lowest=0.0)
        check_range("BandLimit: [min_high_hz, max_high_hz]", min_high_hz, max_high_hz)
        if max_low_hz >= min_high_hz:
            raise ConfigError(f"BandLimit: max_low_hz={max_low_hz} must lie below min_high_hz={min_high_hz}.")
        self.low, self.high = (min_low_hz, max_low_hz), (min_high_hz, max_high_hz)
        self.sample_rate = int(sample_rate)

    def augment(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        batch, device = len(waveform), waveform.device
        drawn = self.drawn(batch, device)
        low = uniform(*self.low, batch, device)
        high = uniform(*self.high, batch, device)
        if not drawn.any():
            return waveform, lengths
        filtered = corrupt.band_pass(waveform, lengths, self.sample_rate, low, high)
        return torch.where(drawn[:, None], filtered, waveform), lengths


class MuLaw(Augmentation):
    """Through an 8-bit mu-law codec and back (G.711, the phone network's), on a random share `p` of the clips."""

    def __init__(self, bits: int = 8, p: float = 0.3) -> None:
        super().__init__(p)
        if not 2 <= bits <= 16:
            raise ConfigError(f"MuLaw: bits={bits}; use 2..16 (telephony uses 8).")
        self.bits = bits

    def augment(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        drawn = self.drawn(len(waveform), waveform.device)
        coded = corrupt.mu_law(waveform, self.bits) * lengths_to_mask(lengths, waveform.shape[-1])
        return torch.where(drawn[:, None], coded, waveform), lengths


class Reverb(Augmentation):
    """A synthetic room per clip: exponentially decaying noise whose energy falls 60 dB in an RT60 drawn from
    [min_rt60_s, max_rt60_s] (corrupt.synthetic_rir), keeping `tail_s` of the reverberant tail."""

    def __init__(self, min_rt60_s: float = 0.2, max_rt60_s: float = 0.8, tail_s: float = 0.3,
                 sample_rate: int = 8000, p: float = 0.5) -> None:
        super().__init__(p)
        check_range("Reverb: [min_rt60_s, max_rt60_s]", min_rt60_s, max_rt60_s, lowest=0.01)
        self.min_rt60_s, self.max_rt60_s, self.tail_s = min_rt60_s, max_rt60_s, tail_s
        self.sample_rate = int(sample_rate)

    def augment(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        batch, device = len(waveform), waveform.device
        drawn = self.drawn(batch, device)
        rt60 = uniform(self.min_rt60_s, self.max_rt60_s, batch, device)
        if not drawn.any():
            return waveform, lengths
        rows = torch.nonzero(drawn).squeeze(1)
        rir = corrupt.synthetic_rir(rt60[rows].cpu(), self.sample_rate, rows.numel()).to(device)
        wet, wet_lengths = corrupt.reverberate(waveform[rows], lengths[rows], rir, self.tail_s, self.sample_rate)
        new_lengths = lengths.clone()
        new_lengths[rows] = wet_lengths
        out = fit_width(waveform, wet.shape[-1])
        out[rows] = wet
        return out * lengths_to_mask(new_lengths, out.shape[-1]), new_lengths


class Clipping(Augmentation):
    """An input stage driven too hot: each drawn clip's peak raised to a drive in [min_drive, max_drive] times full
    scale, then cut at +-1 (corrupt.overdrive)."""

    def __init__(self, min_drive: float = 1.0, max_drive: float = 6.0, p: float = 0.3) -> None:
        super().__init__(p)
        check_range("Clipping: [min_drive, max_drive]", min_drive, max_drive, lowest=1e-3)
        self.min_drive, self.max_drive = min_drive, max_drive

    def augment(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        batch, device = len(waveform), waveform.device
        drawn = self.drawn(batch, device)
        drive = uniform(self.min_drive, self.max_drive, batch, device)
        clipped = corrupt.overdrive(waveform, lengths, drive)
        return torch.where(drawn[:, None], clipped, waveform), lengths


class RoomTonePauses(Augmentation):
    """A recording started early and stopped late: each drawn clip gets a pause of up to `max_pause_s` before and after
    (each drawn apart), with room tone (pink noise) `level_db` below the clip's own power, from [min_level_db,
    max_level_db], under the pauses and the speech alike (corrupt.pad_with_room_tone, the `pauses` condition's code)."""

    def __init__(self, max_pause_s: float = 0.5, min_level_db: float = -50.0, max_level_db: float = -30.0,
                 sample_rate: int = 8000, p: float = 0.2) -> None:
        super().__init__(p)
        check_range("RoomTonePauses: [0, max_pause_s]", 0.0, max_pause_s)
        check_range("RoomTonePauses: [min_level_db, max_level_db]", min_level_db, max_level_db)
        self.max_pause_s, self.min_level_db, self.max_level_db = max_pause_s, min_level_db, max_level_db
        self.sample_rate = int(sample_rate)

    def augment(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        batch, device = len(waveform), waveform.device
        drawn = self.drawn(batch, device)
        pauses = uniform(0.0, self.max_pause_s, 2 * batch, device).reshape(batch, 2)
        level = uniform(self.min_level_db, self.max_level_db, batch, device)
        rows = torch.nonzero(drawn).squeeze(1).tolist()
        if not rows:
            return waveform, lengths
        padded, new_lengths = {}, lengths.clone()
        for row in rows:  # pause lengths differ per clip, so one call each
            n = lengths[row:row + 1]
            out, out_n = corrupt.pad_with_room_tone(waveform[row:row + 1, :int(n)], n, self.sample_rate,
                                                    float(pauses[row, 0]), float(pauses[row, 1]), level[row:row + 1])
            padded[row], new_lengths[row] = out[0], out_n[0]
        out = fit_width(waveform, int(new_lengths.max()))
        for row, clip in padded.items():
            out[row] = fit_width(clip[None], out.shape[-1])[0]
        return out * lengths_to_mask(new_lengths, out.shape[-1]), new_lengths


class VoiceShift(Augmentation):
    """Other voices from each clip: pitch shifted by a step from `semitones` and formants scaled by a factor from
    `formant_factors`, independently (corrupt.shift_voice; above 1: a higher voice, a shorter vocal tract). One
    batched call per (step, factor) pair present."""

    def __init__(self, semitones: Sequence[float] = (0, 2, 4, 7, 9),
                 formant_factors: Sequence[float] = (1.0, 1.08, 1.16), sample_rate: int = 8000,
                 p: float = 0.5) -> None:
        super().__init__(p)
        if not semitones or not formant_factors or any(f <= 0 for f in formant_factors):
            raise ConfigError(f"VoiceShift: semitones={list(semitones)}, formant_factors={list(formant_factors)}; give "
                              "one or more steps and positive factors, e.g. [0, 4, 9] and [1.0, 1.1, 1.2].")
        self.pairs = [(float(s), float(f)) for s in semitones for f in formant_factors]
        self.sample_rate = int(sample_rate)

    def augment(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        choice = _choose(len(self.pairs), self.drawn(len(waveform), waveform.device))
        out = waveform.clone()
        for index, (step, factor) in enumerate(self.pairs):
            rows = torch.nonzero(choice == index).squeeze(1)
            if rows.numel() == 0 or (step == 0 and factor == 1.0):
                continue
            out[rows] = corrupt.shift_voice(waveform[rows], lengths[rows], self.sample_rate, step, factor)
        return out, lengths
