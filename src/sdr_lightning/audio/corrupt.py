"""Corruptions of a waveform batch: the one functional core behind the robustness suite's fixed conditions
(data/conditions.py) and the training augmentations that draw the same parameters at random (audio/augment/).

Every function takes a padded batch, (B, L) samples, with its (B,) valid lengths, and per-clip parameters as (B,)
tensors (or one number for the whole batch), and returns the same kind of batch: padding stays zero, lengths follow
any change of duration. Randomness comes from the `generator` given (the suite seeds one per condition) or from
torch's global one (training, seeded by `seed_everything`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchaudio.functional as AF
from torch import Tensor

Number = float | Tensor


def mask(lengths: Tensor, width: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, width) 1.0 on each clip's valid samples, 0.0 on its padding."""
    return (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).to(dtype)


def per_clip(value: Number, batch: int, like: Tensor) -> Tensor:
    """A number or a (B,) tensor as a (B,) tensor on `like`'s device and dtype."""
    value = torch.as_tensor(value, device=like.device, dtype=like.dtype)
    return value.expand(batch).clone() if value.dim() == 0 else value


def power(waveform: Tensor, lengths: Tensor) -> Tensor:
    """(B,) mean square over each clip's valid samples."""
    return (waveform.square() * mask(lengths, waveform.shape[-1], waveform.dtype)).sum(-1) / lengths.clamp(min=1)


def fit_width(x: Tensor, width: int) -> Tensor:
    """Zero-pad or cut the last axis to `width`."""
    if x.shape[-1] >= width:
        return x[..., :width].clone()
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]))


# ---- noise ----

