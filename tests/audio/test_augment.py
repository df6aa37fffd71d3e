import json
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sdr_lightning.audio.augment import (
    AddNoise,
    Augmentation,
    AugmentationPipeline,
    BabbleNoise,
    BandLimit,
    Clipping,
    Fade,
    FilterAugment,
    FreqWarp,
    Gain,
    MuLaw,
    PitchShift,
    Reverb,
    RoomTonePauses,
    SpecAugment,
    SpeedPerturb,
    TimeCrop,
    TimeShift,
    TimeStretch,
    TimeWarp,
    VoiceShift,
)
from sdr_lightning.audio.features import LogMel, lengths_to_mask
from sdr_lightning.data.datamodule import SpokenDigitDataModule, collate_waveforms
from sdr_lightning.errors import ConfigError
from sdr_lightning.tasks.train import build, train
from tests.helpers import FeatureConsumer

SAMPLE_RATE = 8000
LENGTHS = (5000, 1200, 90, 3100)

WAVEFORM = {
    "speed": lambda: SpeedPerturb(factors=[0.9, 1.1]),
    "pitch": lambda: PitchShift(semitones=[-2, 2]),
    "gain": lambda: Gain(min_db=-6, max_db=6),
    "noise": lambda: AddNoise(min_snr_db=5, max_snr_db=20),
    "shift_circular": lambda: TimeShift(max_fraction=0.2, mode="circular"),
    "shift_pad": lambda: TimeShift(max_fraction=0.2, mode="pad"),
    "fade": lambda: Fade(),
    "babble": lambda: BabbleNoise(p=1.0),
    "band": lambda: BandLimit(p=1.0),
    "mulaw": lambda: MuLaw(p=1.0),
    "reverb": lambda: Reverb(p=1.0),
    "clipping": lambda: Clipping(min_drive=2.0, p=1.0),
    "voice": lambda: VoiceShift(semitones=[4], formant_factors=[1.1], p=1.0),
    "pauses": lambda: RoomTonePauses(p=1.0),
}
SPECTROGRAM = {
    "specaugment": lambda: SpecAugment(),
    "freq_warp": lambda: FreqWarp(),
    "time_stretch": lambda: TimeStretch(),
    "time_warp": lambda: TimeWarp(),
    "crop": lambda: TimeCrop(),
    "filter": lambda: FilterAugment(),
}


def waveform_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(max(LENGTHS)) / SAMPLE_RATE
    clips = [(0.3 * torch.sin(2 * math.pi * (300 + 100 * i) * t[:n]) + 0.01 * torch.randn(n, generator=generator),
              0, 0) for i, n in enumerate(LENGTHS)]
    batch = collate_waveforms(clips)
    return batch["waveform"], batch["lengths"]


def feature_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return LogMel()(*waveform_batch())


