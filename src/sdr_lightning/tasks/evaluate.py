"""Evaluate a trained model on named splits: report files per split, plus figures, audio and embeddings in
TensorBoard. Training calls `evaluate_model` at its end; `python eval.py ckpt_path=...` calls `evaluate`."""

from __future__ import annotations

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
from sdr_lightning.audio.features import downsample_spectrogram
from sdr_lightning.audio.io import load_audio
from sdr_lightning.data.metadata import REPORT_FOLDERS
from sdr_lightning.errors import OutputError
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
) -> dict[str, SplitReport]:
    """`splits` maps a report name (a folder under `out_dir`) to a datamodule split (TRAIN/DEV/TEST)."""
    name = type(model).__name__
    reports = {}
    for report_name, split in splits.items():
        predictions = predict_split(model, datamodule, split)
        folder = out_dir / report_name
        report = write_split_report(predictions, folder, report_name,
                                    title=f"{name} on {report_name}: accuracy {predictions.accuracy:.3f}")
        reports[report_name] = report
        print(format_per_class(report), flush=True)
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


@torch.no_grad()
def predict_split(model: torch.nn.Module, datamodule, split: str, input_chunks: int = 10) -> Predictions:
    """Run `model` (a DigitClassifier) over every clip of `split` in the datamodule, in the split's order."""
    was_training = model.training
    model.eval()
    clips = datamodule.splits[split]
    order, probabilities, embeddings, inputs = [], [], [], []
    for batch in datamodule.dataloader(split):
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
    """`python eval.py`: load a checkpoint with its run's saved config and evaluate it on `cfg.splits` or
    `cfg.speakers`, writing the reports under `cfg.output_dir` (null: <run>/eval/<time>), a folder made only once the
    checkpoint and the clips have loaded."""
    run = load_checkpoint(cfg.ckpt_path, cfg.get("run_dir"))
    splits = {REPORT_FOLDERS[split.upper()]: split.upper() for split in cfg.splits}
    if cfg.get("speakers"):
        speakers = [str(s) for s in cfg.speakers]
        with open_dict(run.config):
            run.config.data.test_speakers = speakers
            run.config.data.allow_speaker_overlap = True  # judged below, with a warning instead of an error
        splits = {"+".join(speakers): "TEST"}
    datamodule = run_datamodule(run, cfg.paths, cfg.get("data_dir"))
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
                                 misclassified_audio=cfg.report.misclassified_audio, seed=cfg.seed)
        if writer is not None:
            writer.close()
        summary = {split: report.summary() for split, report in reports.items()}
        (out_dir / "eval_metrics.json").write_text(json.dumps(
            {"checkpoint": str(run.checkpoint), "model": name, "splits": summary}, indent=2) + "\n")
    except OSError as err:
        raise OutputError(f"writing {err.filename or out_dir} failed: {err.strerror or err}; what was written so far "
                          f"is in {out_dir}. Free some space, or give another output_dir=.") from err
    print(f"\n{name} from {run.checkpoint}")
    for split, figures in summary.items():
        print(f"{split}: accuracy {figures['accuracy']:.4f} | macro-F1 {figures['macro_f1']:.4f} | "
              f"{figures['clips']} clips")
    print(f"reports: {out_dir}", flush=True)
    return summary
