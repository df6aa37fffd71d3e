"""Evaluate a trained model on named splits: report files per split, plus figures, audio and embeddings in
TensorBoard. Training calls `evaluate_model` at its end; `python eval.py ckpt_path=...` calls `evaluate`, and
`python eval.py ckpt_path=... audio_dir=my_clips/` evaluates a folder of the user's own labelled clips instead
(data/folder.py, docs/own_recordings.md)."""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.tensorboard import SummaryWriter

from sdr_lightning.analysis.predictions import Predictions
from sdr_lightning.analysis.report import SplitReport, confusion_figure, format_per_class, write_split_report
from sdr_lightning.analysis.tables import markdown_table
from sdr_lightning.audio.features import downsample_spectrogram
from sdr_lightning.audio.io import load_audio
from sdr_lightning.data import conditions
from sdr_lightning.data.folder import EXTRA_SPLIT, resolve_source
from sdr_lightning.data.metadata import REPORT_FOLDERS, check_files_exist, read_metadata
from sdr_lightning.errors import ConfigError, OutputError
from sdr_lightning.tasks.checkpoint import load_checkpoint, run_datamodule

log = logging.getLogger(__name__)


def evaluate_model(
    model: torch.nn.Module,
    datamodule: Any,
    splits: Mapping[str, str],
    out_dir: Path,
    writer: SummaryWriter | None = None,
    step: int = 0,
    embeddings: Sequence[str] = (),
    projector: bool = False,
    misclassified_audio: int = 0,
    seed: int = 0,
    include_extra: bool = True,
) -> dict[str, SplitReport]:
    """`splits` maps a report name (a folder under `out_dir`) to a datamodule split (TRAIN/DEV/TEST). With
    `include_extra`, the datamodule's EXTRA split (data.extra_eval) is reported too, named after its folder."""
    name = type(model).__name__
    folders = getattr(datamodule, "folders", None) or {}
    if include_extra and EXTRA_SPLIT in folders and EXTRA_SPLIT not in splits.values():
        splits = {**splits, folders[EXTRA_SPLIT].name: EXTRA_SPLIT}
    reports = {}
    for report_name, split in splits.items():
        predictions = predict_split(model, datamodule, split)
        folder = out_dir / report_name
        report = write_split_report(predictions, folder, report_name,
                                    title=f"{name} on {report_name}: accuracy {predictions.accuracy:.3f}")
        reports[report_name] = report
        print(format_per_class(report), flush=True)
        print(format_per_speaker(write_per_speaker(predictions, folder)), flush=True)
        if embeddings or (projector and writer is not None):
            # Imported here: umap-learn takes seconds to import and most runs need none of it.
            from sdr_lightning.analysis.embeddings import embedding_report

            embedding_report(
                {"encoder": predictions.embeddings, "mel": predictions.input_vectors},
                predictions.labels.tolist(), predictions.speakers, predictions.identifiers,
                folder / "embeddings", methods=tuple(embeddings), seed=seed,
                writer=writer if projector else None, predictions=predictions.predicted.tolist(),
                title_prefix=f"{name} {report_name}", tag_prefix=f"{report_name}_",
            )
        if writer is not None:
            writer.add_figure(f"confusion_matrix/{report_name}", confusion_figure(report), step, close=False)
            if misclassified_audio:
                log_misclassified(writer, predictions, datamodule.splits[split], report_name, misclassified_audio,
                                  datamodule.hparams.sample_rate, step)
    if writer is not None:
        writer.flush()
    return reports


def write_per_speaker(predictions: Predictions, folder: Path) -> dict[str, dict[str, float | int]]:
    """`<folder>/per_speaker.csv`: clips, correct ones and accuracy of each speaker (sorted by name); returns them."""
    figures = {}
    for speaker in sorted(set(predictions.speakers)):
        mine = np.array([s == speaker for s in predictions.speakers])
        correct = int(predictions.correct[mine].sum())
        figures[speaker] = {"clips": int(mine.sum()), "correct": correct, "accuracy": round(correct / mine.sum(), 6)}
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "per_speaker.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["speaker", "clips", "correct", "accuracy"])
        writer.writerows([speaker, f["clips"], f["correct"], f"{f['accuracy']:.6f}"] for speaker, f in figures.items())
    return figures


