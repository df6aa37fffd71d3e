"""Synthetic voices: espeak-ng saying each digit word in several English accents and voice variants, male and
female, trimmed and resampled to 8 kHz like FSDD's clips, with FSDD's file naming and a metadata table.

    python -m sdr_lightning.data.voices --out .voices        (also `sdr-voices`; writes .voices/eval and .voices/train)

Two disjoint sets: `eval` (variants m1, m3, f1, f3, f5, each in every accent at both rates: 40 voices) scores models
(eval.py sets.espeak=.voices/eval), `train` (20 other variants, each in half the accents at one rate: 80 voices, as
many clips) may join the training clips (data.synthetic_voices). No variant is in both, so a model trained with the
train set is still scored on voices it never heard. The command installs nothing: without espeak-ng it stops with
one message saying how to get it.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

from sdr_lightning.data.metadata import METADATA_FILENAME, REQUIRED_COLUMNS, read_metadata
from sdr_lightning.errors import ConfigError, DataError, SdrError

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
VARIANTS = {
    "eval": ("m1", "m3", "f1", "f3", "f5"),
    # 80 voices in the same 800 clips as the 40 of layout 1: speakers no model trained on gained on every measure but
    # babble at 5 dB (LOSO 0.944 -> 0.952, worst fold 0.886 -> 0.928; docs/robustness.md, nineteenth round).
    # The order fixes each variant's accents and rate (`plan`).
    "train": ("m2", "m4", "m6", "f2", "f4", "m7", "m8", "Michael", "robert", "quincy", "paul", "edward", "david",
              "Andrea", "Alicia", "belinda", "aunty", "anika", "steph", "Annie"),
}
# The train set's design, written to <set>/voices.json. 2: the 20 variants above, each in half the accents at one rate
# (80 voices). 1: the sets before it (no voices.json): 5 variants in every accent at both rates (40 voices).
LAYOUT = 2
LAYOUTS = (1, 2)
LAYOUT_1_TRAIN_VARIANTS = ("m2", "m4", "m6", "f2", "f4")
LAYOUT_FILENAME = "voices.json"
# how many voices each layout's train set holds in all the accents: 40 and 80
LAYOUT_VOICES = {1: len(ACCENTS) * len(LAYOUT_1_TRAIN_VARIANTS), 2: len(ACCENTS) * len(VARIANTS["train"]) // 2}
FEMALE_VARIANTS = frozenset({"f1", "f2", "f3", "f4", "f5", "Andrea", "Alicia", "belinda", "aunty", "anika", "steph",
                             "Annie"})
# words per minute of each take (espeak-ng's default is 175): a brisk and a careful reading
TAKES = (175, 130)
SAMPLE_RATE = 8000
# FSDD's clips are cut close: keep what lies within this many dB of the loudest 10 ms, plus a margin
TRIM_DB, MARGIN_S = 40.0, 0.02


def espeak() -> str:
    """The espeak-ng program, or DataError saying how to install it (nothing is installed here)."""
    program = shutil.which("espeak-ng")
    if program is None:
        raise DataError("espeak-ng not found on PATH: the synthetic voices are spoken by it. Install it (Debian or "
                        "Ubuntu: apt-get install espeak-ng) and run this again.")
    return program


def trim(samples: np.ndarray, rate: int) -> np.ndarray:
    """Drop leading and trailing stretches more than TRIM_DB below the loudest 10 ms, keeping MARGIN_S of each."""
    frame = max(1, rate // 100)
    frames = len(samples) // frame
    if frames == 0:
        return samples
    energy = (samples[: frames * frame].reshape(frames, frame) ** 2).mean(axis=1)
    db = 10 * np.log10(np.maximum(energy, 1e-12))
    active = np.flatnonzero(db > db.max() - TRIM_DB)
    margin = int(MARGIN_S * rate)
    start, stop = max(active[0] * frame - margin, 0), min((active[-1] + 1) * frame + margin, len(samples))
    return samples[start:stop]


def speak(program: str, voice: str, text: str, words_per_minute: int) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "word.wav"
        result = subprocess.run([program, "-v", voice, "-s", str(words_per_minute), "-w", str(path), text],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0 or not path.is_file():
            raise DataError(f"espeak-ng -v {voice} failed ({result.stderr.strip() or result.returncode}); check that "
                            f"`espeak-ng --voices=en` lists the accent and `espeak-ng --voices=variant` the variant.")
        samples, rate = soundfile.read(path, dtype="float32")
    return samples, rate


def plan(which: str, accents: Sequence[str], variants: Sequence[str], takes: int,
         layout: int = LAYOUT) -> list[tuple[str, str, list[int]]]:
    """(accent, variant, take indices) of each voice a set holds, in the order it is written. `eval`, and `train` of
    layout 1: every variant in every accent, every take. `train` of layout 2: variant i in every other accent, starting
    from accent i, with one take per voice, the rates alternating, so twice the variants make as many clips."""
    if which == "eval" or layout == 1:
        return [(accent, variant, list(range(takes))) for accent in accents for variant in variants]
    return [(accents[(2 * j + i) % len(accents)], variant, [(i + j) % takes])
            for i, variant in enumerate(variants) for j in range((len(accents) + 1) // 2)]


def build(out: Path, which: str = "eval", accents: Sequence[str] = ACCENTS,
          variants: Sequence[str] | None = None, takes: Sequence[int] = TAKES, layout: int = LAYOUT) -> Path:
    """Write `out` (clips `<digit>_espeak-<accent>-<variant>_<take>.wav` and SDR_metadata.tsv, split TEST for the
    eval set, TRAIN for the train set) in `layout` (1 or 2; it shapes only the train set); returns it."""
    if layout not in LAYOUTS:
        raise ConfigError(f"voice layout {layout!r}: there are layouts 1 (40 train voices of 5 variants) and 2 (80 of "
                          "20, the default); pick one of them.")
    program = espeak()
    if variants is None:
        variants = LAYOUT_1_TRAIN_VARIANTS if (which, layout) == ("train", 1) else VARIANTS[which]
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for accent, variant, voice_takes in plan(which, accents, variants, len(takes), layout):
        speaker = f"espeak-{accent}-{variant}"
        for digit, word in enumerate(WORDS):
            for take in voice_takes:
                samples, rate = speak(program, f"{accent}+{variant}", word, takes[take])
                clip = AF.resample(torch.from_numpy(trim(samples, rate)), rate, SAMPLE_RATE).numpy()
                identifier = f"{digit}_{speaker}_{take}"
                soundfile.write(out / f"{identifier}.wav", clip, SAMPLE_RATE, subtype="PCM_16")
                rows.append([identifier, speaker, "TEST" if which == "eval" else "TRAIN", digit, f"{identifier}.wav"])
    with (out / METADATA_FILENAME).open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["", *REQUIRED_COLUMNS])
        writer.writerows([index, *row] for index, row in enumerate(rows))
    description = {"set": which, "layout": layout, "accents": list(accents), "variants": list(variants),
                   "words_per_minute": list(takes)}
    (out / LAYOUT_FILENAME).write_text(json.dumps(description, indent=2) + "\n")
    return out


def layout(folder: Path) -> int | None:
    """The layout a voice set was written with: its voices.json's; for a set written before voices.json existed, its
    number of voices (40: layout 1; 80: layout 2, written from the nineteenth round on); None when neither says."""
    try:
        return int(json.loads((folder / LAYOUT_FILENAME).read_text())["layout"])
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        count = len({clip.speaker for clip in read_metadata(folder)})
    except SdrError:
        return None
    return next((which for which, voices in LAYOUT_VOICES.items() if voices == count), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".voices"), help="folder for eval/ and train/")
    parser.add_argument("--sets", nargs="+", default=["eval", "train"], choices=sorted(VARIANTS))
    parser.add_argument("--accents", nargs="+", default=list(ACCENTS))
    parser.add_argument("--layout", type=int, default=LAYOUT, choices=LAYOUTS,
                        help="the train set's design: 2, 80 voices of 20 variants (default); 1, 40 voices of 5 "
                             "variants, as sets written before voices.json")
    args = parser.parse_args(argv)
    try:
        for which in args.sets:
            folder = build(args.out / which, which, accents=args.accents, layout=args.layout)
            print(f"{which}: {len(list(folder.glob('*.wav')))} clips in {folder}")
    except SdrError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
