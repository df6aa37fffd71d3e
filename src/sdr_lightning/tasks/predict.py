"""Predict the digit of audio files with a trained checkpoint: `python predict.py ckpt_path=... audio=<file, folder
or glob>` prints one line per file (and can write a CSV). Files are decoded by `load_audio` (any sample rate,
stereo, integer or float), edge silence is trimmed inside the model, and a bad file gets an error line of its own
while the others are still predicted. `mode=sequence` gives each file's digit string instead (a PIN, a phone
number), with each digit's start, end and confidence (sdr_lightning.sequence)."""

from __future__ import annotations

import csv
import glob
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from sdr_lightning.audio.io import load_audio
from sdr_lightning.data.datamodule import collate_waveforms
from sdr_lightning.errors import ConfigError, DataError
from sdr_lightning.tasks.checkpoint import load_for_inference

log = logging.getLogger(__name__)

# FSDD's clips last at most ~2.3 s; a recording above this is not one spoken digit.
LONG_RECORDING_S = 3.0


@dataclass
class FilePrediction:
    path: str
    probabilities: np.ndarray | None = None  # (num_classes,), None when the file failed
    error: str | None = None
    warning: str | None = None  # predicted, but the digit may not mean much (a long recording)

    @property
    def digit(self) -> int | None:
        return None if self.probabilities is None else int(self.probabilities.argmax())

    @property
    def probability(self) -> float | None:
        return None if self.probabilities is None else float(self.probabilities.max())


def load_model(cfg: DictConfig) -> torch.nn.Module:
    """The checkpoint `cfg.ckpt_path` in eval mode, ready for raw waveforms; a SimCLR checkpoint gets its probe refit
    on its run's TRAIN clips first, as eval.py does (`cfg.refit_probe=false`: the checkpoint's online probe)."""
    return load_for_inference(cfg.ckpt_path, cfg.get("run_dir"), cfg.paths, cfg.get("data_dir"),
                              refit_probe=cfg.get("refit_probe", True)).model


def find_audio(spec: str | Sequence[str]) -> list[Path]:
    """Files named by `spec`: a file, a folder (its files, not recursive), a glob (`**` recursive) or a list of
    those, each file once however many paths reach it (symbolic links, a `**` through a link loop). A named file
    that does not exist, and a broken or looping link, is kept, to be reported with its own error line; a folder or
    glob that matches nothing is a ConfigError."""
    specs = [str(spec)] if isinstance(spec, (str, Path)) else [str(s) for s in spec]
    if not specs:
        raise ConfigError("audio=[]: name a file, a folder or a glob, e.g. audio=clips/ or audio='clips/*.wav'.")
    files: dict[Path, Path] = {}  # resolved file -> the first path that reached it
    for item in specs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if is_candidate(p) and not p.name.startswith("."))
        elif glob.has_magic(item):
            found = sorted(p for p in map(Path, glob.glob(str(path), recursive=True)) if is_candidate(p))
        else:
            found = [path]
        if not found:
            raise ConfigError(f"audio={item}: no file there; name a file, a folder or a glob such as 'clips/*.wav'.")
        for file in found:
            files.setdefault(resolved(file), file)
    return list(files.values())


def is_candidate(path: Path) -> bool:
    """A file, or a link that does not lead to a folder (a broken or looping one gets its error line)."""
    return path.is_file() or (path.is_symlink() and not path.is_dir())


def resolved(path: Path) -> Path:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):  # broken or looping link: its own path is its identity
        return path.absolute()


