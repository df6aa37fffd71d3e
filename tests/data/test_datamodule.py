from pathlib import Path

import pytest
import torch

import sdr_lightning.data.cache as cache_module
import sdr_lightning.data.datamodule as datamodule_module
from sdr_lightning.audio.features import LogMel
from sdr_lightning.data.datamodule import SpokenDigitDataModule
from sdr_lightning.errors import DataError
from tests.helpers import FeatureConsumer


def make(data_dir: Path, cache_dir: Path, **kwargs) -> SpokenDigitDataModule:
    dm = SpokenDigitDataModule(dir=str(data_dir), cache_dir=str(cache_dir), batch_size=8, download=False, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(autouse=True)
def empty_memory_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "_MEMORY", {})


def test_reference_splits(synthetic_data: Path, tmp_path: Path) -> None:
    dm = make(synthetic_data, tmp_path)
    sizes = {name: len(ds) for name, ds in dm.datasets.items()}
    assert sizes == {"TRAIN": 80, "DEV": 20, "TEST": 21}
    train_speakers = {c.speaker for c in dm.splits["TRAIN"]}
    eval_speakers = {c.speaker for s in ("DEV", "TEST") for c in dm.splits[s]}
    assert not train_speakers & eval_speakers


def test_single_speaker_and_guard(synthetic_data: Path, tmp_path: Path) -> None:
    dm = make(synthetic_data, tmp_path, train_speakers=["george"])
    assert {c.speaker for c in dm.splits["TRAIN"]} == {"george"} and len(dm.datasets["TRAIN"]) == 20
    with pytest.raises(DataError, match="lucas"):
        make(synthetic_data, tmp_path, train_speakers=["george", "lucas"])


def test_waveform_batches_are_padded_with_lengths(synthetic_data: Path, tmp_path: Path) -> None:
    dm = make(synthetic_data, tmp_path)
    batch = next(iter(dm.train_dataloader()))
    assert batch["waveform"].shape[0] == 8 and batch["lengths"].shape == (8,)
    assert batch["waveform"].shape[1] == batch["lengths"].max()
    for wave, n in zip(batch["waveform"], batch["lengths"]):
        assert (wave[n:] == 0).all()


def test_second_run_reads_disk_cache_without_decoding(synthetic_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    first = make(synthetic_data, tmp_path)
    assert list(tmp_path.glob("*.pt"))
    monkeypatch.setattr(cache_module, "_MEMORY", {})

    def no_decoding(*args, **kwargs):
        raise AssertionError("wav decoded again despite the cache")

    monkeypatch.setattr(datamodule_module, "load_audio", no_decoding)
    second = make(synthetic_data, tmp_path)
    for a, b in zip(first.datasets["DEV"].tensors, second.datasets["DEV"].tensors):
        assert torch.equal(a, b)


def test_features_computed_once_per_featurizer_setting(synthetic_data: Path, tmp_path: Path) -> None:
    dm = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), batch_size=8, download=False)
    dm.setup("fit", model=FeatureConsumer(LogMel(n_mels=13)))
    batch = next(iter(dm.val_dataloader()))
    assert batch["features"].shape[1] == 13 and "feature_lengths" in batch
    clip = dm.splits["DEV"][0]
    direct, frames = LogMel(n_mels=13)(datamodule_module.load_audio(clip.path)[None], torch.tensor([0]) + len(
        datamodule_module.load_audio(clip.path)))
    torch.testing.assert_close(dm.datasets["DEV"].tensors[0], direct[0, :, : frames[0]])
    assert len(list(tmp_path.glob("*.pt"))) == 2  # waveforms + one feature setting
    other = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), download=False)
    other.setup("fit", model=FeatureConsumer(LogMel(n_mels=20)))
    assert other.datasets["DEV"].tensors[0].shape[0] == 20
    assert len(list(tmp_path.glob("*.pt"))) == 3


def test_cache_features_false_serves_waveforms(synthetic_data: Path, tmp_path: Path) -> None:
    dm = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), download=False,
                               cache_features=False)
    dm.setup("fit", model=FeatureConsumer(LogMel()))
    assert "waveform" in next(iter(dm.val_dataloader()))


def test_missing_data_without_network_fails_clearly(tmp_path: Path) -> None:
    dm = SpokenDigitDataModule(dir=str(tmp_path / "nothing"), download=True,
                               download_url="http://127.0.0.1:9/fsdd.tar.gz")
    with pytest.raises(DataError, match="SDR_DATA_DIR"):
        dm.prepare_data()


