import numpy as np
import pytest
import torch

from sdr_lightning.audio.features import LogMel, downsample_spectrogram
from sdr_lightning.data.datamodule import collate_waveforms
from sdr_lightning.errors import ConfigError


@pytest.fixture
def featurizer() -> LogMel:
    return LogMel(n_mels=13)


def test_shapes_and_frame_counts(featurizer: LogMel) -> None:
    waves = [torch.randn(n) for n in (8000, 3000, 100)]
    batch = collate_waveforms([(w, 0, 0) for w in waves])
    features, frames = featurizer(batch["waveform"], batch["lengths"])
    assert features.shape[:2] == (3, 13)
    assert frames.tolist() == [1 + (8000 - 256) // 80, 1 + (3000 - 256) // 80, 1]
    assert torch.isfinite(features).all()


def test_clip_alone_equals_clip_in_padded_batch(featurizer: LogMel) -> None:
    short, long = torch.randn(2500), torch.randn(7000)
    alone, n = featurizer(short[None], torch.tensor([2500]))
    batch = collate_waveforms([(long, 0, 0), (short, 0, 0)])
    padded, frames = featurizer(batch["waveform"], batch["lengths"])
    assert frames[1] == n[0]
    torch.testing.assert_close(padded[1, :, : n[0]], alone[0], rtol=1e-4, atol=1e-4)
    assert (padded[1, :, n[0]:] == 0).all()


def test_utterance_normalisation_over_valid_frames(featurizer: LogMel) -> None:
    batch = collate_waveforms([(torch.randn(6000), 0, 0), (torch.randn(2000), 0, 0)])
    features, frames = featurizer(batch["waveform"], batch["lengths"])
    valid = features[1, :, : frames[1]]
    assert abs(valid.mean().item()) < 1e-4
    assert valid.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-2)


def test_silence_is_floored_not_minus_infinity(featurizer: LogMel) -> None:
    wave = torch.zeros(4000)
    wave[:1000] = torch.randn(1000)
    features, _ = featurizer(wave[None], torch.tensor([4000]))
    assert torch.isfinite(features).all()


def test_downsample_matches_chunk_means() -> None:
    x = torch.arange(2 * 10, dtype=torch.float32).reshape(2, 10)  # k=2 bins, T=10 frames
    out = downsample_spectrogram(x, 5)
    expected = np.concatenate([c.mean(axis=1) for c in np.array_split(x.numpy(), 5, axis=1)])
    np.testing.assert_allclose(out.numpy(), expected)
    assert out.shape == (5 * 2,)


def test_downsample_ignores_padding_and_handles_short_clips() -> None:
    x = torch.randn(13, 40)
    padded = torch.zeros(2, 13, 60)
    padded[0, :, :40] = x
    padded[1, :, :3] = x[:, :3]
    out = downsample_spectrogram(padded, 10, torch.tensor([40, 3]))
    assert out.shape == (2, 130)
    torch.testing.assert_close(out[0], downsample_spectrogram(x, 10))
    assert torch.isfinite(out[1]).all()  # 3 frames into 10 chunks repeats frames, no empty chunk


