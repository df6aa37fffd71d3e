"""Your own recordings: a folder of labelled clips that is not FSDD, as the clip rows (metadata.Clip) the rest of the
code uses, for eval.py's `audio_dir=` and for `data.extra_train` / `data.extra_eval` (conf/data/folder.yaml).

A clip's digit comes from a row of the folder's CSV (`labels.csv` in the folder, or a CSV named instead of the
folder), else from its name as FSDD names clips, `{digit}_{speaker}_{n}.wav`. `{digit}.wav` and `{digit}_{anything}.wav`
give the digit too, with the speaker UNKNOWN_SPEAKER. The CSV has a column for the file (`file`, `path` or
`filename`: relative to the clips' folder, which is the CSV's own when only a CSV is given, or absolute), one for the
digit (`label` or `digit`, 0-9) and optionally `speaker`; without a header row its columns are file, label[, speaker].
Commas, semicolons or tabs.

Every other file (not hidden, not a CSV/text file) is a candidate clip: one without a digit 0-9, or whose audio does
not decode (audio.io.load_audio: unreadable, empty, NaN), is left out, and all of them are listed in one warning; the
rest are scored. A folder with no usable clip at all is one DataError saying what names or CSV are expected.
docs/own_recordings.md shows it from the command line.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sdr_lightning.audio.io import load_audio
from sdr_lightning.data.metadata import REPORT_FOLDERS, Clip, read_text
from sdr_lightning.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LABELS_CSV = "labels.csv"
# the speaker of a clip whose CSV row and name give none; the speaker-overlap guard cannot check these clips
UNKNOWN_SPEAKER = "unknown"
FILE_COLUMNS = ("file", "path", "filename")
LABEL_COLUMNS = ("label", "digit")
SPEAKER_COLUMNS = ("speaker",)
# files in the folder that are not candidate clips (notes, tables, pictures)
NOT_CLIPS = frozenset({".csv", ".tsv", ".txt", ".md", ".json", ".yaml", ".yml", ".pdf", ".png", ".jpg", ".jpeg",
                       ".zip", ".py", ".log"})
# the name of the split that data.extra_eval (and eval.py audio_dir=) adds to the datamodule
EXTRA_SPLIT = "EXTRA"
EXPECTED = (f"name clips {{digit}}_{{speaker}}_{{n}}.wav (digit 0-9, e.g. 3_alice_0.wav), or list them in a CSV "
            f"({LABELS_CSV} in the folder) with columns file,label[,speaker]")
_DIGITS = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class Problem:
    path: Path
    reason: str  # a sentence naming the file


@dataclass
class FolderClips:
    """What a folder yields: the usable clips, and the files left out with why."""

    folder: Path
    csv: Path | None
    clips: list[Clip]
    problems: list[Problem] = field(default_factory=list)
    candidates: int = 0  # files looked at

    @property
    def name(self) -> str:
        """Its report folder's name: the folder's (`extra` where that is empty or a split's report name)."""
        return report_name(self.folder)

    @property
    def speakers(self) -> set[str]:
        return {c.speaker for c in self.clips}

    def listing(self) -> str:
        lines = [f"{len(self.problems)} of the {self.candidates} files in {self.folder} are left out "
                 f"({len(self.clips)} scored):"]
        return "\n".join([*lines, *(f"  - {p.reason}" for p in self.problems)])


def report_name(folder: Path) -> str:
    name = Path(folder).expanduser().resolve().name
    return name if name and name not in REPORT_FOLDERS.values() else "extra"


def resolve_source(source: str | Path | Sequence[str | Path]) -> tuple[Path, Path | None]:
    """(folder, CSV) from a folder, a CSV file (its folder holds the clips), or [folder, CSV]."""
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
            return path.parent, path
        return path, None
    folder, table = (list(source) + [None])[:2]
    return Path(folder).expanduser(), Path(table).expanduser() if table else None


def parse_name(stem: str) -> tuple[int, str] | str:
    """(digit, speaker) from a file name without its suffix, or why it gives no digit."""
    parts = stem.split("_")
    if not _DIGITS.match(parts[0]):
        return "no digit label: its name is not {digit}_{speaker}_{n} and no CSV row lists it"
    digit = int(parts[0])
    if digit > 9:
        return f"label {parts[0]} (from its name) is not a digit 0-9"
    speaker = "_".join(parts[1:-1]).strip() if len(parts) >= 3 else ""
    return digit, speaker or UNKNOWN_SPEAKER


def read_labels(table: Path, folder: Path) -> tuple[dict[Path, tuple[int, str, int]], list[Problem]]:
    """{clip path: (digit, speaker or "", line)} from a labels CSV, and its rows that label nothing."""
    if not table.is_file():
        raise DataError(f"Labels CSV {table} not found; give an existing CSV, or none to take labels from the names.")
    text = read_text(table)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [(n, [cell.strip() for cell in row]) for n, row in enumerate(csv.reader(io.StringIO(text), dialect), 1)]
    rows = [(n, row) for n, row in rows if any(row) and not row[0].startswith("#")]
    columns = {"file": 0, "label": 1, "speaker": 2}
    if rows:
        header = [cell.lower() for cell in rows[0][1]]
        named = {key: next((header.index(c) for c in names if c in header), None)
                 for key, names in (("file", FILE_COLUMNS), ("label", LABEL_COLUMNS), ("speaker", SPEAKER_COLUMNS))}
        if named["file"] is not None and named["label"] is not None:
            columns, rows = named, rows[1:]
        elif len(header) < 2 or not _DIGITS.match(header[1]):
            raise DataError(f"{table}, line {rows[0][0]}: expected a header naming a file column "
                            f"({'/'.join(FILE_COLUMNS)}) and a label column ({'/'.join(LABEL_COLUMNS)}), optionally "
                            f"speaker, or rows of file,label[,speaker] without a header; got {rows[0][1]}.")
    labels: dict[Path, tuple[int, str, int]] = {}
    problems: list[Problem] = []

    def cell(row: list[str], key: str) -> str:
        index = columns.get(key)
        return row[index] if index is not None and index < len(row) else ""

    for line, row in rows:
        name, label, speaker = cell(row, "file"), cell(row, "label"), cell(row, "speaker")
        where = f"{table.name}, line {line}"
        if not name:
            problems.append(Problem(table, f"{where}: no file named"))
            continue
        path = (folder / name) if not Path(name).expanduser().is_absolute() else Path(name).expanduser()
        if not _DIGITS.match(label) or int(label) > 9:
            problems.append(Problem(path, f"{name}: label {label!r} ({where}) is not a digit 0-9"))
            labels[path] = (-1, speaker, line)
            continue
        previous = labels.get(path)
        if previous is not None and previous[0] != int(label):
            problems.append(Problem(path, f"{name}: two labels, {previous[0]} (line {previous[2]}) and {label} "
                                          f"({where})"))
            labels[path] = (-1, speaker, line)
            continue
        labels[path] = (int(label), speaker, line)
    return labels, problems


def read_folder(source: str | Path | Sequence[str | Path], split: str = EXTRA_SPLIT, prefix: str | None = None,
                what: str = "audio_dir") -> FolderClips:
    """The labelled clips of a folder (or of a CSV, or [folder, CSV]), as Clips of `split`; identifiers are the
    files' paths in the folder without their suffix (under `prefix`/ if given). The files left out are listed in one
    warning; none usable is one DataError (`what` names the setting in it)."""
    folder, table = resolve_source(source)
    if not folder.is_dir():
        raise DataError(f"{what}={source}: {folder} is not a folder; give a folder of clips or a labels CSV.")
    folder = folder.resolve()
    if table is None and (folder / LABELS_CSV).is_file():
        table = folder / LABELS_CSV
    labels, problems = read_labels(table.resolve(), folder) if table is not None else ({}, [])
    found = sorted(p.resolve() for p in folder.rglob("*") if p.is_file() and p.suffix.lower() not in NOT_CLIPS
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    candidates = list(dict.fromkeys([*found, *(p.resolve() for p in labels)]))
    bad_rows = {p.path.resolve() for p in problems}
    clips, seen = [], {}
    for path in candidates:
        shown = _shown(path, folder)
        if path in bad_rows:
            continue  # its CSV row is listed already
        if path in labels:
            digit, speaker, _ = labels[path]
            if not speaker:
                parsed = parse_name(path.stem)
                speaker = parsed[1] if isinstance(parsed, tuple) else UNKNOWN_SPEAKER
        else:
            parsed = parse_name(path.stem)
            if isinstance(parsed, str):
                problems.append(Problem(path, f"{shown}: {parsed}"))
                continue
            digit, speaker = parsed
        try:
            load_audio(path)
        except DataError as err:
            listed = f" (listed in {table.name}, line {labels[path][2]})" if path in labels else ""
            reason = _audio_reason(str(err), path)
            problems.append(Problem(path, f"{shown}: {reason.rstrip('.') + listed if listed else reason}"))
            continue
        identifier = Path(shown).with_suffix("").as_posix()
        identifier = f"{prefix}/{identifier}" if prefix else identifier
        if identifier in seen:
            problems.append(Problem(path, f"{shown}: same name as {seen[identifier]} (one identifier each)"))
            continue
        seen[identifier] = shown
        clips.append(Clip(identifier, speaker, split, digit, path))
    problems.sort(key=lambda p: (str(p.path), p.reason))
    result = FolderClips(folder, table, clips, problems, len(candidates))
    if not clips:
        shown = "\n".join(f"  - {p.reason}" for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        found_what = f"{len(candidates)} file(s), none usable:\n{shown}{more}\n" if candidates else "no files. "
        raise DataError(f"No usable clip in {folder} ({what}): {found_what}To use it, {EXPECTED}.")
    if problems:
        log.warning("%s", result.listing())
    unknown = sum(c.speaker == UNKNOWN_SPEAKER for c in clips)
    if unknown:
        log.info("%d of the %d clips of %s name no speaker: they count as speaker %r, which the speaker-overlap "
                 "guard cannot check", unknown, len(clips), folder, UNKNOWN_SPEAKER)
    return result


def read_extra_folders(extra_train: str | Sequence[str] | None,
                       extra_eval: str | Sequence[str] | None) -> dict[str, FolderClips]:
    """{"TRAIN": data.extra_train's clips, "EXTRA": data.extra_eval's}, for those given."""
    folders = {}
    for split, source, what in (("TRAIN", extra_train, "data.extra_train"),
                                (EXTRA_SPLIT, extra_eval, "data.extra_eval or eval.py audio_dir")):
        if source:
            folders[split] = read_folder(source, split, prefix=report_name(resolve_source(source)[0]), what=what)
    return folders


def add_folder_splits(splits: Mapping[str, list[Clip]], folders: Mapping[str, FolderClips],
                      allow_speaker_overlap: bool = False) -> dict[str, list[Clip]]:
    """`splits` with the folders' clips: "TRAIN"'s join TRAIN, "EXTRA"'s make the EXTRA split. Refused (ConfigError)
    unless `allow_speaker_overlap`: a folder's TRAIN speaker who is also in DEV, TEST or EXTRA, an EXTRA speaker who
    is also in TRAIN, and a file in TRAIN and in an evaluation split. Speaker UNKNOWN_SPEAKER is not checked."""
    result = dict(splits)
    if "TRAIN" in folders:
        result["TRAIN"] = [*splits["TRAIN"], *folders["TRAIN"].clips]
    if EXTRA_SPLIT in folders:
        result[EXTRA_SPLIT] = list(folders[EXTRA_SPLIT].clips)
    paths = {}
    for clip in (c for clips in result.values() for c in clips):
        if paths.setdefault(clip.identifier, clip.path) != clip.path:
            raise DataError(f"Two clips are named {clip.identifier}: {paths[clip.identifier]} and {clip.path}; give "
                            "the folders of data.extra_train and data.extra_eval different names.")
    if allow_speaker_overlap:
        return result
    fix = ("Rename or remove those clips, leave the folder out, or set data.allow_speaker_overlap=true to do it "
           "anyway.")
    evaluation = [c for name, clips in result.items() if name != "TRAIN" for c in clips]
    if "TRAIN" in folders:
        clash = sorted((folders["TRAIN"].speakers & {c.speaker for c in evaluation}) - {UNKNOWN_SPEAKER})
        if clash:
            raise ConfigError(f"data.extra_train={folders['TRAIN'].folder}: speaker(s) {clash} are also evaluation "
                              f"(DEV/TEST/extra_eval) speakers, so the figures would not be speaker-independent. {fix}")
    if EXTRA_SPLIT in folders:
        clash = sorted((folders[EXTRA_SPLIT].speakers & {c.speaker for c in result["TRAIN"]}) - {UNKNOWN_SPEAKER})
        if clash:
            raise ConfigError(f"data.extra_eval={folders[EXTRA_SPLIT].folder}: speaker(s) {clash} are also TRAIN "
                              f"speakers, so its figures would not be speaker-independent. {fix}")
    both = sorted({c.path.resolve() for c in result["TRAIN"]} & {c.path.resolve() for c in evaluation})
    if both:
        raise ConfigError(f"{len(both)} clip file(s) would be in TRAIN and in an evaluation split, e.g. {both[0]}. "
                          f"{fix}")
    return result


def _shown(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def _audio_reason(message: str, path: Path) -> str:
    """load_audio's message about `path`, without the path (the listing names the file) or libsndfile's file object."""
    message = re.sub(r"Error opening <_io\.\w+ name=.*?>: ", "", message)
    return message.replace(f"Cannot read audio file {path}: ", "cannot read it as audio: ").replace(
        f"Audio file {path} ", "")

