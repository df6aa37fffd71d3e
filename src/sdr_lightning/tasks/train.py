"""train(cfg): build everything from the composed config, fit, evaluate the best checkpoint on DEV and TEST,
write `metrics.json` and the reports, and return the metric a sweeper optimises."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, TensorBoardLogger
from pytorch_lightning.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher

from sdr_lightning.config import instantiate_part, validate_train_config
from sdr_lightning.data.metadata import REPORT_FOLDERS
from sdr_lightning.errors import ConfigError, OutputError
from sdr_lightning.files import write_atomically
from sdr_lightning.tasks.checkpoint import newest_loadable, read_checkpoint
from sdr_lightning.tasks.evaluate import evaluate_conditions, evaluate_model
from sdr_lightning.tasks.launch import in_multirun

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None, where: str) -> list[Any]:
    """Every entry of a config group that maps names to `_target_` nodes (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate_part(f"{where}.{name}", node) for name, node in group.items() if node and "_target_" in node]


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule, pl.Trainer]:
    """The datamodule, model and trainer of a composed config. The datamodule serves the model's cached features
    (raw TRAIN audio when the model augments waveforms): it takes the model from the trainer in `setup`."""
    datamodule = instantiate_part("data", cfg.data)
    model = instantiate_part("model", cfg.model, _recursive_=False)
    trainer = instantiate_part("trainer", cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks"), "callbacks"),
                               logger=instantiate_group(cfg.get("logger"), "logger") or False)
    check_launch(trainer)
    compile_encoder(model, cfg.get("compile"))
    return datamodule, model, trainer


def compile_encoder(model: pl.LightningModule, options: DictConfig | None) -> None:
    """`compile.enabled`: torch.compile the encoder, where the FLOPs are, with the other `compile.*` keys as
    torch.compile's arguments. Compiled in place (nn.Module.compile), so the weights keep their names and
    checkpoints load into an uncompiled model."""
    if not options or not options.get("enabled"):
        return
    kwargs = {k: v for k, v in OmegaConf.to_container(options).items() if k != "enabled" and v is not None}
    model.encoder.compile(**kwargs)


def check_launch(trainer: pl.Trainer) -> None:
    """Lightning's DDP starts ranks 1.. by re-running this script with its command line; in a Hydra multirun
    that command line is the whole sweep, so every rank would run every job. ddp_spawn/ddp_fork train in child
    processes and hand back only the weights, so this process could not evaluate or report on its own."""
    launcher = trainer.strategy.launcher
    if isinstance(launcher, _MultiProcessingLauncher):
        raise ConfigError("trainer.strategy=ddp_spawn (or ddp_fork, ddp_notebook) is not supported: the final "
                          "evaluation and reports need the ranks' state in this process. Use trainer=ddp.")
    if not isinstance(launcher, _SubprocessScriptLauncher):
        return  # one process, or processes started by the cluster (SLURM tasks, torchrun)
    if in_multirun():
        raise ConfigError(
            "trainer.strategy=ddp cannot run inside a multirun (-m, hydra/launcher, hparams_search): each DDP rank "
            "would re-run the whole sweep. Run DDP jobs one at a time without -m, or on SLURM with "
            "hydra/launcher=slurm, where SLURM starts one task per device (tasks_per_node follows trainer.devices).")


