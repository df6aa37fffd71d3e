"""The synthetic voices: espeak-ng's digit words, laid out like FSDD (8 kHz, trimmed, metadata), eval and train sets
disjoint; without espeak-ng, one clear message and nothing installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import soundfile

from sdr_lightning.data import voices
from sdr_lightning.data.metadata import read_metadata
from sdr_lightning.errors import ConfigError, DataError


@pytest.fixture
def espeak_ng() -> str:
    program = shutil.which("espeak-ng")
    if program is None:
        if os.environ.get("CI"):
            pytest.fail("espeak-ng is missing: .ci/run installs it (apt-get install espeak-ng)")
        pytest.skip("espeak-ng is not installed here")
    return program


def test_a_small_set_is_laid_out_like_fsdd(espeak_ng: str, tmp_path: Path) -> None:
    folder = voices.build(tmp_path / "eval", "eval", accents=["en-us", "en-gb"], variants=["m1", "f3"], takes=[175])
    clips = read_metadata(folder)
    assert len(clips) == 2 * 2 * 10 and {c.split for c in clips} == {"TEST"}
    assert {c.speaker for c in clips} == {f"espeak-{a}-{v}" for a in ("en-us", "en-gb") for v in ("m1", "f3")}
    assert sorted({c.label for c in clips}) == list(range(10))
    for clip in clips:
        info = soundfile.info(clip.path)
        assert info.samplerate == 8000 and info.channels == 1 and 0.15 < info.duration < 1.5  # trimmed, one word
    assert clips[0].path.name == "0_espeak-en-us-m1_0.wav"


def test_the_eval_and_train_voices_are_disjoint() -> None:
    assert not set(voices.VARIANTS["eval"]) & set(voices.VARIANTS["train"])
    for which in ("eval", "train"):
        assert {v in voices.FEMALE_VARIANTS for v in voices.VARIANTS[which]} == {True, False}  # women and men in each


def test_the_train_set_has_twice_the_voices_in_as_many_clips() -> None:
    accents, takes = voices.ACCENTS, len(voices.TAKES)
    sets = {which: voices.plan(which, accents, voices.VARIANTS[which], takes) for which in ("eval", "train")}
    clips = {which: sum(len(voice_takes) for *_, voice_takes in plan) for which, plan in sets.items()}
    assert clips["eval"] == clips["train"] == 80  # times ten digits: 800 clips each
    assert (len(sets["eval"]), len(sets["train"])) == (40, 80)
    assert len({(accent, variant) for accent, variant, _ in sets["train"]}) == 80  # no voice twice
    for i, variant in enumerate(voices.VARIANTS["train"]):
        mine = [(accent, voice_takes) for accent, v, voice_takes in sets["train"] if v == variant]
        assert len(mine) == len(accents) // 2 and {accents.index(a) % 2 for a, _ in mine} == {i % 2}
        assert {take for _, (take,) in mine} == {0, 1}  # both rates
    assert voices.plan("train", ["en-us"], ["m2"], 1) == [("en-us", "m2", [0])]  # a one-accent set still speaks


def test_layout_1_is_the_older_train_set_of_40_voices() -> None:
    accents, takes = voices.ACCENTS, len(voices.TAKES)
    old = voices.plan("train", accents, voices.LAYOUT_1_TRAIN_VARIANTS, takes, layout=1)
    assert len(old) == 40 and all(voice_takes == [0, 1] for *_, voice_takes in old)  # every voice at both rates
    assert {(a, v) for a, v, _ in old} == {(a, v) for a in accents for v in voices.LAYOUT_1_TRAIN_VARIANTS}
    assert set(voices.LAYOUT_1_TRAIN_VARIANTS) < set(voices.VARIANTS["train"])  # still disjoint from eval's


def test_the_layout_is_written_and_read_back(espeak_ng: str, tmp_path: Path) -> None:
    voices.main(["--out", str(tmp_path), "--sets", "train", "--layout", "1", "--accents", "en-us"])
    old = tmp_path / "train"
    assert voices.layout(old) == 1
    assert len(read_metadata(old)) == 5 * 2 * 10  # the 5 variants of layout 1, both rates
    assert (old / "0_espeak-en-us-f4_1.wav").is_file()
    with pytest.raises(ConfigError, match="voice layout 3"):
        voices.build(tmp_path / "other", "train", layout=3)
    assert not (tmp_path / "other").exists()


def test_without_espeak_ng_it_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(voices.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match=r"espeak-ng not found on PATH.*apt-get install espeak-ng"):
        voices.build(tmp_path / "eval")
    assert not (tmp_path / "eval").exists()
    with pytest.raises(SystemExit, match="^error: espeak-ng not found"):
        voices.main(["--out", str(tmp_path)])


def test_synthetic_voices_join_train_and_the_eval_set_is_refused(espeak_ng: str, synthetic_data: Path,
                                                                 tmp_path: Path) -> None:
    from sdr_lightning.data.datamodule import SpokenDigitDataModule

    train_set = voices.build(tmp_path / "train", "train", accents=["en-us"], variants=["m2"], takes=[175])
    dm = SpokenDigitDataModule(dir=str(synthetic_data), download=False, synthetic_voices=str(train_set))
    dm.setup("fit")
    assert len(dm.datasets["TRAIN"]) == 80 + 10
    assert {c.speaker for c in dm.splits["TRAIN"]} >= {"espeak-en-us-m2", "george"}
    eval_set = voices.build(tmp_path / "eval", "eval", accents=["en-us"], variants=["m1"], takes=[175])
    with pytest.raises(ConfigError, match="eval set"):
        SpokenDigitDataModule(dir=str(synthetic_data), download=False, synthetic_voices=str(eval_set)).setup("fit")


def test_a_set_written_before_the_layout_file_is_used_with_a_warning(espeak_ng: str, synthetic_data: Path,
                                                                    tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from sdr_lightning.data.datamodule import SpokenDigitDataModule

    train_set = voices.build(tmp_path / "train", "train", accents=["en-us"], variants=["m2"], takes=[175])
    assert voices.layout(train_set) == voices.LAYOUT
    SpokenDigitDataModule(dir=str(synthetic_data), download=False, synthetic_voices=str(train_set)).setup("fit")
    assert "older sdr-lightning" not in caplog.text
    (train_set / voices.LAYOUT_FILENAME).unlink()  # as the sets written before it existed
    assert voices.layout(train_set) is None  # one voice: neither layout's 40 or 80
    dm = SpokenDigitDataModule(dir=str(synthetic_data), download=False, synthetic_voices=str(train_set))
    dm.setup("fit")
    assert len(dm.datasets["TRAIN"]) == 80 + 10  # still used
    assert "written by an older sdr-lightning" in caplog.text
    assert "python -m sdr_lightning.data.voices --out" in caplog.text
    caplog.clear()
    old = voices.build(tmp_path / "old", "train", accents=["en-us"], variants=["m2"], takes=[175], layout=1)
    SpokenDigitDataModule(dir=str(synthetic_data), download=False, synthetic_voices=str(old)).setup("fit")
    assert "older sdr-lightning" not in caplog.text  # written as layout 1 on purpose: no warning


def test_a_missing_voice_folder_says_how_to_write_it(synthetic_data: Path, tmp_path: Path) -> None:
    from sdr_lightning.data.datamodule import SpokenDigitDataModule

    with pytest.raises(ConfigError, match=r"data.synthetic_voices=.*python -m sdr_lightning.data.voices --out"):
        SpokenDigitDataModule(dir=str(synthetic_data), download=False,
                              synthetic_voices=str(tmp_path / ".voices" / "train")).setup("fit")


def test_a_set_without_the_layout_file_is_known_by_its_number_of_voices(tmp_path: Path) -> None:
    assert voices.LAYOUT_VOICES == {1: 40, 2: 80}
    for count, want in ((40, 1), (80, 2), (39, None)):
        folder = tmp_path / str(count)
        folder.mkdir()
        rows = [f"{i}\t{i}_v{i}_0\tespeak-v{i}\tTRAIN\t{i % 10}\t{i}_v{i}_0.wav" for i in range(count)]
        (folder / "SDR_metadata.tsv").write_text("\tidentifier\tspeaker\tsplit\tlabel\tfile\n" + "\n".join(rows) + "\n")
        assert voices.layout(folder) == want, count
    (tmp_path / "40" / voices.LAYOUT_FILENAME).write_text("not json")
    assert voices.layout(tmp_path / "40") is None  # an unreadable description says nothing
    assert voices.layout(tmp_path / "nowhere") is None