def read_per_speaker(folder: Path) -> dict[str, float]:
    """{speaker: accuracy} from `<folder>/per_speaker.csv` ({} if there is none)."""
    path = folder / "per_speaker.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {row["speaker"]: float(row["accuracy"]) for row in csv.DictReader(handle)}


def format_per_speaker(figures: dict[str, dict[str, float | int]]) -> str:
    shown = (f"{speaker} {f['accuracy']:.3f} ({f['clips']})" for speaker, f in figures.items())
    return "per speaker: " + ", ".join(shown)


@torch.no_grad()
def predict_split(model: torch.nn.Module, datamodule, split: str, input_chunks: int = 10,
                  dataset: Any | None = None) -> Predictions:
    """Run `model` (a DigitClassifier) over every clip of `split` in the datamodule (or of `dataset`, that split's
    clips under a condition), in the split's order."""
    was_training = model.training
    model.eval()
    clips = datamodule.splits[split] if dataset is None else dataset.clips
    order, probabilities, embeddings, inputs = [], [], [], []
    for batch in datamodule.dataloader(split, dataset=dataset):
        batch = {k: v.to(model.device) for k, v in batch.items()}
        features, frames = model.batch_features(batch)
        hidden = model.encoder(features, frames)
        probabilities.append(model.classify(hidden).float().softmax(dim=-1).cpu())
        embeddings.append(hidden.float().cpu())
        inputs.append(downsample_spectrogram(features, input_chunks, frames).float().cpu())
        order.append(batch["index"].cpu())
    model.train(was_training)
    index = torch.cat(order).numpy()
    chosen = [clips[i] for i in index]
    return Predictions(
        identifiers=[c.identifier for c in chosen],
        speakers=[c.speaker for c in chosen],
        labels=np.array([c.label for c in chosen]),
        probabilities=torch.cat(probabilities).numpy(),
        embeddings=torch.cat(embeddings).numpy(),
        input_vectors=torch.cat(inputs).flatten(1).numpy(),
    )