class Augments(FeatureConsumer):
    """A model with waveform augmentations: its featurizer, and the chain the bank runs the clips through."""

    def __init__(self) -> None:
        from sdr_lightning.audio.augment import AugmentationPipeline

        super().__init__(LogMel(), needs_waveforms=True)
        self.augmentation = AugmentationPipeline(
            {"waveform": {"noise": {"_target_": "sdr_lightning.audio.augment.AddNoise", "p": 1.0}}})
        self.hparams = {"augment": {"waveform": {"noise": {"p": 1.0}}}}


def test_augment_bank_serves_each_clip_or_one_of_its_copies(synthetic_data: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    dm = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), batch_size=8, download=False,
                               augment_bank=3)
    state = torch.get_rng_state()
    dm.setup("fit", model=Augments())
    assert torch.equal(torch.get_rng_state(), state)  # the bank draws from a generator of its own
    train_set = dm.datasets["TRAIN"]
    assert train_set.kind == "features" and train_set.copies == 3 and train_set.padded.shape[0] == 4
    clean = dm.datasets["TRAIN"].tensors[0]
    assert not torch.equal(train_set.padded[1, 0, :, : clean.shape[-1]], clean)  # a noisy copy
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["augmented"].dtype == torch.bool and batch["augmented"].any() and "features" in batch
    # the same seed gives the same bank, from the disk cache: no augmentation runs again
    monkeypatch.setattr(cache_module, "_MEMORY", {})
    monkeypatch.setattr(datamodule_module, "augmented_copies", lambda *a, **k: pytest.fail("bank made again"))
    again = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), download=False, augment_bank=3)
    again.setup("fit", model=Augments())
    assert torch.equal(again.datasets["TRAIN"].padded, train_set.padded)


class WantsPairs(Augments):
    """A model with a consistency loss: it asks for each clip as itself beside one of its copies."""

    wants_clean_pairs = True


def test_clean_pairs_serve_a_copy_beside_the_clip_itself(synthetic_data: Path, tmp_path: Path) -> None:
    dm = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), batch_size=8, download=False,
                               augment_bank=2)
    dm.setup("fit", model=WantsPairs())
    train_set = dm.datasets["TRAIN"]
    batch = train_set.__getitems__(list(range(8)))
    assert batch["augmented"].all()  # the first view is always a copy
    for row, (index, n) in enumerate(zip(batch["index"], batch["clean_feature_lengths"])):
        torch.testing.assert_close(batch["clean_features"][row, :, :n], train_set.tensors[int(index)])
        copy = batch["features"][row, :, : batch["feature_lengths"][row]]
        assert any(torch.equal(copy, train_set.padded[v, index, :, : copy.shape[-1]]) for v in (1, 2))
    train_set.clean_only = True  # CleanFinish's epochs: both views are the clip itself
    batch = train_set.__getitems__([0, 1])
    assert not batch["augmented"].any() and torch.equal(batch["features"], batch["clean_features"])
    plain = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), download=False, augment_bank=2)
    plain.setup("fit", model=Augments())
    assert "clean_features" not in plain.datasets["TRAIN"].__getitems__([0, 1])


def test_clean_pairs_without_a_bank_stop_with_the_key_to_set(synthetic_data: Path, tmp_path: Path) -> None:
    from sdr_lightning.errors import ConfigError

    dm = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), download=False)
    with pytest.raises(ConfigError, match="data.augment_bank"):
        dm.setup("fit", model=WantsPairs())


def test_each_loso_fold_gets_a_bank_of_its_own_train_clips(synthetic_data: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Folds decode the same clips but train on different ones: a bank cached for one fold must not serve another."""
    def fold_bank(fold: int, cache: Path) -> torch.Tensor:
        monkeypatch.setattr(cache_module, "_MEMORY", {})
        dm = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(cache), download=False, augment_bank=1,
                                   fold=fold)
        dm.setup("fit", model=Augments())
        return dm.datasets["TRAIN"].padded

    fold_bank(0, tmp_path / "shared")
    after_fold_0 = fold_bank(1, tmp_path / "shared")
    assert torch.equal(after_fold_0, fold_bank(1, tmp_path / "fresh"))


@pytest.mark.parametrize("consistency", [0, 2])
def test_a_model_trains_from_the_bank(make_cfg, tmp_path: Path, consistency: float) -> None:
    from sdr_lightning.tasks.train import train

    value = train(make_cfg("model=cnn", "model.encoder.channels=16", "debug=limit", "augment=[noise,reverb]",
                           "data.augment_bank=2", "report.projector=false", f"model.consistency={consistency}"))
    assert 0.0 <= value <= 1.0
