"""run(cfg): build everything from the composed config, fit, evaluate the best checkpoint on DEV and TEST,
write `metrics.json`, and return the metric a sweeper optimises."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, TensorBoardLogger

from sdr_lightning.errors import ConfigError, SdrError
from sdr_lightning.evaluate import evaluate_model

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Every entry of a config group that maps names to `_target_` nodes (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(node, _convert_="all") for node in group.values() if node and "_target_" in node]


def instantiate_unwrapped(node: DictConfig, **kwargs: Any) -> Any:
    """`instantiate`, except that our own errors raised inside a constructor come out as themselves (one
    message, no traceback) instead of wrapped in Hydra's InstantiationException."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, SdrError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from err


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule, pl.Trainer]:
    datamodule = instantiate_unwrapped(cfg.data, _convert_="all")
    model = instantiate_unwrapped(cfg.model, _recursive_=False, _convert_="all")
    # DEV/TEST (and TRAIN, without waveform augmentation) as cached features; raw TRAIN audio when augmenting it
    datamodule.use_featurizer(model.featurizer, train_waveforms=model.needs_waveforms)
    trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")),
                          logger=instantiate_group(cfg.get("logger")) or False, _convert_="all")
    return datamodule, model, trainer


def run(cfg: DictConfig) -> float | None:
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    output_dir = Path(cfg.paths.output_dir)

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    train_time = time.perf_counter() - started

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt = best or None  # fast_dev_run saves nothing: evaluate the weights in memory
    # Keep the final evaluation out of the training curves; its figures go to hp/* and metrics.json.
    loggers, trainer.loggers = trainer.loggers, []
    dev = trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]
    test = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]
    trainer.loggers = loggers
    metrics = {
        **{k: v for k, v in dev.items() if k != "val/acc_best"},
        **test,
        "train_time_s": round(train_time, 2),
        "epochs": trainer.current_epoch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "best_checkpoint": best,
        "model": type(model).__name__,
    }
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log_hparams(trainer.loggers, cfg, metrics)
        write_reports(cfg, model, datamodule, trainer)
        print_summary(cfg, metrics, output_dir)

    key = cfg.get("optimized_metric")
    if key is None:
        return None
    if key not in metrics:
        raise ConfigError(f"optimized_metric={key!r} was not measured; choose one of {sorted(metrics)}.")
    return float(metrics[key])


def write_reports(cfg: DictConfig, model: pl.LightningModule, datamodule: pl.LightningDataModule,
                  trainer: pl.Trainer) -> None:
    """Per-split reports of the evaluated (best) weights under <run>/reports, figures and audio in TensorBoard."""
    options = cfg.get("report")
    if not options or not options.splits:
        return
    writer = next((logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)
    evaluate_model(model, datamodule, {split.lower(): split.upper() for split in options.splits},
                   Path(cfg.paths.output_dir) / "reports", writer=writer, step=trainer.global_step,
                   embeddings=list(options.embeddings), projector=options.projector,
                   misclassified_audio=options.misclassified_audio, seed=cfg.get("seed") or 0)


def log_hparams(loggers: list[Logger], cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """The whole composed config as hparams, with final DEV/TEST figures for TensorBoard's HPARAMS tab."""
    params = OmegaConf.to_container(cfg, resolve=True)
    params = {k: params[k] for k in ("model", "data", "trainer", "seed") if k in params}
    params["model"]["name"] = cfg.model._target_.rsplit(".", 1)[-1]
    final = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=final)
        else:
            logger.log_hyperparams(params)
        logger.save()


def print_summary(cfg: DictConfig, metrics: dict[str, Any], output_dir: Path) -> None:
    name = cfg.model._target_.rsplit(".", 1)[-1]
    lines = [
        f"{name}: DEV acc {metrics.get('val/acc', float('nan')):.4f} | TEST acc {metrics.get('test/acc', float('nan')):.4f}"
        f" | TEST macro-F1 {metrics.get('test/f1_macro', float('nan')):.4f}",
        f"trained {metrics['epochs']} epochs in {metrics['train_time_s']:.0f} s; {metrics['parameters']:,} parameters",
        f"run directory: {output_dir}",
    ]
    if metrics["best_checkpoint"]:
        lines.append(f"best checkpoint: {metrics['best_checkpoint']}")
    print("\n".join(["", *lines]), flush=True)
