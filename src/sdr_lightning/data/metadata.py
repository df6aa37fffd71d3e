"""Read and validate the clip table (`SDR_metadata.tsv`) and turn a split specification into clip lists."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdr_lightning.errors import DataError

METADATA_FILENAME = "SDR_metadata.tsv"
REQUIRED_COLUMNS = ("identifier", "speaker", "split", "label", "file")
SPLIT_NAMES = ("TRAIN", "DEV", "TEST")
# One split, three names: the metadata's split column (DEV), the prefix of its metrics (val/acc: Lightning's name for
# evaluation during fit) and its report folder (<run>/reports/dev/). docs/evaluation.md has the table.
METRIC_PREFIXES = {"TRAIN": "train", "DEV": "val", "TEST": "test"}
REPORT_FOLDERS = {"TRAIN": "train", "DEV": "dev", "TEST": "test"}
# The label an unlabeled TRAIN clip carries in batches (data.labeled_speakers); losses and metrics skip it.
UNLABELED = -1


@dataclass(frozen=True)
class Clip:
    identifier: str
    speaker: str
    split: str
    label: int
    path: Path


def read_metadata(data_dir: str | Path, filename: str = METADATA_FILENAME) -> list[Clip]:
    """Parse the TSV in `data_dir`; clip paths resolve to files beside it (the `file` column's name)."""
    data_dir = Path(data_dir)
    path = data_dir / filename
    if not path.is_file():
        raise DataError(
            f"Metadata file {path} not found. Point data.dir (or SDR_DATA_DIR) at a folder holding the FSDD clips "
            f"and {filename}, or set data.download=true to fetch them."
        )
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter="\t")
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; expected tab-separated columns {list(REQUIRED_COLUMNS)}."
        )
    clips: list[Clip] = []
    seen: set[str] = set()
    for line_no, row in enumerate(reader, start=2):
        where = f"{path}, line {line_no}"
        # a short row leaves its last fields None; an empty one leaves ""; both would name no clip or speaker
        empty = [column for column in REQUIRED_COLUMNS if not (row[column] or "").strip()]
        if empty:
            raise DataError(f"{where}: no value in column(s) {empty}; every row needs {list(REQUIRED_COLUMNS)} "
                            f"(tab-separated).")
        identifier = row["identifier"].strip()
        if identifier in seen:
            raise DataError(f"{where}: duplicate identifier {identifier!r}; every clip must be listed once.")
        seen.add(identifier)
        split = row["split"].strip().upper()
        if split not in SPLIT_NAMES:
            raise DataError(f"{where}: unknown split {row['split']!r}; use one of {list(SPLIT_NAMES)}.")
        try:
            label = int(row["label"])
        except ValueError:
            label = -1
        if not 0 <= label <= 9:
            raise DataError(f"{where}: label {row['label']!r} is not a digit 0-9.")
        clips.append(
            Clip(identifier, row["speaker"].strip(), split, label, data_dir / Path(row["file"].strip()).name)
        )
    if not clips:
        raise DataError(f"{path} lists no clips.")
    return clips


