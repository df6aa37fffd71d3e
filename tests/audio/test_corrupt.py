"""The corruption core does what each function says, measured on signals whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdr_lightning.audio import corrupt

RATE = 8000


def tone(freq: float, n: int = 8000, amplitude: float = 0.3) -> torch.Tensor:
    return amplitude * torch.sin(2 * math.pi * freq * torch.arange(n) / RATE)


def batch(*clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(c) for c in clips])
    return torch.stack([corrupt.fit_width(c, int(lengths.max())) for c in clips]), lengths


def vowel(f0: float = 120.0, formants=(700.0, 1200.0, 2500.0), n: int = 8000) -> torch.Tensor:
    """A synthetic vowel: a pulse train at `f0` through resonances at `formants`."""
    t = torch.arange(n) / RATE
    harmonics = torch.arange(1, int(3900 / f0))
    frequencies = harmonics * f0
    gain = sum(1 / (1 + ((frequencies - f) / 120.0) ** 2) for f in formants)
    return (gain[:, None] * torch.sin(2 * math.pi * frequencies[:, None] * t[None, :])).sum(0) * 0.02


def band_energy(x: torch.Tensor, low: float, high: float) -> float:
    spectrum = torch.fft.rfft(x).abs().square()
    frequency = torch.fft.rfftfreq(len(x), 1 / RATE)
    return float(spectrum[(frequency >= low) & (frequency < high)].sum())


@pytest.mark.parametrize("snr_db", [20.0, 5.0])
def test_mix_at_snr_gives_that_snr_over_each_clips_own_samples(snr_db: float) -> None:
    x, lengths = batch(tone(440), tone(700, n=3000))
    noise = corrupt.white_noise(2, x.shape[-1], torch.Generator().manual_seed(0))
    mixed = corrupt.mix_at_snr(x, lengths, noise, snr_db)
    added = mixed - x
    measured = 10 * torch.log10(corrupt.power(x, lengths) / corrupt.power(added, lengths))
    torch.testing.assert_close(measured, torch.full((2,), snr_db), atol=1e-3, rtol=0)
    assert (mixed[1, 3000:] == 0).all()  # the noise stops at the clip's end


def test_band_pass_keeps_the_band_and_removes_the_rest() -> None:
    x, lengths = batch(tone(150) + tone(1000) + tone(3800))
    y = corrupt.band_pass(x, lengths, RATE, 300.0, 3400.0)[0]
    assert band_energy(y, 900, 1100) == pytest.approx(band_energy(x[0], 900, 1100), rel=0.02)
    assert band_energy(y, 100, 200) < 1e-4 * band_energy(x[0], 100, 200)
    assert band_energy(y, 3700, 3900) < 1e-4 * band_energy(x[0], 3700, 3900)


def test_mu_law_is_a_close_round_trip_that_quantises() -> None:
    x = tone(440)[None]
    y = corrupt.mu_law(x)
    assert not torch.equal(x, y) and float((y - x).abs().max()) < 0.02
    assert len(torch.unique(y)) <= 256


def test_synthetic_rir_decays_60_db_in_rt60() -> None:
    rir = corrupt.synthetic_rir(torch.tensor([0.4]), RATE, 1, torch.Generator().manual_seed(0), direct_ratio_db=0)[0]
    assert rir[0] == 1.0 and len(rir) == int(0.4 * RATE) + 1
    early = rir[1:400].square().mean()
    late = rir[-400:].square().mean()
    assert 10 * math.log10(early / late) == pytest.approx(60, abs=8)


def test_reverberate_keeps_loudness_and_adds_the_tail() -> None:
    x, lengths = batch(tone(440, n=4000), tone(300, n=2000))
    rir = corrupt.synthetic_rir(torch.tensor([0.3, 0.5]), RATE, 2, torch.Generator().manual_seed(1))
    wet, new_lengths = corrupt.reverberate(x, lengths, rir, tail_s=0.25, sample_rate=RATE)
    assert new_lengths.tolist() == [6000, 4000]
    torch.testing.assert_close(corrupt.power(wet, new_lengths), corrupt.power(x, lengths), rtol=1e-4, atol=0)
    assert (wet[1, 4000:] == 0).all() and wet[0, 4500:6000].abs().max() > 0  # the tail rings on after the clip


def test_overdrive_clips_at_full_scale() -> None:
    x, lengths = batch(tone(440))
    y = corrupt.overdrive(x, lengths, 4.0)
    assert float(y.abs().max()) == 1.0
    assert 0.7 < float((y.abs() == 1.0).float().mean()) < 0.9  # most of a 4x-driven sine sits on the rails


def test_pad_with_room_tone_adds_the_pauses_at_the_given_level() -> None:
    x, lengths = batch(tone(440, n=4000))
    y, new_lengths = corrupt.pad_with_room_tone(x, lengths, RATE, 0.5, 0.25, level_db=-40.0,
                                                generator=torch.Generator().manual_seed(0))
    assert new_lengths.tolist() == [4000 + 4000 + 2000]
    pause = y[0, :4000]
    assert 10 * math.log10(float(pause.square().mean() / corrupt.power(x, lengths))) == pytest.approx(-40, abs=1.5)
    torch.testing.assert_close(y[0, 4000:8000], x[0], atol=0.03, rtol=0)  # room tone 40 dB down


def test_resampling_through_another_rate_is_nearly_the_identity() -> None:
    x, lengths = batch(tone(440), tone(1200, n=5000))
    for rate in (16000, 44100):
        y, new_lengths = corrupt.resample_through(x, lengths, RATE, rate)
        assert torch.equal(new_lengths, lengths)
        assert float((y - x)[:, 200:4800].abs().max()) < 0.01


def comb(x: torch.Tensor, f0: float, offset: float = 0.0) -> float:
    """Spectral magnitude summed at (k + offset) * f0, k = 1, 2, ...: the harmonics of f0 (offset 0), or the
    frequencies halfway between them (offset 0.5)."""
    spectrum = torch.fft.rfft(x[1000:5000] * torch.hann_window(4000)).abs()
    resolution = RATE / 4000
    return float(sum(spectrum[round((k + offset) * f0 / resolution)] for k in range(1, int(3500 / f0))))


def has_pitch(x: torch.Tensor, f0: float) -> bool:
    """Its harmonics sit on multiples of f0, and not halfway between them (which a pitch of f0 / 2 would fill)."""
    return comb(x, f0, 0.5) < 0.1 * comb(x, f0)


def envelope_scale(before: torch.Tensor, after: torch.Tensor) -> float:
    """By what factor `after`'s spectral envelope is `before`'s stretched along frequency: the factor whose stretch
    of the smoothed long-term spectrum matches best over 300-3000 Hz (1.0: the formants stayed put)."""
    def smoothed(x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft(x * torch.hann_window(len(x))).abs().square()
        kernel = torch.ones(1, 1, 401) / 401  # 200 Hz wide: harmonics smoothed away, formants kept
        return torch.nn.functional.conv1d(spectrum[None, None], kernel, padding=200)[0, 0].clamp(min=1e-12).log()

    grid = torch.fft.rfftfreq(len(before), 1 / RATE)
    band = (grid > 300) & (grid < 3000)
    source, target = smoothed(before), smoothed(after)

    def mismatch(factor: float) -> float:
        stretched = torch.from_numpy(np.interp(grid[band] / factor, grid, source)).float()
        return float(((target[band] - target[band].mean()) - (stretched - stretched.mean())).square().mean())

    return min((float(f) for f in torch.linspace(0.9, 1.4, 51)), key=mismatch)


def test_shift_voice_moves_pitch_and_formants_independently() -> None:
    x, lengths = batch(vowel())
    assert has_pitch(x[0], 120) and not has_pitch(x[0], 240)
    higher = corrupt.shift_voice(x, lengths, RATE, semitones=12.0, formant_factor=1.0)[0]
    assert has_pitch(higher, 240)  # an octave up: every other harmonic gone
    assert envelope_scale(x[0], higher) == pytest.approx(1.0, abs=0.04)  # the formants stay
    plain = corrupt.pitch_shift(x, RATE, 4.0)[0]
    assert envelope_scale(x[0], plain) == pytest.approx(1.26, abs=0.04)  # a plain pitch shift moves them too
    shorter_tract = corrupt.shift_voice(x, lengths, RATE, semitones=0.0, formant_factor=1.2)[0]
    assert has_pitch(shorter_tract, 120) and not has_pitch(shorter_tract, 240)  # the pitch stays
    assert envelope_scale(x[0], shorter_tract) == pytest.approx(1.2, abs=0.04)  # the formants move up 20%
    assert corrupt.power(shorter_tract[None], lengths) == pytest.approx(float(corrupt.power(x, lengths)), rel=1e-4)
