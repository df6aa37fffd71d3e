from pathlib import Path

import pytest
import torch

import sdr_lightning.data.cache as cache_module
import sdr_lightning.data.datamodule as datamodule_module
from sdr_lightning.audio.features import LogMel
from sdr_lightning.data.datamodule import ClipDataset, LengthGroupedSampler, SpokenDigitDataModule
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


@pytest.mark.parametrize(("consistency", "group_by_length"), [(0, 0), (2, 0), (0, 2)])
def test_a_model_trains_from_the_bank(make_cfg, tmp_path: Path, consistency: float, group_by_length: int) -> None:
    from sdr_lightning.tasks.train import train

    value = train(make_cfg("model=cnn", "model.encoder.channels=16", "debug=limit", "augment=[noise,reverb]",
                           "data.augment_bank=2", "report.projector=false", f"model.consistency={consistency}",
                           f"data.group_by_length={group_by_length}"))
    assert 0.0 <= value <= 1.0


def varied_lengths_dataset(count: int = 40, copies: int = 2) -> ClipDataset:
    """Feature clips of 5-44 frames whose copies are each a different length from the clip (as a room's tail or a
    pause makes them); every frame holds its clip's index and its version, to read back what was served."""
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(5, 45, (copies + 1, count), generator=generator)
    versions = [[torch.full((2, int(frames[v, i])), float(i + 1000 * v)) for i in range(count)]
                for v in range(copies + 1)]
    return ClipDataset([None] * count, versions[0], "features", labels=[i % 10 for i in range(count)],
                       copies=versions[1:])


def served(dataset: ClipDataset, sampler: LengthGroupedSampler, batch_size: int) -> list[dict[str, torch.Tensor]]:
    indices = list(sampler)
    return [dataset.__getitems__(indices[i: i + batch_size]) for i in range(0, len(indices), batch_size)]


def test_length_grouped_batches_serve_every_clip_once_with_little_padding() -> None:
    dataset = varied_lengths_dataset()
    sampler = LengthGroupedSampler(dataset, batch_size=4, window=5, seed=7)
    batches = served(dataset, sampler, 4)
    served_clips = torch.cat([b["index"] for b in batches])
    assert sorted(served_clips.tolist()) == list(range(40))  # each clip once an epoch
    for batch in batches:
        first = batch["features"][:, 0, 0]  # clip index + 1000 * version, as written
        assert torch.equal(first.remainder(1000).long(), batch["index"])
        version = first.div(1000, rounding_mode="floor").long()
        assert torch.equal(batch["augmented"], version > 0)
        # the served frames are the drawn version's, and its length is that version's
        assert torch.equal(batch["feature_lengths"], dataset.lengths[version, batch["index"]])
    padded = sum(b["features"].shape[0] * b["features"].shape[-1] for b in batches)
    used = sum(int(b["feature_lengths"].sum()) for b in batches)
    generator = torch.Generator().manual_seed(7)  # the same clips and versions in shuffled batches pad far more
    plain = dataset.lengths[torch.randint(0, 3, (40,), generator=generator), torch.randperm(40, generator=generator)]
    assert used / padded > 0.85 > 0.7 > plain.sum() / (plain.view(10, 4).amax(1).sum() * 4)
    assert {int(v) for b in batches for v in b["features"][:, 0, 0].div(1000, rounding_mode="floor")} == {0, 1, 2}


def test_length_grouped_order_is_seeded_by_the_epoch() -> None:
    dataset = varied_lengths_dataset()
    sampler = LengthGroupedSampler(dataset, batch_size=4, window=2, seed=3)
    first, second = list(sampler), list(sampler)  # an unannounced epoch is the next one (DDP's wrapper)
    assert first != second
    sampler.set_epoch(0)
    assert list(sampler) == first  # a resumed run, or another DDP rank, draws the same epoch alike
    assert list(LengthGroupedSampler(dataset, batch_size=4, window=2, seed=3)) == first
    dataset.clean_only = True  # CleanFinish's epochs: every clip as itself
    assert all(index < len(dataset) for index in sampler)
    dataset.clean_only = False
    sampler.set_epoch(0)
    assert any(index >= len(dataset) for index in sampler)


def test_length_grouped_part_batch_comes_last() -> None:
    dataset = varied_lengths_dataset(count=42)
    indices = list(LengthGroupedSampler(dataset, batch_size=4, window=3, seed=1))
    assert len(indices) == 42  # ten whole batches, then the two left over (which drop_last drops)
    last_two = {i % 42 for i in indices[-2:]}
    assert last_two == {i % 42 for i in indices} - {i % 42 for i in indices[:-2]}


def test_datamodule_serves_length_grouped_batches(synthetic_data: Path, tmp_path: Path) -> None:
    dm = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), batch_size=8, download=False,
                               augment_bank=2, group_by_length=2)
    dm.setup("fit", model=Augments())
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, LengthGroupedSampler)
    clips = torch.cat([batch["index"] for batch in loader])
    assert len(clips) == len(set(clips.tolist())) == len(dm.datasets["TRAIN"]) // 8 * 8
    # evaluation loaders are untouched, and read the clips themselves
    assert not isinstance(dm.val_dataloader().sampler, LengthGroupedSampler)
