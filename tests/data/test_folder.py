"""Your own recordings (data/folder.py): labels from FSDD-style names or a CSV, bad and unlabeled files listed once
and left out, an all-bad folder one clear error; the folder as extra TRAIN or EXTRA clips, with the overlap guard."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile

import sdr_lightning.data.cache as cache_module
from sdr_lightning.data.datamodule import SpokenDigitDataModule
from sdr_lightning.data.folder import UNKNOWN_SPEAKER, parse_name, read_folder
from sdr_lightning.errors import ConfigError, DataError
from tests.helpers import SAMPLE_RATE, compose


def write_clips(folder: Path, names: list[str], rate: int = SAMPLE_RATE) -> Path:
    """Tone clips (a digit's pitch, as tests/helpers.py's) under `names`; a name without a digit gets 440 Hz."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        digit = int(name[0]) if name[0].isdigit() else 0
        t = np.arange(int(0.4 * rate)) / rate
        wave = 0.5 * np.sin(2 * np.pi * (300 + 150 * digit) * t) * np.hanning(len(t))
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / name, wave.astype(np.float32), rate)
    return folder


def write_bad(folder: Path) -> dict[str, str]:
    """Files that must be left out, and a word of why each is."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "5_zed_0.wav").write_bytes(b"RIFF but not really a wave file")
    soundfile.write(folder / "6_zed_0.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    write_clips(folder, ["12_zed_0.wav", "hello.wav"])
    return {"5_zed_0.wav": "cannot read it as audio", "6_zed_0.wav": "holds no samples",
            "12_zed_0.wav": "not a digit 0-9", "hello.wav": "no digit label"}


@pytest.fixture(autouse=True)
def empty_memory_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "_MEMORY", {})


def test_parse_name() -> None:
    assert parse_name("3_alice_0") == (3, "alice")
    assert parse_name("0_mary_jane_12") == (0, "mary_jane")  # the speaker may hold underscores
    assert parse_name("7") == (7, UNKNOWN_SPEAKER)
    assert parse_name("7_take2") == (7, UNKNOWN_SPEAKER)
    assert "not a digit 0-9" in parse_name("10_alice_0")
    assert "no digit label" in parse_name("seven_alice_0")


def test_labels_from_names(tmp_path: Path) -> None:
    folder = write_clips(tmp_path / "my_clips", ["3_alice_0.wav", "4_alice_1.wav", "9_bob_0.wav", "sub/2_bob_1.wav",
                                                 "8.wav"], rate=16000)
    (folder / "notes.txt").write_text("not a clip")
    (folder / ".DS_Store").write_bytes(b"\0")
    got = read_folder(folder)
    assert got.problems == [] and got.candidates == 5
    assert {(c.identifier, c.label, c.speaker) for c in got.clips} == {
        ("3_alice_0", 3, "alice"), ("4_alice_1", 4, "alice"), ("9_bob_0", 9, "bob"), ("sub/2_bob_1", 2, "bob"),
        ("8", 8, UNKNOWN_SPEAKER)}
    assert all(c.path.is_file() and c.split == "EXTRA" for c in got.clips)
    assert got.name == "my_clips"


def test_labels_from_a_csv(tmp_path: Path) -> None:
    folder = write_clips(tmp_path / "rec", ["take1.wav", "take2.wav", "3_alice_0.wav", "4_alice_0.wav"])
    # a header in another order, a BOM as spreadsheets write, a row without speaker, one overriding the name's digit
    (folder / "labels.csv").write_text("\ufeffSpeaker,Digit,File\ncarol,7,take1.wav\n,2,take2.wav\n,5,3_alice_0.wav\n")
    got = {c.identifier: (c.label, c.speaker) for c in read_folder(folder).clips}
    assert got == {"take1": (7, "carol"), "take2": (2, UNKNOWN_SPEAKER), "3_alice_0": (5, "alice"),
                   "4_alice_0": (4, "alice")}
    # no header, semicolons, the CSV named instead of the folder (its files relative to its own folder)
    table = tmp_path / "elsewhere.csv"
    table.write_text("rec/take1.wav;1;dan\nrec/take2.wav;0;dan\n")
    got = read_folder(table)
    assert sorted((c.path.name, c.label, c.speaker) for c in got.clips if c.path.stem.startswith("take")) == [
        ("take1.wav", 1, "dan"), ("take2.wav", 0, "dan")]


def test_a_csv_without_file_and_label_columns_is_one_error(tmp_path: Path) -> None:
    folder = write_clips(tmp_path / "rec", ["a.wav"])
    (folder / "labels.csv").write_text("name,number\na.wav,3\n")
    with pytest.raises(DataError, match=r"labels.csv, line 1: expected a header naming a file column"):
        read_folder(folder)


def test_bad_and_unlabeled_files_are_listed_once_and_the_rest_kept(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    folder = write_clips(tmp_path / "rec", ["1_ann_0.wav", "2_ann_0.wav", "x.wav"])
    why = write_bad(folder)
    (folder / "labels.csv").write_text("file,label\nx.wav,nine\nmissing.wav,4\n")
    why |= {"x.wav": "'nine' (labels.csv, line 2) is not a digit 0-9", "missing.wav": "does not exist"}
    with caplog.at_level(logging.INFO, logger="sdr_lightning.data.folder"):
        got = read_folder(folder)
    assert sorted(c.identifier for c in got.clips) == ["1_ann_0", "2_ann_0"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings  # one block
    block = warnings[0]
    assert block.startswith(f"6 of the 8 files in {folder} are left out (2 scored):")
    for name, reason in why.items():
        [line] = [line for line in block.splitlines() if line.startswith(f"  - {name}:")]  # each file once
        assert reason in line, line
    assert "1_ann_0" not in block and str(folder / "x.wav") not in block  # names as in the folder, not full paths


def test_a_folder_with_no_usable_clip_is_one_error(tmp_path: Path) -> None:
    folder = tmp_path / "junk"
    write_bad(folder)
    with pytest.raises(DataError) as err:
        read_folder(folder)
    message = str(err.value)
    assert message.startswith(f"No usable clip in {folder} (audio_dir): 4 file(s), none usable:")
    assert all(f"  - {name}:" in message for name in ("5_zed_0.wav", "6_zed_0.wav", "12_zed_0.wav", "hello.wav"))
    assert "{digit}_{speaker}_{n}.wav" in message and "labels.csv" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no files\. To use it, name clips \{digit\}_\{speaker\}_\{n\}\.wav"):
        read_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="is not a folder"):
        read_folder(tmp_path / "absent")


def dm(data: Path, **kwargs) -> SpokenDigitDataModule:
    module = SpokenDigitDataModule(dir=str(data), download=False, batch_size=8, **kwargs)
    module.setup("fit")
    return module


def test_a_folder_joins_train_or_makes_the_extra_split(synthetic_data: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    folder = write_clips(tmp_path / "my_clips", [f"{d}_alice_{n}.wav" for d in range(10) for n in range(2)])
    write_bad(folder)
    with caplog.at_level(logging.WARNING, logger="sdr_lightning.data.folder"):
        train = dm(synthetic_data, extra_train=str(folder))
        train.setup("test", model=None)  # set up again (as prepare_data then fit do): read and listed once
        train._served = None
        train.setup("fit")
    assert len([r for r in caplog.records if "are left out" in r.getMessage()]) == 1
    assert len(train.datasets["TRAIN"]) == 80 + 20 and "EXTRA" not in train.datasets
    assert {c.identifier for c in train.splits["TRAIN"] if c.speaker == "alice"} == {
        f"my_clips/{d}_alice_{n}" for d in range(10) for n in range(2)}
    extra = dm(synthetic_data, extra_eval=str(folder))
    assert len(extra.datasets["EXTRA"]) == 20 and len(extra.datasets["TRAIN"]) == 80
    batch = next(iter(extra.dataloader("EXTRA")))
    assert sorted(batch["label"].tolist()) == sorted([d for d in range(10) for _ in range(2)])


def test_the_speaker_overlap_guard(synthetic_data: Path, tmp_path: Path) -> None:
    lucas = write_clips(tmp_path / "lucas_at_home", ["3_lucas_0.wav", "4_lucas_0.wav"])  # lucas is DEV/TEST
    with pytest.raises(ConfigError, match=r"data.extra_train=.*lucas_at_home: speaker\(s\) \['lucas'\] are also "
                                          r"evaluation"):
        dm(synthetic_data, extra_train=str(lucas))
    george = write_clips(tmp_path / "george_again", ["3_george_50.wav"])  # george is TRAIN
    with pytest.raises(ConfigError, match=r"data.extra_eval=.*george_again: speaker\(s\) \['george'\] are also "
                                          r"TRAIN"):
        dm(synthetic_data, extra_eval=str(george))
    ann = write_clips(tmp_path / "ann", ["1_ann_0.wav", "2_ann_0.wav"])
    with pytest.raises(ConfigError, match=r"\['ann'\]"):  # the same folder on both sides
        dm(synthetic_data, extra_train=str(ann), extra_eval=str(ann))
    allowed = dm(synthetic_data, extra_train=str(lucas), allow_speaker_overlap=True)
    assert {c.speaker for c in allowed.splits["TRAIN"]} >= {"lucas"}


def test_data_folder_config(tmp_path: Path) -> None:
    cfg = compose(tmp_path, ["data=folder", "data.extra_train=my_clips/"])
    assert cfg.data.extra_train == "my_clips/" and cfg.data.extra_eval is None
    assert cfg.data._target_ == "sdr_lightning.data.datamodule.SpokenDigitDataModule" and cfg.data.fold is None