def batch_for(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return waveform_batch() if name in WAVEFORM else feature_batch()


ALL = {**WAVEFORM, **SPECTROGRAM}


@pytest.mark.parametrize("name", ALL)
def test_keeps_shape_and_zero_padding_and_changes_the_signal(name: str) -> None:
    x, lengths = batch_for(name)
    torch.manual_seed(0)
    y, new_lengths = ALL[name]().train()(x, lengths)
    assert y.shape[:-1] == x.shape[:-1] and new_lengths.shape == lengths.shape
    assert y.shape[-1] == int(new_lengths.max()) or y.shape[-1] == x.shape[-1]
    assert torch.isfinite(y).all()
    valid = lengths_to_mask(new_lengths, y.shape[-1])
    if y.dim() == 3:
        valid = valid[:, None, :].expand_as(y)
    assert (y[~valid] == 0).all()  # padding stays zero
    assert y.shape != x.shape or not torch.equal(y, x)


@pytest.mark.parametrize("name", ALL)
def test_identity_in_eval_mode(name: str) -> None:
    x, lengths = batch_for(name)
    y, new_lengths = ALL[name]().eval()(x, lengths)
    assert y is x and new_lengths is lengths


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_result(name: str) -> None:
    x, lengths = batch_for(name)
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        results.append(ALL[name]().train()(x, lengths))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("name", ALL)
def test_probability_zero_leaves_clips_alone(name: str) -> None:
    x, lengths = batch_for(name)
    augmentation = ALL[name]()
    augmentation.p = 0.0
    y, new_lengths = augmentation.train()(x, lengths)
    torch.testing.assert_close(y, x)
    assert torch.equal(new_lengths, lengths)


def dominant_frequency(wave: torch.Tensor) -> float:
    spectrum = torch.fft.rfft(wave * torch.hann_window(len(wave))).abs()
    return spectrum.argmax().item() * SAMPLE_RATE / len(wave)


@pytest.mark.parametrize("factor", [0.9, 1.25])
def test_speed_changes_length_and_pitch_by_the_factor(factor: float) -> None:
    x, lengths = waveform_batch()
    y, new_lengths = SpeedPerturb(factors=[factor]).train()(x, lengths)
    assert new_lengths.tolist() == [math.ceil(n / factor) for n in LENGTHS]
    assert dominant_frequency(y[0, : new_lengths[0]]) == pytest.approx(300 * factor, rel=0.01)


@pytest.mark.parametrize("semitones", [-2, 2])
def test_pitch_shift_moves_pitch_and_keeps_duration(semitones: int) -> None:
    x, lengths = waveform_batch()
    y, new_lengths = PitchShift(semitones=[semitones]).train()(x, lengths)
    assert torch.equal(new_lengths, lengths)
    assert dominant_frequency(y[0, :5000]) == pytest.approx(300 * 2 ** (semitones / 12), rel=0.015)


@pytest.mark.parametrize("color", ["white", "pink"])
def test_noise_hits_the_requested_snr_over_valid_samples(color: str) -> None:
    x, lengths = waveform_batch()
    torch.manual_seed(0)
    y, _ = AddNoise(min_snr_db=12.0, max_snr_db=12.0, colors=[color]).train()(x, lengths)
    for clean, noisy, n in zip(x, y, lengths):
        noise = noisy[:n] - clean[:n]
        snr = 10 * torch.log10(clean[:n].square().mean() / noise.square().mean())
        assert snr.item() == pytest.approx(12.0, abs=0.05)


def test_pauses_put_each_clip_between_pauses_over_room_tone_as_the_condition_does() -> None:
    x, lengths = waveform_batch()
    torch.manual_seed(1)
    y, new_lengths = RoomTonePauses(max_pause_s=0.25, min_level_db=-40, max_level_db=-40, p=1.0).train()(x, lengths)
    added = new_lengths - lengths
    assert (added > 0).all() and (added <= 2 * 0.25 * SAMPLE_RATE).all()
    for i, n in enumerate(lengths.tolist()):  # the speech is there, shifted, under a tone 40 dB down
        clip = y[i, : new_lengths[i]]
        best = max(range(int(added[i]) + 1), key=lambda k: float(clip[k:k + n] @ x[i, :n]))
        residual = clip[best:best + n] - x[i, :n]
        tone_db = 10 * math.log10(float(residual.square().mean()) / float(x[i, :n].square().mean()))
        assert tone_db == pytest.approx(-40, abs=3)
    torch.manual_seed(1)
    none = RoomTonePauses(p=0.0).train()(x, lengths)
    assert torch.equal(none[0], x) and torch.equal(none[1], lengths)
    with pytest.raises(ConfigError, match=r"RoomTonePauses: \[min_level_db, max_level_db\]"):
        RoomTonePauses(min_level_db=-20, max_level_db=-40)


def test_circular_shift_keeps_every_sample() -> None:
    x, lengths = waveform_batch()
    y, _ = TimeShift(max_fraction=0.3).train()(x, lengths)
    for clean, shifted, n in zip(x, y, lengths):
        assert torch.equal(clean[:n].sort().values, shifted[:n].sort().values)


def test_freq_warp_factor_one_is_identity_and_other_factors_move_content_up_or_down() -> None:
    features, frames = feature_batch()
    same, _ = FreqWarp(min_factor=1.0, max_factor=1.0).train()(features, frames)
    assert torch.equal(same, features)
    peak = torch.zeros(1, 40, 5)
    peak[:, 10] = 1.0
    up, _ = FreqWarp(min_factor=1.15, max_factor=1.15).train()(peak, torch.tensor([5]))
    down, _ = FreqWarp(min_factor=0.85, max_factor=0.85).train()(peak, torch.tensor([5]))
    centre = lambda f: (f[0, :, 0] * torch.arange(40)).sum() / f[0, :, 0].sum()  # noqa: E731
    assert centre(up).item() == pytest.approx(11.5, abs=0.1) and centre(down).item() == pytest.approx(8.5, abs=0.1)


def test_time_stretch_changes_frame_counts_by_the_factor() -> None:
    features, frames = feature_batch()
    _, new_frames = TimeStretch(min_factor=1.2, max_factor=1.2).train()(features, frames)
    assert new_frames.tolist() == [max(1, round(n * 1.2)) for n in frames.tolist()]


@pytest.mark.parametrize("shape", ["linear", "logarithmic", "exponential", "quarter_sine", "half_sine"])
def test_fade_ramps_from_silence_at_both_ends_and_keeps_the_middle(shape: str) -> None:
    x, lengths = waveform_batch()
    torch.manual_seed(0)
    y, new_lengths = Fade(max_fraction=0.3, shapes=[shape]).train()(x, lengths)
    assert torch.equal(new_lengths, lengths)
    gain = y[0, :5000] / x[0, :5000]
    assert gain[0].abs() < 0.05 and gain[4999].abs() < 0.05  # (nearly) silent at the clip's first and last sample
    assert torch.allclose(gain[1500:3500], torch.ones(2000), atol=1e-5)  # beyond 30% of either end: untouched
    assert (gain[:1500] <= 1 + 1e-5).all() and (gain[:1500] >= -1e-5).all()
    with pytest.raises(ConfigError, match="Fade: shapes"):
        Fade(shapes=["square"])


def test_time_crop_keeps_a_contiguous_span_of_the_requested_fraction() -> None:
    features, frames = feature_batch()
    torch.manual_seed(0)
    y, kept = TimeCrop(min_fraction=0.5, max_fraction=0.8).train()(features, frames)
    for clip, cropped, n, k in zip(features, y, frames.tolist(), kept.tolist()):
        assert max(1, math.floor(0.5 * n)) <= k <= max(1, math.ceil(0.8 * n))
        starts = [s for s in range(n - k + 1) if torch.equal(clip[:, s:s + k], cropped[:, :k])]
        assert starts  # the crop is the clip's own frames, in order
    with pytest.raises(ConfigError, match="TimeCrop"):
        TimeCrop(min_fraction=0.0)


def test_filter_augment_adds_one_piecewise_linear_curve_per_clip_within_its_range() -> None:
    features, frames = feature_batch()
    torch.manual_seed(0)
    y, kept = FilterAugment(max_gain=0.7, points=4).train()(features, frames)
    assert torch.equal(kept, frames)
    for clip, filtered, n in zip(features, y, frames.tolist()):
        curve = filtered[:, :n] - clip[:, :n]
        assert torch.allclose(curve, curve[:, :1].expand_as(curve), atol=1e-5)  # the same gain on every frame
        gain = curve[:, 0]
        assert gain.abs().max() <= 0.7 + 1e-5 and gain.abs().max() > 0
        kinks = (gain.diff(n=2).abs() > 1e-4).sum()
        assert kinks <= 2 * (4 - 2)  # straight between the knots (each inner knot bends at most two bins)
    with pytest.raises(ConfigError, match="FilterAugment: points"):
        FilterAugment(points=1)


def test_pipeline_runs_in_config_order_and_checks_its_config() -> None:
    pipeline = AugmentationPipeline({
        "waveform": {"speed": {"_target_": "sdr_lightning.audio.augment.SpeedPerturb", "factors": [1.25]},
                     "gain": None},  # null switches an entry off
        "spectrogram": {"mask": {"_target_": "sdr_lightning.audio.augment.SpecAugment"}},
    }).train()
    assert list(pipeline.waveform) == ["speed"] and pipeline.needs_waveforms
    assert not list(pipeline.state_dict())  # no weights: checkpoints do not change
    x, lengths = waveform_batch()
    _, new_lengths = pipeline.augment_waveform(x, lengths)
    assert new_lengths[0] == 4000
    with pytest.raises(ConfigError, match="model.augment has unknown key"):
        AugmentationPipeline({"wave": {}})
    with pytest.raises(ConfigError, match="model.augment.waveform.speed needs a _target_"):
        AugmentationPipeline({"waveform": {"speed": {"factors": [0.9]}}})
    with pytest.raises(ConfigError, match="is not an sdr_lightning.audio.augment.Augmentation"):
        AugmentationPipeline({"waveform": {"x": {"_target_": "torch.nn.Identity"}}})
    with pytest.raises(ConfigError, match="model.augment.waveform.speed: .*unexpected keyword argument 'factor'"):
        AugmentationPipeline({"waveform": {"speed": {"_target_": "sdr_lightning.audio.augment.SpeedPerturb",
                                                     "factor": 2}}})
    with pytest.raises(ConfigError, match="p=1.5"):
        Gain(p=1.5)
    assert isinstance(SpecAugment(), Augmentation)


# ---- through the model, the datamodule and the real config ----

def test_augment_options_compose_together(make_cfg) -> None:
    cfg = make_cfg("augment=[speed,noise,specaugment]")
    assert list(cfg.model.augment.waveform) == ["speed", "noise"]
    assert list(cfg.model.augment.spectrogram) == ["specaugment"]
    assert cfg.model.augment.waveform.speed.sample_rate == cfg.model.featurizer.sample_rate
    everything = make_cfg("augment=all").model.augment
    assert list(everything.waveform) == ["speed", "pitch", "gain", "noise", "shift"]
    assert list(everything.spectrogram) == ["freq_warp", "time_stretch", "specaugment"]
    assert not make_cfg().model.augment  # augment=none, the default


@pytest.mark.parametrize("model", ["linear", "cnn", "vit", "simclr"])
def test_every_model_trains_on_augmented_waveforms_and_evaluates_clean(make_cfg, model: str) -> None:
    cfg = make_cfg(f"model={model}", "augment=all")
    module = instantiate(cfg.model, _recursive_=False, _convert_="all")
    assert module.needs_waveforms and len(module.augmentation.spectrogram) == 3
    x, lengths = waveform_batch()
    batch = {"waveform": x, "lengths": lengths, "label": torch.arange(len(x))}
    torch.manual_seed(0)
    module.train()
    if model == "simclr":
        views = [module.contrastive_view(batch) for _ in range(2)]
        assert not torch.equal(views[0][0][..., :5], views[1][0][..., :5])  # the two views differ
    assert torch.isfinite(module.head(module.embed(batch))).all()
    module.eval()
    clean = module.featurizer(x, lengths)
    torch.testing.assert_close(module.augmented_features(batch), clean)
    features = {"features": clean[0], "feature_lengths": clean[1], "label": batch["label"]}
    module.train()
    with pytest.raises(ConfigError, match="Let the datamodule see the model"):
        module.embed(features)


def test_bad_augment_value_is_one_config_error_naming_the_key(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"model.augment.waveform.speed: SpeedPerturb: p=2"):
        build(make_cfg("augment=speed", "model.augment.waveform.speed.p=2"))


def test_datamodule_serves_train_waveforms_and_cached_eval_features(synthetic_data: Path, tmp_path: Path) -> None:
    dm = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), batch_size=8, download=False)
    dm.setup("fit", model=FeatureConsumer(LogMel(), needs_waveforms=True))
    assert "waveform" in next(iter(dm.train_dataloader()))
    assert "features" in next(iter(dm.val_dataloader())) and "features" in next(iter(dm.test_dataloader()))
    dm.setup("fit", model=FeatureConsumer(LogMel()))
    assert "features" in next(iter(dm.train_dataloader()))


