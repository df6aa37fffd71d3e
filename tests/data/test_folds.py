from pathlib import Path

import pytest

from sdr_lightning.data.datamodule import SpokenDigitDataModule
from sdr_lightning.data.metadata import loso_split, read_metadata, select_splits
from sdr_lightning.errors import DataError
from tests.helpers import compose

SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]


@pytest.mark.parametrize("fold", range(6))
def test_each_fold_tests_one_speaker_and_validates_on_the_next(fold: int) -> None:
    split = loso_split(list(reversed(SPEAKERS)), fold)  # the order given does not matter
    assert split["TEST"] == [SPEAKERS[fold]] and split["DEV"] == [SPEAKERS[(fold + 1) % 6]]
    assert len(split["TRAIN"]) == 4
    assert sorted(split["TRAIN"] + split["DEV"] + split["TEST"]) == SPEAKERS  # disjoint and complete


def test_every_speaker_is_test_exactly_once_and_dev_exactly_once() -> None:
    folds = [loso_split(SPEAKERS, fold) for fold in range(6)]
    assert sorted(s for f in folds for s in f["TEST"]) == SPEAKERS
    assert sorted(s for f in folds for s in f["DEV"]) == SPEAKERS


@pytest.mark.parametrize("fold", range(6))
def test_fold_splits_the_clips_by_speaker(synthetic_data: Path, fold: int) -> None:
    clips = read_metadata(synthetic_data)
    splits = select_splits(clips, fold=fold)
    speakers = {name: {c.speaker for c in chosen} for name, chosen in splits.items()}
    assert speakers["TEST"] == {SPEAKERS[fold]} and speakers["DEV"] == {SPEAKERS[(fold + 1) % 6]}
    assert not speakers["TRAIN"] & (speakers["DEV"] | speakers["TEST"])
    assert sum(map(len, splits.values())) == len(clips)  # every clip is used once, whatever its split column


@pytest.mark.parametrize("fold", [-1, 6, "2", True])
def test_fold_out_of_range_names_the_key_and_the_range(fold) -> None:
    with pytest.raises(DataError, match=r"data\.fold=.* is out of range.*0\.\.5"):
        loso_split(SPEAKERS, fold)


def test_fold_with_speaker_lists_is_refused(synthetic_data: Path) -> None:
    with pytest.raises(DataError, match="data.fold=1 .* cannot be combined with data.train_speakers"):
        select_splits(read_metadata(synthetic_data), train_speakers=["george"], fold=1)


def test_datamodule_and_config_select_a_fold(synthetic_data: Path, tmp_path: Path) -> None:
    cfg = compose(tmp_path, ["data=loso"])
    assert cfg.data.fold == 0 and cfg.data.train_speakers is None
    assert compose(tmp_path, ["data=loso", "data.fold=5"]).data.fold == 5
    assert compose(tmp_path).data.fold is None  # the reference split stays the default
    dm = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), download=False, fold=4)
    dm.setup("fit")
    assert {c.speaker for c in dm.splits["TEST"]} == {"theo"}
    assert {c.speaker for c in dm.splits["DEV"]} == {"yweweler"}