def white_noise(batch: int, length: int, generator: torch.Generator | None = None, device: torch.device | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(batch, length, generator=generator, device=device, dtype=dtype)


def pink_noise(batch: int, length: int, generator: torch.Generator | None = None, device: torch.device | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, length) noise with a 1/f power spectrum: white noise shaped in the frequency domain."""
    spectrum = torch.fft.rfft(white_noise(batch, length, generator, device, dtype))
    frequency = torch.arange(spectrum.shape[-1], device=device, dtype=dtype).clamp(min=1)
    return torch.fft.irfft(spectrum / frequency.sqrt(), n=length)


def babble_noise(pool: Sequence[Tensor], batch: int, length: int, talkers: int = 4,
                 generator: torch.Generator | None = None) -> Tensor:
    """(B, length) babble: per row, `talkers` clips drawn from `pool` (other speakers' recordings), each at its own
    level-normalised loudness and random start, repeated to fill the length, and summed."""
    if not pool:
        raise ValueError("babble_noise needs a pool of clips to mix from")
    out = torch.zeros(batch, length, dtype=pool[0].dtype)
    picks = torch.randint(len(pool), (batch, talkers), generator=generator)
    offsets = torch.rand(batch, talkers, generator=generator)
    for row in range(batch):
        for talker in range(talkers):
            clip = pool[int(picks[row, talker])]
            clip = clip / clip.square().mean().sqrt().clamp(min=1e-8)
            start = int(offsets[row, talker] * len(clip))
            repeats = math.ceil((length + start) / len(clip))
            out[row] += clip.repeat(repeats)[start:start + length]
    return out


def mix_at_snr(waveform: Tensor, lengths: Tensor, noise: Tensor, snr_db: Number) -> Tensor:
    """`waveform` plus `noise` scaled so that each clip's signal-to-noise ratio, both measured over its valid
    samples, is `snr_db`; the noise stops at the clip's end."""
    batch, width = waveform.shape
    valid = mask(lengths, width, waveform.dtype)
    noise = fit_width(noise.to(waveform), width) * valid
    snr = per_clip(snr_db, batch, waveform)
    scale = torch.sqrt(power(waveform, lengths) / (power(noise, lengths).clamp(min=1e-12) * 10.0 ** (snr / 10.0)))
    return waveform + noise * scale[:, None]


# ---- channel: level, clipping, band, codec ----

def gain(waveform: Tensor, db: Number) -> Tensor:
    return waveform * (10.0 ** (per_clip(db, len(waveform), waveform) / 20.0))[:, None]


def overdrive(waveform: Tensor, lengths: Tensor, drive: Number) -> Tensor:
    """Clipping, as a too-hot input stage does it: each clip scaled so its peak is `drive` times full scale, then cut
    at +-1. drive 1 only normalises the peak; 4 clips everything above a quarter of the peak."""
    peak = (waveform.abs() * mask(lengths, waveform.shape[-1], waveform.dtype)).amax(-1).clamp(min=1e-8)
    scaled = waveform * (per_clip(drive, len(waveform), waveform) / peak)[:, None]
    return scaled.clamp(-1.0, 1.0)


def band_pass(waveform: Tensor, lengths: Tensor, sample_rate: int, low_hz: Number, high_hz: Number,
              transition_hz: float = 100.0) -> Tensor:
    """Keep `low_hz`..`high_hz` per clip: a zero-phase filter in the frequency domain, with raised-cosine edges
    `transition_hz` wide (a telephone channel is 300-3400 Hz). Padded before the FFT, so nothing wraps around."""
    batch, width = waveform.shape
    margin = int(sample_rate * 0.05)
    padded = torch.nn.functional.pad(waveform * mask(lengths, width, waveform.dtype), (0, margin))
    spectrum = torch.fft.rfft(padded)
    frequency = torch.fft.rfftfreq(padded.shape[-1], 1.0 / sample_rate).to(waveform)[None, :]
    low = per_clip(low_hz, batch, waveform)[:, None]
    high = per_clip(high_hz, batch, waveform)[:, None]

    def edge(x: Tensor) -> Tensor:  # 0 below -1, 1 above +1, a raised cosine in between
        return 0.5 - 0.5 * torch.cos(math.pi * ((x + 1) / 2).clamp(0.0, 1.0))

    response = edge((frequency - low) / (transition_hz / 2)) * edge((high - frequency) / (transition_hz / 2))
    filtered = torch.fft.irfft(spectrum * response, n=padded.shape[-1])[:, :width]
    return filtered * mask(lengths, width, waveform.dtype)


def mu_law(waveform: Tensor, bits: int = 8) -> Tensor:
    """Through an 8-bit mu-law codec (G.711's companding) and back: the quantisation noise of a phone line."""
    channels = 2**bits
    return AF.mu_law_decoding(AF.mu_law_encoding(waveform.clamp(-1.0, 1.0), channels), channels).to(waveform.dtype)


# ---- room ----

def synthetic_rir(rt60_s: Number, sample_rate: int, batch: int, generator: torch.Generator | None = None,
                  direct_ratio_db: float = 0.0) -> Tensor:
    """(B, R) room impulse responses: a direct path, then exponentially decaying noise whose energy falls 60 dB in
    `rt60_s` (per clip), the reverberant energy `direct_ratio_db` below the direct path's. R covers the longest."""
    rt60 = per_clip(rt60_s, batch, torch.zeros(()))
    length = int(float(rt60.max()) * sample_rate) + 1
    time = torch.arange(length, dtype=torch.float32) / sample_rate
    envelope = torch.exp(-6.9078 * time[None, :] / rt60[:, None])  # amplitude 10^-3 (-60 dB) at rt60
    tail = white_noise(batch, length, generator) * envelope
    tail[:, 0] = 0.0
    tail = tail / tail.square().sum(-1, keepdim=True).sqrt().clamp(min=1e-8) * 10 ** (-direct_ratio_db / 20)
    tail[:, 0] = 1.0
    return tail


def reverberate(waveform: Tensor, lengths: Tensor, rir: Tensor, tail_s: float, sample_rate: int
                ) -> tuple[Tensor, Tensor]:
    """Each clip convolved with its (B, R) impulse response, keeping `tail_s` of the reverberant tail after its end,
    at the clip's own loudness (the room changes the sound, not the level)."""
    batch, width = waveform.shape
    tail = int(tail_s * sample_rate)
    new_lengths = lengths + tail
    out_width = width + tail
    size = width + rir.shape[-1]
    wet = torch.fft.irfft(torch.fft.rfft(waveform * mask(lengths, width, waveform.dtype), n=size)
                          * torch.fft.rfft(rir.to(waveform), n=size), n=size)
    wet = fit_width(wet, out_width) * mask(new_lengths, out_width, waveform.dtype)
    scale = torch.sqrt(power(waveform, lengths) / power(wet, new_lengths).clamp(min=1e-12))
    return wet * scale[:, None], new_lengths


def pad_with_room_tone(waveform: Tensor, lengths: Tensor, sample_rate: int, before_s: float, after_s: float,
                       level_db: Number, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """`before_s` and `after_s` of pause around each clip, with room tone (pink noise `level_db` below the clip's
    own power) under the pauses and the speech alike, as in a recording started early and stopped late."""
    batch, width = waveform.shape
    before, after = int(before_s * sample_rate), int(after_s * sample_rate)
    new_lengths = lengths + before + after
    out_width = width + before + after
    valid = mask(lengths, width, waveform.dtype)
    speech = torch.zeros(batch, out_width, dtype=waveform.dtype, device=waveform.device)
    speech[:, before:before + width] = waveform * valid
    tone = pink_noise(batch, out_width, generator, dtype=waveform.dtype).to(waveform.device)
    out_mask = mask(new_lengths, out_width, waveform.dtype)
    level = power(waveform, lengths) * 10.0 ** (per_clip(level_db, batch, waveform) / 10.0)
    tone = tone * out_mask * torch.sqrt(level / power(tone, new_lengths).clamp(min=1e-12))[:, None]
    return speech + tone, new_lengths


# ---- sampling ----

def resample_through(waveform: Tensor, lengths: Tensor, sample_rate: int, through_rate: int) -> tuple[Tensor, Tensor]:
    """As if recorded at `through_rate` and resampled to `sample_rate` by the loader: up, then back down."""
    up = AF.resample(waveform, sample_rate, through_rate)
    down = AF.resample(up, through_rate, sample_rate)
    return fit_width(down, waveform.shape[-1]) * mask(lengths, waveform.shape[-1], waveform.dtype), lengths


# ---- voice ----

def speed(waveform: Tensor, lengths: Tensor, sample_rate: int, factor: float) -> tuple[Tensor, Tensor]:
    """Play `factor` times as fast, tempo and pitch together (one factor for the batch)."""
    source_rate = round(sample_rate * factor)
    if source_rate == sample_rate:
        return waveform, lengths
    new_lengths = (lengths * sample_rate + source_rate - 1) // source_rate
    out = AF.resample(waveform, source_rate, sample_rate)
    width = int(new_lengths.max())
    return fit_width(out, width) * mask(new_lengths, width, waveform.dtype), new_lengths


def stretch(waveform: Tensor, rate: float, n_fft: int = 256, hop_length: int = 64) -> Tensor:
    """Time-stretch by `rate` (> 1: faster, shorter), pitch kept: a batched phase vocoder."""
    window = torch.hann_window(n_fft, device=waveform.device, dtype=waveform.dtype)
    # Zero (not reflect) padding: works for clips shorter than half a window and adds no mirrored audio.
    spectrum = torch.stft(waveform, n_fft, hop_length, window=window, pad_mode="constant", return_complex=True)
    advance = torch.linspace(0, math.pi * hop_length, spectrum.shape[-2], device=waveform.device)[:, None]
    stretched = AF.phase_vocoder(spectrum, rate, advance)
    return torch.istft(stretched, n_fft, hop_length, window=window, length=round(waveform.shape[-1] / rate))


def pitch_shift(waveform: Tensor, sample_rate: int, semitones: float, rate_grid_hz: int = 50, n_fft: int = 256,
                hop_length: int = 64) -> Tensor:
    """Shift pitch and spectrum by `semitones`, duration kept: stretch by 2^(n/12), then resample back. The resampling
    rate is rounded to `rate_grid_hz`, which keeps its kernel short (a step is then off by at most ~0.1 semitone)."""
    source_rate = round(sample_rate * 2.0 ** (semitones / 12) / rate_grid_hz) * rate_grid_hz
    if source_rate == sample_rate:
        return waveform.clone()
    slow = stretch(waveform, sample_rate / source_rate, n_fft, hop_length)
    return fit_width(AF.resample(slow, source_rate, sample_rate), waveform.shape[-1])


def spectral_envelope(log_magnitude: Tensor, coefficients: int) -> Tensor:
    """Cepstral smoothing of (..., F, T) log magnitudes along F: the envelope (formants) without the harmonics."""
    cepstrum = torch.fft.irfft(log_magnitude, dim=-2)
    keep = torch.zeros(cepstrum.shape[-2], device=log_magnitude.device, dtype=log_magnitude.dtype)
    keep[:coefficients] = 1.0
    keep[-coefficients + 1:] = 1.0
    return torch.fft.rfft(cepstrum * keep[:, None], dim=-2).real[..., : log_magnitude.shape[-2], :]


def shift_voice(waveform: Tensor, lengths: Tensor, sample_rate: int, semitones: float, formant_factor: float,
                n_fft: int = 512, hop_length: int = 128, envelope_coefficients: int = 24) -> Tensor:
    """Another voice of the same words: pitch up by `semitones` and the formants (the vocal tract's resonances) scaled
    by `formant_factor` independently, as a higher voice or a shorter vocal tract (women's formants lie ~15-20% above
    men's, their pitch ~an octave). The pitch-shifted spectrum's own envelope is swapped for the original envelope
    stretched along frequency."""
    batch, width = waveform.shape
    valid = mask(lengths, width, waveform.dtype)
    shifted = pitch_shift(waveform * valid, sample_rate, semitones) * valid
    window = torch.hann_window(n_fft, device=waveform.device, dtype=waveform.dtype)

    def analyse(x: Tensor) -> Tensor:
        return torch.stft(x, n_fft, hop_length, window=window, return_complex=True)

    original, moved = analyse(waveform * valid), analyse(shifted)
    floor = 1e-6
    envelope_original = spectral_envelope(original.abs().clamp(min=floor).log(), envelope_coefficients)
    envelope_moved = spectral_envelope(moved.abs().clamp(min=floor).log(), envelope_coefficients)
    bins = envelope_original.shape[-2]
    # target envelope at bin k: the original's at k / formant_factor (linear interpolation along frequency)
    source = (torch.arange(bins, device=waveform.device, dtype=waveform.dtype) / formant_factor).clamp(max=bins - 1)
    low = source.floor().long()
    high = (low + 1).clamp(max=bins - 1)
    weight = (source - low)[:, None]
    target = envelope_original[:, low, :] * (1 - weight) + envelope_original[:, high, :] * weight
    corrected = moved * torch.exp(target - envelope_moved)
    out = torch.istft(corrected, n_fft, hop_length, window=window, length=width) * valid
    # the same loudness as the original voice
    return out * torch.sqrt(power(waveform, lengths) / power(out, lengths).clamp(min=1e-12))[:, None]