def test_fast_dev_run_and_checkpoint_with_augmentation(make_cfg, tmp_path: Path) -> None:
    quick = ("model=cnn", "augment=[speed,noise,specaugment]", "data.batch_size=8", "logger=csv", "report.splits=[]")
    assert 0.0 <= train(make_cfg(*quick, "debug=fast_dev_run")) <= 1.0
    # one batch per stage again, but keeping a checkpoint (fast_dev_run saves none)
    train(make_cfg(*quick, "debug=limit", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                 "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"))
    checkpoint = json.loads((tmp_path / "metrics.json").read_text())["best_checkpoint"]
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert list(state["hyper_parameters"]["augment"]["waveform"]) == ["speed", "noise"]
    from sdr_lightning.models import DigitClassifier

    model = DigitClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    assert model.needs_waveforms
    wave = torch.randn(1, 4000)
    assert model(wave, torch.tensor([4000])).argmax().item() in range(10)


def test_a_disabled_waveform_chain_passes_clips_through(make_cfg) -> None:
    from sdr_lightning.audio.augment import AugmentationPipeline

    cfg = make_cfg("augment=noise", "model.augment.waveform.noise.p=1.0")
    pipeline = AugmentationPipeline(OmegaConf.to_container(cfg.model.augment, resolve=True))
    pipeline.train()
    waveform, lengths = torch.randn(2, 800), torch.tensor([800, 600])
    assert not torch.equal(pipeline.augment_waveform(waveform, lengths)[0], waveform)
    pipeline.waveform_enabled = False  # what CleanFinish does for its clean epochs
    out, out_lengths = pipeline.augment_waveform(waveform, lengths)
    assert out is waveform and out_lengths is lengths