def evaluate_conditions(model: torch.nn.Module, datamodule: Any, splits: Mapping[str, str], suite: str,
                        out_dir: Path, writer: SummaryWriter | None = None,
                        step: int = 0) -> dict[str, dict[str, float]]:
    """Accuracy of `model` on each split under each condition of `suite` (data/conditions.py), and their mean:
    `<out_dir>/<report name>/robustness.csv` and `.json`, TensorBoard scalars `robustness_<report name>/<condition>`.
    Returns {report name: {condition: accuracy, ..., "mean": mean over the conditions}}."""
    chosen = conditions.suite(suite)
    results = {}
    for report_name, split in splits.items():
        rows, figures = [], {}
        for condition in chosen:
            corrupted = datamodule.condition_dataset(split, condition)
            predictions = predict_split(model, datamodule, split, dataset=corrupted)
            figures[condition.name] = predictions.accuracy
            rows.append([condition.name, condition.kind, condition.description, f"{predictions.accuracy:.4f}",
                         len(predictions)])
        figures["mean"] = float(np.mean([figures[c.name] for c in chosen]))
        rows.append(["mean", "", f"mean over the {len(chosen)} conditions", f"{figures['mean']:.4f}", ""])
        folder = out_dir / report_name
        folder.mkdir(parents=True, exist_ok=True)
        header = ["condition", "kind", "what", "accuracy", "clips"]
        with (folder / "robustness.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([header, *rows])
        named = suite if isinstance(suite, str) else list(suite)  # a list from the command line is a ListConfig
        (folder / "robustness.json").write_text(json.dumps({"suite": named, "accuracy": figures}, indent=2) + "\n")
        print(f"\n{report_name} under the {suite} suite:\n" + markdown_table(header, rows), flush=True)
        if writer is not None:
            for name, value in figures.items():
                writer.add_scalar(f"robustness_{report_name}/{name}", value, step)
        results[report_name] = figures
    if writer is not None:
        writer.flush()
    return results


@torch.no_grad()
def predict_folder(model: torch.nn.Module, folder: Path, batch_size: int = 128) -> Predictions:
    """`model` on every clip a folder's metadata table lists (FSDD's layout: clips beside SDR_metadata.tsv, all of
    its splits), from raw audio: a set recorded or synthesised elsewhere (data/voices.py writes one)."""
    from sdr_lightning.data.datamodule import collate_waveforms

    clips = read_metadata(folder)
    check_files_exist(clips)
    was_training = model.training
    model.eval()
    probabilities = []
    for start in range(0, len(clips), batch_size):
        chunk = clips[start:start + batch_size]
        batch = collate_waveforms([(load_audio(c.path, model.featurizer.sample_rate), 0, 0) for c in chunk])
        waveform, lengths = batch["waveform"].to(model.device), batch["lengths"].to(model.device)
        probabilities.append(model(waveform, lengths).float().softmax(dim=-1).cpu())
    model.train(was_training)
    return Predictions(identifiers=[c.identifier for c in clips], speakers=[c.speaker for c in clips],
                       labels=np.array([c.label for c in clips]), probabilities=torch.cat(probabilities).numpy())


def evaluate_sets(model: torch.nn.Module, sets: Mapping[str, str], out_dir: Path,
                  writer: SummaryWriter | None = None, step: int = 0) -> dict[str, SplitReport]:
    """The report files of each named folder in `sets` (e.g. {"espeak": ".voices/eval"}) under out_dir/<name>/."""
    reports = {}
    for name, folder in sets.items():
        predictions = predict_folder(model, Path(folder).expanduser())
        report = write_split_report(predictions, out_dir / name, name,
                                    title=f"{type(model).__name__} on {name}: accuracy {predictions.accuracy:.3f}")
        print(format_per_class(report), flush=True)
        print(format_per_speaker(write_per_speaker(predictions, out_dir / name)), flush=True)
        if writer is not None:
            writer.add_figure(f"confusion_matrix/{name}", confusion_figure(report), step, close=False)
        reports[name] = report
    return reports


def log_misclassified(writer: SummaryWriter, predictions: Predictions, clips: Sequence[Any], split: str,
                      count: int, sample_rate: int, step: int) -> None:
    """The `count` most confident mistakes as audio, tagged with their true and predicted digit."""
    wrong = np.flatnonzero(~predictions.correct)
    confidence = predictions.probabilities[wrong].max(axis=1)
    paths = {clip.identifier: clip.path for clip in clips}
    for i in wrong[np.argsort(-confidence, kind="stable")][:count]:
        identifier, true, guess = predictions.identifiers[i], predictions.labels[i], predictions.predicted[i]
        waveform = load_audio(paths[identifier], sample_rate)
        tag = f"misclassified_{split}/true_{true}_predicted_{guess}/{identifier}"
        writer.add_audio(tag, waveform.clamp(-1, 1).unsqueeze(0), step, sample_rate=sample_rate)


def evaluate(cfg: DictConfig) -> dict[str, dict[str, float | int]]:
    """`python eval.py`: load a checkpoint with its run's saved config and evaluate it on `cfg.splits`,
    `cfg.speakers` or the folder `cfg.audio_dir` (and/or CSV `cfg.audio_csv`), writing the reports under
    `cfg.output_dir` (null: <run>/eval/<time>), a folder made only once the checkpoint and the clips have loaded."""
    audio = audio_source(cfg)
    if audio is not None and cfg.get("speakers"):
        raise ConfigError("speakers= and audio_dir= each replace `splits` with one report; give one of them.")
    run = load_checkpoint(cfg.ckpt_path, cfg.get("run_dir"))
    splits = {REPORT_FOLDERS[split.upper()]: split.upper() for split in cfg.splits}
    if audio is not None:  # the user's own clips (data/folder.py), as the datamodule's EXTRA split
        with open_dict(run.config):
            run.config.data.extra_eval = audio
            run.config.data.allow_speaker_overlap = True  # judged below, with a warning instead of an error
        splits = {}  # named after the folder once it is read
    if cfg.get("speakers"):
        speakers = [str(s) for s in cfg.speakers]
        with open_dict(run.config):
            run.config.data.test_speakers = speakers
            run.config.data.allow_speaker_overlap = True  # judged below, with a warning instead of an error
        splits = {"+".join(speakers): "TEST"}
    datamodule = run_datamodule(run, cfg.paths, cfg.get("data_dir"))
    extra = (getattr(datamodule, "folders", None) or {}).get(EXTRA_SPLIT)
    own = extra if audio is not None else None
    if own is not None:
        splits = {own.name: EXTRA_SPLIT}
    elif extra is not None and not cfg.get("speakers"):  # the run's data.extra_eval, after DEV/TEST
        splits = {**splits, extra.name: EXTRA_SPLIT}
    heard = sorted({c.speaker for c in datamodule.splits["TRAIN"]} & {
        c.speaker for split in splits.values() for c in datamodule.splits[split]})
    if heard:
        log.warning("Speaker(s) %s were in this model's training data: their accuracy is not speaker-independent.",
                    heard)
    model = run.model
    model.prepare_for_evaluation(datamodule)

    run_dir = Path(cfg.run_dir).expanduser() if cfg.get("run_dir") else run.checkpoint.parent.parent
    out_dir = Path(cfg.output_dir).expanduser() if cfg.get("output_dir") else (
        run_dir / "eval" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    name = type(model).__name__
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out_dir / "eval_config.yaml")  # what was asked, beside what it gave
        writer = SummaryWriter(str(out_dir / "tensorboard")) if cfg.report.tensorboard else None
        reports = evaluate_model(model, datamodule, splits, out_dir, writer=writer,
                                 embeddings=list(cfg.report.embeddings), projector=cfg.report.projector,
                                 misclassified_audio=cfg.report.misclassified_audio, seed=cfg.seed,
                                 include_extra=False)
        robust = (evaluate_conditions(model, datamodule, splits, cfg.suite, out_dir, writer=writer)
                  if cfg.get("suite") else {})
        sets = {name: folder for name, folder in (cfg.get("sets") or {}).items() if folder}
        reports.update(evaluate_sets(model, sets, out_dir, writer=writer))
        if writer is not None:
            writer.close()
        summary = {split: {**report.summary(), "per_speaker": read_per_speaker(out_dir / split),
                           **({"robustness": robust[split]} if split in robust else {})}
                   for split, report in reports.items()}
        if own is not None:  # the files of audio_dir left out, as listed when it was read
            summary[own.name]["left_out"] = [{"file": str(p.path), "reason": p.reason} for p in own.problems]
        (out_dir / "eval_metrics.json").write_text(json.dumps(
            {"checkpoint": str(run.checkpoint), "model": name, "splits": summary}, indent=2) + "\n")
    except OSError as err:
        raise OutputError(f"writing {err.filename or out_dir} failed: {err.strerror or err}; what was written so far "
                          f"is in {out_dir}. Free some space, or give another output_dir=.") from err
    print(f"\n{name} from {run.checkpoint}")
    for split, figures in summary.items():
        robust = f" | {cfg.suite} mean {figures['robustness']['mean']:.4f}" if "robustness" in figures else ""
        calibration = (f" | calibration error {figures['calibration_error']:.3f}"
                       if "calibration_error" in figures else "")
        print(f"{split}: accuracy {figures['accuracy']:.4f} | macro-F1 {figures['macro_f1']:.4f} | "
              f"{figures['clips']} clips{calibration}{robust}")
    print(f"reports: {out_dir}", flush=True)
    return summary


def audio_source(cfg: DictConfig) -> str | list[str] | None:
    """eval.py's `audio_dir` (a folder, or a CSV) and `audio_csv`, as data.extra_eval takes them; null: neither."""
    folder, table = cfg.get("audio_dir"), cfg.get("audio_csv")
    if not folder and not table:
        return None
    if folder and not Path(folder).expanduser().exists():
        raise ConfigError(f"audio_dir={folder}: no such folder; give the folder of your clips (docs/own_recordings.md)")
    if table and not Path(table).expanduser().is_file():
        raise ConfigError(f"audio_csv={table}: no such file; give a labels CSV (file,label[,speaker]).")
    if folder and table:
        return [str(Path(folder).expanduser().resolve()), str(Path(table).expanduser().resolve())]
    path, csv_path = resolve_source(folder or table)
    return str((csv_path or path).resolve())
