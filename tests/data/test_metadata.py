from pathlib import Path

import pytest

from sdr_lightning.data.metadata import check_files_exist, read_metadata, select_splits
from sdr_lightning.errors import DataError
from tests.helpers import write_metadata

ROWS = [
    ["0_george_0", "george", "TRAIN", 0, "speech_data/0_george_0.wav"],
    ["1_lucas_0", "lucas", "DEV", 1, "speech_data/1_lucas_0.wav"],
    ["2_lucas_1", "lucas", "TEST", 2, "speech_data/2_lucas_1.wav"],
    ["3_theo_0", "theo", "TRAIN", 3, "speech_data/3_theo_0.wav"],
]


def table(tmp_path: Path, rows=ROWS, header=None) -> Path:
    write_metadata(tmp_path / "SDR_metadata.tsv", rows, header)
    return tmp_path


def test_reads_reference_table(synthetic_data: Path) -> None:
    clips = read_metadata(synthetic_data)
    assert len(clips) == 121
    assert clips[0].path == synthetic_data / f"{clips[0].identifier}.wav"
    assert {c.split for c in clips} == {"TRAIN", "DEV", "TEST"}


@pytest.mark.parametrize(
    "rows, header, message",
    [
        (ROWS, ["", "identifier", "speaker", "label", "file"], "missing column"),
        ([*ROWS, ["4_theo_1", "theo", "VALID", 4, "x.wav"]], None, "unknown split 'VALID'"),
        ([*ROWS, ["4_theo_1", "theo", "TRAIN", 11, "x.wav"]], None, "label '11'"),
        ([*ROWS, ["4_theo_1", "theo", "TRAIN", "four", "x.wav"]], None, "label 'four'"),
        ([*ROWS, ROWS[0]], None, "duplicate identifier '0_george_0'"),
    ],
)
def test_bad_tables_name_the_problem(tmp_path: Path, rows, header, message: str) -> None:
    with pytest.raises(DataError, match=message) as err:
        read_metadata(table(tmp_path, rows, header))
    assert "SDR_metadata.tsv" in str(err.value)


def test_missing_table_says_how_to_provide_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.dir"):
        read_metadata(tmp_path)


def test_missing_clip_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="0_george_0.wav"):
        check_files_exist(read_metadata(table(tmp_path)))


def test_reference_split_uses_split_column(tmp_path: Path) -> None:
    splits = select_splits(read_metadata(table(tmp_path)))
    assert [c.identifier for c in splits["TRAIN"]] == ["0_george_0", "3_theo_0"]
    assert [c.identifier for c in splits["DEV"]] == ["1_lucas_0"]
    assert [c.identifier for c in splits["TEST"]] == ["2_lucas_1"]


def test_train_speaker_list_keeps_only_those_speakers(tmp_path: Path) -> None:
    splits = select_splits(read_metadata(table(tmp_path)), train_speakers=["george"])
    assert {c.speaker for c in splits["TRAIN"]} == {"george"}
    assert len(splits["DEV"]) == 1


def test_guard_refuses_evaluation_speaker_in_training(tmp_path: Path) -> None:
    clips = read_metadata(table(tmp_path))
    with pytest.raises(DataError, match=r"\['lucas'\].*allow_speaker_overlap"):
        select_splits(clips, train_speakers=["george", "lucas"])
    splits = select_splits(clips, train_speakers=["george", "lucas"], allow_speaker_overlap=True)
    assert {c.speaker for c in splits["TRAIN"]} == {"george", "lucas"}


def test_unknown_speaker_and_empty_split(tmp_path: Path) -> None:
    clips = read_metadata(table(tmp_path))
    with pytest.raises(DataError, match="unknown speaker"):
        select_splits(clips, train_speakers=["gorge"])
    with pytest.raises(DataError, match="DEV is empty"):
        select_splits([c for c in clips if c.split != "DEV"])


def test_a_byte_order_mark_is_read_as_utf8(tmp_path: Path) -> None:
    """Spreadsheet programs save 'UTF-8' with a BOM, which made the first column look missing."""
    folder = table(tmp_path)
    path = folder / "SDR_metadata.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [c.identifier for c in read_metadata(folder)] == [row[0] for row in ROWS]


def test_a_byte_that_is_not_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    folder = table(tmp_path)
    path = folder / "SDR_metadata.tsv"
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"lucas", b"luc\xe1s")  # Latin-1 "á"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"SDR_metadata.tsv, line 4: byte 0xe1 is not UTF-8 text; save the file as"):
        read_metadata(folder)
