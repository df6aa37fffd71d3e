"""Evaluate a trained model on named splits: report files per split, plus figures, audio and embeddings in
TensorBoard. Training calls `evaluate_model` at its end; `python eval.py ckpt_path=...` calls `run_eval`."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.tensorboard import SummaryWriter

from sdr_lightning.data.audio import load_audio
from sdr_lightning.errors import ConfigError
from sdr_lightning.features import downsample_spectrogram
from sdr_lightning.predictions import Predictions
from sdr_lightning.report import SplitReport, confusion_figure, format_per_class, write_split_report

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
            from sdr_lightning.embeddings import embedding_report

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


def run_eval(cfg: DictConfig) -> dict[str, dict[str, float | int]]:
    """Load a checkpoint with its run's saved config and evaluate it on `cfg.splits` or `cfg.speakers`."""
    model, run_cfg, ckpt = load_checkpoint(cfg.ckpt_path, cfg.get("run_dir"))
    model_class = type(model)
    # The run's paths are re-resolved here (SDR_DATA_DIR etc. of this machine), as is its data folder.
    with open_dict(run_cfg):
        run_cfg.paths = cfg.paths
        if cfg.get("data_dir"):
            run_cfg.data.dir = cfg.data_dir
        splits = {split.lower(): split.upper() for split in cfg.splits}
        if cfg.get("speakers"):
            speakers = [str(s) for s in cfg.speakers]
            run_cfg.data.test_speakers = speakers
            run_cfg.data.allow_speaker_overlap = True  # judged below, with a warning instead of an error
            splits = {"+".join(speakers): "TEST"}

    datamodule = instantiate(run_cfg.data, _convert_="all")
    datamodule.use_featurizer(model.featurizer, train_waveforms=False)  # evaluation never augments
    datamodule.prepare_data()
    datamodule.setup("test")
    heard = sorted({c.speaker for c in datamodule.splits["TRAIN"]} & {
        c.speaker for split in splits.values() for c in datamodule.splits[split]})
    if heard:
        log.warning("Speaker(s) %s were in this model's training data: their accuracy is not speaker-independent.",
                    heard)
    model.prepare_for_evaluation(datamodule)

    out_dir = Path(cfg.paths.output_dir)
    writer = SummaryWriter(str(out_dir / "tensorboard")) if cfg.report.tensorboard else None
    reports = evaluate_model(model, datamodule, splits, out_dir, writer=writer,
                             embeddings=list(cfg.report.embeddings), projector=cfg.report.projector,
                             misclassified_audio=cfg.report.misclassified_audio, seed=cfg.seed)
    if writer is not None:
        writer.close()
    summary = {name: report.summary() for name, report in reports.items()}
    (out_dir / "eval_metrics.json").write_text(json.dumps(
        {"checkpoint": str(ckpt), "model": model_class.__name__, "splits": summary}, indent=2) + "\n")
    print(f"\n{model_class.__name__} from {ckpt}")
    for name, figures in summary.items():
        print(f"{name}: accuracy {figures['accuracy']:.4f} | macro-F1 {figures['macro_f1']:.4f} | {figures['clips']} clips")
    print(f"reports: {out_dir}", flush=True)
    return summary


def load_checkpoint(ckpt_path: str | Path, run_dir: str | Path | None = None) -> tuple[Any, DictConfig, Path]:
    """A run's checkpoint as its own model class (`model._target_` of the run's saved config), on the CPU, with
    that config and the checkpoint's resolved path. `run_dir` null: the checkpoint's <run>/checkpoints/.. folder.
    Used by eval.py, predict.py and export.py."""
    ckpt = Path(ckpt_path).expanduser().resolve()
    if not ckpt.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file; give a .ckpt from a run's checkpoints/.")
    run_cfg = load_run_config(Path(run_dir) if run_dir else ckpt.parent.parent)
    model_class = get_class(run_cfg.model._target_)
    try:
        model = model_class.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as err:  # truncated, foreign or mismatched
        raise ConfigError(f"ckpt_path={ckpt_path}: cannot load it as a {model_class.__name__} checkpoint "
                          f"({str(err).splitlines()[0]}); give a .ckpt written by that training run.") from err
    return model, run_cfg, ckpt


def load_run_config(run_dir: Path) -> DictConfig:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: the model class and its settings come from the training run's saved config. Keep "
            f"the checkpoint inside its run folder (<run>/checkpoints/*.ckpt), or name that folder with run_dir=<run>."
        )
    return OmegaConf.load(path)


def run_dir_of(ckpt_path: str) -> str:
    """Hydra resolver: evaluations are written inside the run the checkpoint belongs to."""
    return str(Path(ckpt_path).expanduser().resolve().parent.parent)


if not OmegaConf.has_resolver("sdr.run_dir"):
    OmegaConf.register_new_resolver("sdr.run_dir", run_dir_of)