def test_trim_removes_edge_silence_and_keeps_batch_invariance() -> None:
    torch.manual_seed(0)
    tone = 0.5 * torch.sin(2 * torch.pi * 440 * torch.arange(4000) / 8000)
    quiet = lambda n: 1e-5 * torch.randn(n)  # noqa: E731 - a -90 dB noise floor
    padded = torch.cat([quiet(3000), tone, quiet(2000)])
    trimming = LogMel(trim_db=40, trim_margin=2)
    features, frames = trimming(padded[None], torch.tensor([len(padded)]))
    _, tone_frames = LogMel()(tone[None], torch.tensor([4000]))
    untrimmed = LogMel().frame_lengths(torch.tensor([len(padded)]))
    # the 5000 silent samples (about 60 frames) are gone, up to the margin and the edge frames
    assert tone_frames.item() <= frames.item() <= tone_frames.item() + 10 < untrimmed.item()
    assert (features[0, :, frames.item():] == 0).all()
    batch = collate_waveforms([(padded, 0, 0), (tone, 0, 0)])
    together, counts = trimming(batch["waveform"], batch["lengths"])
    alone, count = trimming(tone[None], torch.tensor([4000]))
    assert counts[0] == frames[0] and counts[1] == count[0]
    torch.testing.assert_close(together[1, :, :count[0]], alone[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(together[0, :, :frames[0]], features[0, :, :frames[0]], rtol=1e-4, atol=1e-4)


def test_cepstra_keeps_the_envelope_and_drops_pitch_ripple() -> None:
    t = torch.arange(8000) / 8000
    # a 150 Hz voice-like pulse train: its harmonics draw a ripple across the low Mel bins
    voiced = sum(torch.sin(2 * torch.pi * 150 * k * t) / k for k in range(1, 25))[None]
    lengths = torch.tensor([8000])
    full, frames = LogMel()(voiced, lengths)
    all_kept, _ = LogMel(cepstra=40)(voiced, lengths)
    smooth, smooth_frames = LogMel(cepstra=12)(voiced, lengths)
    assert torch.allclose(all_kept, full, atol=1e-4)  # every cepstrum kept: the identity
    assert torch.equal(smooth_frames, frames)

    def ripple(x: torch.Tensor) -> float:  # mean absolute second difference along the Mel axis
        return x[0].diff(n=2, dim=0).abs().mean().item()

    assert ripple(smooth) < 0.5 * ripple(full)
    assert LogMel(cepstra=12).cache_key != LogMel().cache_key  # cached features follow the setting
    with pytest.raises(ConfigError, match="cepstra=41"):
        LogMel(cepstra=41)


def test_top_db_floors_each_clip_under_its_own_peak() -> None:
    t = torch.arange(8000) / 8000
    # a loud tone, then a quiet one 70 dB down: 80 dB keeps the quiet part's level, 40 dB floors it
    wave = torch.cat([torch.sin(2 * torch.pi * 500 * t), 10 ** (-70 / 20) * torch.sin(2 * torch.pi * 500 * t)])[None]
    lengths = torch.tensor([16000])
    deep, _ = LogMel(normalization="none")(wave, lengths)
    floored, frames = LogMel(top_db=40.0, normalization="none")(wave, lengths)
    peak = deep[0, :, :frames[0]].amax()
    assert deep[0, :, :frames[0]].amin() < peak - 60
    assert torch.isclose(floored[0, :, :frames[0]].amin(), peak - 40, atol=1e-3)
    kept = deep > peak - 40  # what lies above the floor is unchanged
    torch.testing.assert_close(floored[kept], deep[kept])
    assert LogMel(top_db=40.0).cache_key != LogMel().cache_key  # cached features follow the setting
    with pytest.raises(ConfigError, match="top_db=0"):
        LogMel(top_db=0.0)


def test_cepstra_clip_alone_equals_clip_in_padded_batch() -> None:
    featurizer = LogMel(cepstra=20, trim_db=20.0)
    waves = [torch.randn(6000), torch.randn(2500)]
    batch = collate_waveforms([(w, 0, 0) for w in waves])
    features, frames = featurizer(batch["waveform"], batch["lengths"])
    alone, alone_frames = featurizer(waves[1][None], torch.tensor([2500]))
    assert alone_frames.item() == frames[1].item()
    assert torch.allclose(features[1, :, : frames[1]], alone[0, :, : alone_frames[0]], atol=1e-5)


def test_pcen_cancels_a_channel_gain_that_the_log_keeps_as_an_offset() -> None:
    from sdr_lightning.audio.features import PCENMel

    t = torch.arange(8000) / 8000
    clip = (0.3 * torch.sin(2 * torch.pi * 440 * t) * torch.hann_window(8000) + 0.003 * torch.randn(8000))[None]
    lengths = torch.tensor([8000])
    raw = dict(normalization="none", trim_db=None)
    pcen, frames = PCENMel(**raw)(clip, lengths)
    quiet, _ = PCENMel(**raw)(clip * 0.05, lengths)
    assert torch.isfinite(pcen).all() and pcen.shape[1] == 40 and int(frames[0]) == pcen.shape[-1]
    log, _ = LogMel(**raw)(clip, lengths)
    log_quiet, _ = LogMel(**raw)(clip * 0.05, lengths)
    assert float((log - log_quiet).mean()) == pytest.approx(26.0, abs=0.1)  # 20 log10(1/0.05) dB lower
    relative = float((pcen - quiet).abs().mean() / pcen.abs().mean())
    assert relative < 0.15  # PCEN divides the gain out (up to its alpha < 1 and delta)
    assert PCENMel().cache_key != LogMel().cache_key
    with pytest.raises(ConfigError, match="smoothing=0"):
        PCENMel(smoothing=0.0)