@torch.inference_mode()
def predict_files(model: torch.nn.Module, paths: Sequence[str | Path], batch_size: int = 64,
                  files_in_memory: int = 2048) -> list[FilePrediction]:
    """Probabilities for each file, in order; a file that cannot be decoded gets its error instead. Files are
    decoded `files_in_memory` at a time, so any number of them fits in memory."""
    sample_rate = int(model.featurizer.sample_rate)
    results = [FilePrediction(str(path)) for path in paths]
    for first in range(0, len(results), files_in_memory):
        waveforms = {}
        for index in range(first, min(first + files_in_memory, len(results))):
            try:
                waveforms[index] = load_audio(paths[index], sample_rate)
            except DataError as err:
                results[index].error = str(err)
                continue
            seconds = len(waveforms[index]) / sample_rate
            if seconds > LONG_RECORDING_S:
                results[index].warning = (
                    f"{seconds:.1f} s long, longer than any one-digit clip (FSDD's are under {LONG_RECORDING_S:.0f} "
                    f"s): it gets one digit for the whole recording. Cut it into one clip per digit.")
        # Batches of similar lengths waste little padding; padding never changes a clip's result.
        order = sorted(waveforms, key=lambda i: len(waveforms[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = collate_waveforms([(waveforms[i], 0, i) for i in chunk])
            probabilities = model(batch["waveform"], batch["lengths"]).float().softmax(dim=-1).numpy()
            for i, row in zip(chunk, probabilities):
                results[i].probabilities = row
    return results


def format_predictions(results: Sequence[FilePrediction]) -> str:
    """One line per file: `path  digit  probability`, or `path  error: <why>`; a warning on a line of its own."""
    width = max([len("path"), *(len(r.path) for r in results)])
    lines = [f"{'path':<{width}}  digit  probability"]
    for r in results:
        if r.error is None:
            lines.append(f"{r.path:<{width}}  {r.digit:>5}  {r.probability:.4f}")
            if r.warning:
                lines.append(f"{'':<{width}}  warning: {r.warning}")
        else:
            lines.append(f"{r.path:<{width}}  error: {r.error}")
    return "\n".join(lines)


def write_csv(results: Sequence[FilePrediction], path: Path, num_classes: int) -> None:
    """`path, prediction, probability, prob_0 ... prob_9, error, warning`; failed files leave the figures empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "prediction", "probability", *(f"prob_{k}" for k in range(num_classes)), "error",
                         "warning"])
        for r in results:
            if r.error is None:
                figures = [r.digit, f"{r.probability:.6f}", *(f"{p:.6f}" for p in r.probabilities)]
            else:
                figures = [""] * (2 + num_classes)
            writer.writerow([r.path, *figures, r.error or "", r.warning or ""])


@dataclass
class FileDigits:
    path: str
    digits: list = field(default_factory=list)  # RecognizedDigit, in order
    error: str | None = None

    @property
    def text(self) -> str:
        return " ".join(str(d.digit) for d in self.digits)


def recognize_files(recognizer, paths: Sequence[str | Path]) -> list[FileDigits]:
    """The digit string of each file, in order (a `DigitStringRecognizer`); a file that cannot be decoded gets its
    error instead."""
    results = []
    for path in paths:
        try:
            waveform = load_audio(path, recognizer.sample_rate)
        except DataError as err:
            results.append(FileDigits(str(path), error=str(err)))
            continue
        results.append(FileDigits(str(path), recognizer.recognize(waveform.numpy())))
    return results


def format_digit_strings(results: Sequence[FileDigits]) -> str:
    """One line per file: `path  4 1 5 5`, `path  (no digits)` or `path  error: <why>`."""
    width = max([len("path"), *(len(r.path) for r in results)])
    lines = [f"{'path':<{width}}  digits"]
    for r in results:
        lines.append(f"{r.path:<{width}}  " + (f"error: {r.error}" if r.error else r.text or "(no digits)"))
    return "\n".join(lines)


def write_digit_csv(results: Sequence[FileDigits], path: Path, num_classes: int) -> None:
    """One row per digit: `path, index, digit, start_s, end_s, confidence, prob_0 ... prob_9, error`; a file with
    no digits, or that failed, gets one row with the figures empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "index", "digit", "start_s", "end_s", "confidence",
                         *(f"prob_{k}" for k in range(num_classes)), "error"])
        for r in results:
            for index, d in enumerate(r.digits):
                writer.writerow([r.path, index, d.digit, f"{d.start_s:.3f}", f"{d.end_s:.3f}", f"{d.confidence:.6f}",
                                 *(f"{p:.6f}" for p in d.probabilities), ""])
            if not r.digits:
                writer.writerow([r.path, *[""] * (5 + num_classes), r.error or ""])


def digit_strings_json(results: Sequence[FileDigits]) -> list[dict]:
    return [{"path": r.path, "digits": r.text, "error": r.error,
             "segments": [{"digit": d.digit, "start_s": round(d.start_s, 3), "end_s": round(d.end_s, 3),
                           "confidence": round(d.confidence, 6)} for d in r.digits]} for r in results]


def predict(cfg: DictConfig) -> list[FilePrediction] | list[FileDigits]:
    """Print (and with `cfg.csv` / `cfg.json`, write) a prediction per file: one digit (`mode=one`) or the digit
    string (`mode=sequence`). Raises DataError only if every file failed, so the command exits non-zero then and
    zero when at least one file was predicted."""
    audio = cfg.audio
    mode = cfg.get("mode", "one")
    if mode not in ("one", "sequence"):
        raise ConfigError(f"mode={mode}: use mode=one (one digit per file) or mode=sequence (a digit string).")
    paths = find_audio(list(audio) if isinstance(audio, ListConfig) else str(audio))
    model = load_model(cfg)
    if mode == "sequence":
        return predict_sequences(cfg, model, paths)
    if cfg.get("json"):
        raise ConfigError("json= is written in mode=sequence only; use csv= for one digit per file.")
    results = predict_files(model, paths, batch_size=cfg.batch_size)
    print(format_predictions(results), flush=True)
    if cfg.get("csv"):
        write_csv(results, Path(cfg.csv).expanduser(), model.hparams.num_classes)
        print(f"predictions: {cfg.csv}")
    report_failures(results)
    return results


def predict_sequences(cfg: DictConfig, model: torch.nn.Module, paths: Sequence[Path]) -> list[FileDigits]:
    from sdr_lightning.sequence.recognizer import build_recognizer

    settings = OmegaConf.to_container(cfg.sequence, resolve=True) if cfg.get("sequence") else {}
    results = recognize_files(build_recognizer(model, **settings, checkpoint=cfg.ckpt_path), paths)
    print(format_digit_strings(results), flush=True)
    if cfg.get("csv"):
        write_digit_csv(results, Path(cfg.csv).expanduser(), model.hparams.num_classes)
        print(f"digits: {cfg.csv}")
    if cfg.get("json"):
        out = Path(cfg.json).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(digit_strings_json(results), indent=2) + "\n")
        print(f"digits: {cfg.json}")
    report_failures(results)
    return results


def report_failures(results: Sequence[FilePrediction | FileDigits]) -> None:
    failed = sum(r.error is not None for r in results)
    if failed == len(results):
        raise DataError(f"none of the {len(results)} file(s) could be read as audio; see the errors above.")
    if failed:
        print(f"{failed} of {len(results)} file(s) failed; see their error lines.")