def read_text(path: Path) -> str:
    """The file as UTF-8 text, a byte-order mark (as spreadsheet programs write) dropped; a byte that is not UTF-8
    is one DataError naming the file and its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: byte 0x{data[err.start]:02x} is not UTF-8 text; save the file as UTF-8 "
                        "(tab-separated).") from err


def check_files_exist(clips: Iterable[Clip]) -> None:
    missing = [c.path for c in clips if not c.path.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise DataError(
            f"{len(missing)} clip(s) listed in the metadata are missing, e.g. {shown}. Restore them (or re-run with "
            f"data.download=true into an empty data.dir), or remove their rows from the metadata."
        )


def select_splits(
    clips: Sequence[Clip],
    train_speakers: Sequence[str] | None = None,
    dev_speakers: Sequence[str] | None = None,
    test_speakers: Sequence[str] | None = None,
    allow_speaker_overlap: bool = False,
    fold: int | None = None,
) -> dict[str, list[Clip]]:
    """TRAIN/DEV/TEST clip lists.

    A split without a speaker list takes the metadata's own split column; with a list it takes every clip
    of those speakers. `fold` sets all three lists from `loso_split` instead. Evaluation speakers must
    never be heard in training unless the caller opts out.
    """
    known = sorted({c.speaker for c in clips})
    if fold is not None:
        given = [f"data.{key}" for key, speakers in (("train_speakers", train_speakers), ("dev_speakers", dev_speakers),
                                                      ("test_speakers", test_speakers)) if speakers is not None]
        if given:
            raise DataError(f"data.fold={fold} chooses every split's speakers, so it cannot be combined with "
                            f"{', '.join(given)}; set data.fold=null to use the speaker lists, or drop the lists.")
        folds = loso_split(known, fold)
        train_speakers, dev_speakers, test_speakers = folds["TRAIN"], folds["DEV"], folds["TEST"]
    for key, speakers in (("train_speakers", train_speakers), ("dev_speakers", dev_speakers),
                          ("test_speakers", test_speakers)):
        unknown = sorted(set(speakers or ()) - set(known))
        if unknown:
            raise DataError(f"data.{key}: unknown speaker(s) {unknown}; the metadata has {known}.")

    def pick(split: str, speakers: Sequence[str] | None) -> list[Clip]:
        if speakers is None:
            return [c for c in clips if c.split == split]
        return [c for c in clips if c.speaker in set(speakers)]

    splits = {
        "TRAIN": pick("TRAIN", train_speakers),
        "DEV": pick("DEV", dev_speakers),
        "TEST": pick("TEST", test_speakers),
    }
    for name, chosen in splits.items():
        if not chosen:
            raise DataError(f"Split {name} is empty; check data.train_speakers/dev_speakers/test_speakers.")
    train = {c.speaker for c in splits["TRAIN"]}
    heard = sorted(train & {c.speaker for name in ("DEV", "TEST") for c in splits[name]})
    if heard and not allow_speaker_overlap:
        raise DataError(
            f"Speaker(s) {heard} are in training and in evaluation, so the result would not be speaker-independent. "
            f"Change data.train_speakers / dev_speakers / test_speakers, or set data.allow_speaker_overlap=true "
            f"to do it anyway."
        )
    return splits


def resolve_labeled_speakers(train: Sequence[Clip], names: Sequence[str] | None) -> set[str]:
    """The TRAIN speakers whose labels training may use: `names`, checked against TRAIN, or all of them."""
    present = sorted({c.speaker for c in train})
    if names is None:
        return set(present)
    if not names:
        raise DataError("data.labeled_speakers=[] leaves no labeled clip; name at least one TRAIN speaker, or set "
                        "data.labeled_speakers=null to label every TRAIN clip.")
    outside = sorted(set(names) - set(present))
    if outside:
        raise DataError(f"data.labeled_speakers: speaker(s) {outside} are not in TRAIN {present}; name TRAIN speakers "
                        "only (evaluation speakers never lend labels or audio to training), or set it to null.")
    return set(names)


def loso_split(speakers: Sequence[str], fold: int) -> dict[str, list[str]]:
    """Leave-one-speaker-out fold: with the speakers sorted alphabetically, fold k tests speaker k, validates
    on speaker (k + 1) mod n and trains on the rest, so over n folds every speaker is TEST exactly once."""
    ordered = sorted(set(speakers))
    count = len(ordered)
    if count < 3:
        raise DataError(f"data.fold needs at least 3 speakers (TRAIN, DEV and TEST each need one); the metadata "
                        f"has {ordered}. Set data.fold=null and name the splits' speakers instead.")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < count:
        raise DataError(f"data.fold={fold!r} is out of range: with {count} speakers {ordered}, use an integer "
                        f"0..{count - 1} (fold k tests speaker k), or data.fold=null for the other splits.")
    test, dev = ordered[fold], ordered[(fold + 1) % count]
    return {"TRAIN": [s for s in ordered if s not in (test, dev)], "DEV": [dev], "TEST": [test]}