def check_resume(ckpt_path: str | None, checkpoint_dir: Path) -> None:
    """Fail before any work when the checkpoint to resume from is missing, or is not whole (a save that a full disk
    cut short, with an older writer), naming the newest checkpoint of its folder that loads. Lightning's other
    keywords and remote URLs are left to Lightning; `last` with no checkpoint at all starts afresh, as in Lightning."""
    if not ckpt_path or ckpt_path in ("best", "hpc") or "://" in ckpt_path or ckpt_path.startswith("registry"):
        return
    if ckpt_path == "last":
        found = sorted(checkpoint_dir.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
        if not found:
            older = newest_loadable(checkpoint_dir) if checkpoint_dir.is_dir() else None
            if older is not None:  # Lightning would start afresh, over this run's own checkpoints
                raise ConfigError(f"cannot resume: {checkpoint_dir} has no last.ckpt (did its save fail?). The newest "
                                  f"checkpoint there that loads is {older}: resume from it with ckpt_path={older}.")
            return  # nothing saved yet: start afresh, as Lightning does
        path = found[-1]
    else:
        path = Path(ckpt_path)
        if not path.is_file():
            raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file. Give a .ckpt file, `last` (this run's "
                              f"last.ckpt), or resume a whole run with resume_dir=<run directory>.")
    try:
        read_checkpoint(path)
    except ConfigError as err:
        good = newest_loadable(path.parent, besides=path)
        hint = (f"The newest checkpoint there that loads is {good}: resume from it with ckpt_path={good}" if good
                else f"No other checkpoint in {path.parent} loads: train afresh (without ckpt_path or resume_dir)")
        raise ConfigError(f"cannot resume: {err} {hint}.") from err


def train(cfg: DictConfig) -> float | None:
    """Fit, evaluate the best-on-DEV checkpoint on DEV and TEST (DEV only with `test=false`), write metrics.json and
    the reports, and return `optimized_metric` (DEV accuracy by default) for sweepers."""
    validate_train_config(cfg)
    checkpoint_dir = Path(OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath",
                                           default=f"{cfg.paths.output_dir}/checkpoints"))
    check_resume(str(cfg.ckpt_path) if cfg.get("ckpt_path") else None, checkpoint_dir)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    # parallel jobs (hydra/launcher=joblib) each get cores / n_jobs threads, via OMP_NUM_THREADS
    log.info("torch uses %d CPU threads", torch.get_num_threads())

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    train_time = time.perf_counter() - started

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt = best or None  # fast_dev_run saves nothing: evaluate the weights in memory
    # Keep the final evaluation out of the training curves; its figures go to hp/* and metrics.json.
    loggers, trainer.loggers = trainer.loggers, []
    # one dict per validation set (DEV, and DEV under corruptions with data.robust_dev)
    dev = {k: v for figures in trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
           for k, v in figures.items()}
    # test=false: a design run, whose choices must come from DEV; TEST is read once per recipe, to report
    test = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0] if reads_test(cfg) else {}
    trainer.loggers = loggers
    metrics = {
        **{k: v for k, v in dev.items() if k != "val/acc_best"},
        **test,
        "train_time_s": round(train_time, 2),
        "epochs": trainer.current_epoch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "best_checkpoint": best,
        "model": model_name(cfg),
    }
    if trainer.strategy.root_device.type == "cuda":  # peak of the whole run, this process (benchmarks/peak_memory.py)
        metrics["gpu_max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated(trainer.strategy.root_device)
                                                       / 2**20, 1)
    if trainer.is_global_zero:
        write_outputs(cfg, metrics, model, datamodule, trainer)

    key = cfg.get("optimized_metric")
    if key is None:
        return None
    if key not in metrics:
        raise ConfigError(f"optimized_metric={key!r} was not measured; choose one of {sorted(metrics)}.")
    return float(metrics[key])


def reads_test(cfg: DictConfig) -> bool:
    """Whether the run scores TEST at the end (`test`, true unless set false)."""
    return bool(cfg.get("test", True))


