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