def write_outputs(cfg: DictConfig, metrics: dict[str, Any], model: pl.LightningModule,
                  datamodule: pl.LightningDataModule, trainer: pl.Trainer) -> None:
    """metrics.json, the HPARAMS entry, the reports and the summary of a finished run. A failed write (a full disk)
    is one OutputError naming the path and what is kept: the trained checkpoint, and metrics.json once written."""
    output_dir = Path(cfg.paths.output_dir)
    metrics_file = output_dir / "metrics.json"
    best = metrics["best_checkpoint"] or "(none: this run saved no checkpoint)"
    nan = float("nan")
    figures = f"DEV acc {metrics.get('val/acc', nan):.4f}" + (
        f", TEST acc {metrics['test/acc']:.4f}" if "test/acc" in metrics else "")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(metrics_file, (json.dumps(metrics, indent=2) + "\n").encode(), sync=False)
    except OSError as err:
        raise OutputError(f"training finished ({figures}), but {metrics_file} could not be written: "
                          f"{err.strerror or err}. The trained checkpoint {best} is kept.") from err
    try:
        robust = write_reports(cfg, model, datamodule, trainer)
        if robust:  # the suite's figures join the others in metrics.json and the HPARAMS tab
            metrics.update(robust)
            write_atomically(metrics_file, (json.dumps(metrics, indent=2) + "\n").encode(), sync=False)
        log_hparams(trainer.loggers, cfg, metrics)
    except OSError as err:
        where = err.filename or output_dir / "reports"
        raise OutputError(f"training finished ({figures}), but writing {where} failed: {err.strerror or err}. Kept: "
                          f"the trained checkpoint {best} and {metrics_file}. Free some space, then write the reports "
                          f"again with: python eval.py ckpt_path={best}") from err
    print_summary(cfg, metrics, output_dir)


def write_reports(cfg: DictConfig, model: pl.LightningModule, datamodule: pl.LightningDataModule,
                  trainer: pl.Trainer) -> dict[str, float]:
    """Per-split reports of the evaluated (best) weights under <run>/reports, figures and audio in TensorBoard; with
    `report.suite`, each split under that suite's conditions too, returned as metrics (robust/<split>_<condition>,
    robust/<split>_mean)."""
    options = cfg.get("report")
    if not options or not options.splits:
        return {}
    writer = next((logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)
    splits = {REPORT_FOLDERS[split.upper()]: split.upper() for split in options.splits
              if reads_test(cfg) or split.upper() != "TEST"}
    if not splits:
        return {}
    reports_dir = Path(cfg.paths.output_dir) / "reports"
    evaluate_model(model, datamodule, splits, reports_dir, writer=writer, step=trainer.global_step,
                   embeddings=list(options.embeddings), projector=options.projector,
                   misclassified_audio=options.misclassified_audio, seed=cfg.get("seed") or 0)
    if not options.get("suite"):
        return {}
    robust = evaluate_conditions(model, datamodule, splits, options.suite, reports_dir, writer=writer,
                                 step=trainer.global_step)
    return {f"robust/{split}_{name}": value for split, figures in robust.items() for name, value in figures.items()}


def log_hparams(loggers: list[Logger], cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """The whole composed config as hparams, with final DEV/TEST figures for TensorBoard's HPARAMS tab."""
    params = OmegaConf.to_container(cfg, resolve=True)
    params = {k: params[k] for k in ("model", "data", "trainer", "seed") if k in params}
    params["model"]["name"] = model_name(cfg)
    final = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=final)
        else:
            logger.log_hyperparams(params)
        logger.save()


def print_summary(cfg: DictConfig, metrics: dict[str, Any], output_dir: Path) -> None:
    name = model_name(cfg)
    test = (f"TEST acc {metrics['test/acc']:.4f} | TEST macro-F1 {metrics.get('test/f1_macro', float('nan')):.4f}"
            if "test/acc" in metrics else "TEST not read (test=false)")
    lines = [
        f"{name}: DEV acc {metrics.get('val/acc', float('nan')):.4f} | {test}",
        f"trained {metrics['epochs']} epochs in {metrics['train_time_s']:.0f} s; {metrics['parameters']:,} parameters",
        f"run directory: {output_dir}",
    ]
    if metrics["best_checkpoint"]:
        monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor")
        kept = f"the best on DEV's {monitor}" if monitor else "the last epoch"
        lines.append(f"checkpoint: {metrics['best_checkpoint']} ({kept})")
    print("\n".join(["", *lines]), flush=True)


def model_name(cfg: DictConfig) -> str:
    """What a run trained: the LightningModule's class and its encoder's, e.g. DigitClassifier/TemporalCNN."""
    return f"{cfg.model._target_.rsplit('.', 1)[-1]}/{cfg.model.encoder._target_.rsplit('.', 1)[-1]}"
