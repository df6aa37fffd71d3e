"""Loading a trained run, safely: its checkpoint, its saved config, its datamodule, and the probe refit.

eval.py, predict.py and export.py all start here. A checkpoint and a run folder are untrusted input: loading one
may only build classes of this package, `torch.optim` and `torch.optim.lr_scheduler` (sdr_lightning.config's
allow-list), and every `_target_` is checked before anything is imported or called. Tensors are read with
`torch.load(weights_only=True)`, which unpickles no code.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from sdr_lightning.config import check_target, check_targets, compose_config, instantiate_part
from sdr_lightning.errors import ConfigError

log = logging.getLogger(__name__)


# What torch.load raises for a file that is not a whole checkpoint: empty, truncated, text, another format.
UNREADABLE = (RuntimeError, KeyError, EOFError, IndexError, TypeError, ValueError, pickle.UnpicklingError,
              zipfile.BadZipFile, OSError)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's contents (`torch.load(weights_only=True)`: tensors and plain values, no code); ConfigError
    with the reason in one line if it is not a whole checkpoint."""
    import torch

    problem = None
    if path.is_file() and path.stat().st_size == 0:
        problem = "the file is empty"
    elif path.is_file() and not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one has no index
        problem = "not a whole PyTorch checkpoint: no complete zip archive in it"
    if problem:
        raise ConfigError(f"{path}: cannot read it as a checkpoint ({problem}); it is empty, truncated or not a .ckpt "
                          "written by a training run.")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or "state_dict" not in saved:
            raise KeyError("no state_dict in it")
        return saved
    except UNREADABLE as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__
        raise ConfigError(f"{path}: cannot read it as a checkpoint ({reason}); it is empty, truncated or not a .ckpt "
                          "written by a training run.") from err


def newest_loadable(folder: Path, besides: Path | None = None) -> Path | None:
    """The most recently written checkpoint in `folder` (other than `besides`) that reads whole, if any."""
    candidates = sorted((p for p in folder.glob("*.ckpt") if p != besides), key=lambda p: p.stat().st_mtime_ns,
                        reverse=True)
    for candidate in candidates:
        try:
            read_checkpoint(candidate)
        except ConfigError:
            continue
        return candidate
    return None


@dataclass
class LoadedRun:
    model: Any  # a DigitClassifier (or subclass) in eval mode, on the CPU
    config: DictConfig  # the run's saved config, its paths re-resolved on this machine
    checkpoint: Path  # resolved


def load_run_config(run_dir: Path) -> DictConfig:
    """`<run_dir>/.hydra/config.yaml`, its `model` and `data` sections checked against the allow-list: loading builds
    those two and nothing else of it (not its trainer, callbacks or loggers)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: the model class and its settings come from the training run's saved config. Keep "
            f"the checkpoint inside its run folder (<run>/checkpoints/*.ckpt), or name that folder with run_dir=<run>.")
    try:
        config = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - YAML, OmegaConf and I/O errors alike: one message
        raise ConfigError(f"{path}: cannot read it as a run config ({str(err).splitlines()[0]}).") from err
    if not isinstance(config, DictConfig) or "model" not in config or "data" not in config:
        raise ConfigError(f"{path} has no model and data sections; is it the .hydra/config.yaml of a training run?")
    for section in ("model", "data"):
        check_targets(config[section], path, section)
    return config


def load_checkpoint(ckpt_path: str | Path, run_dir: str | Path | None = None) -> LoadedRun:
    """The checkpoint as its run's model class (the run config's `model._target_`), on the CPU, in eval mode.
    `run_dir` null: the checkpoint's <run>/checkpoints/.. folder."""
    ckpt = Path(ckpt_path).expanduser().resolve()
    if not ckpt.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file; give a .ckpt from a run's checkpoints/.")
    config = load_run_config(Path(run_dir).expanduser() if run_dir else ckpt.parent.parent)
    model_class = check_target(config.model.get("_target_"), ckpt.parent.parent / ".hydra" / "config.yaml",
                               "model._target_")
    from sdr_lightning.models import DigitClassifier

    if not issubclass(model_class, DigitClassifier):
        raise ConfigError(f"model._target_={config.model._target_} in the run config is not a DigitClassifier; "
                          "give the run folder of a training run.")
    saved = read_checkpoint(ckpt)
    hparams, state = saved.get("hyper_parameters") or {}, saved["state_dict"]
    check_targets(hparams, ckpt)
    model = model_class(**hparams)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"ckpt_path={ckpt_path}: its weights do not fit a {model_class.__name__} built from its own "
                          f"hyperparameters ({str(err).splitlines()[0]}).") from err
    return LoadedRun(model.eval(), config, ckpt)


def run_datamodule(run: LoadedRun, paths: DictConfig | None = None, data_dir: str | None = None,
                   stage: str = "test") -> Any:
    """The run's datamodule (its split and settings, on this machine's `paths`, or `data_dir`), set up for its model.
    `paths` null: this machine's defaults (conf/paths/default.yaml, SDR_DATA_DIR etc.), as a command would see them."""
    from sdr_lightning.data.metadata import METADATA_FILENAME

    config = run.config
    if paths is None:
        paths = compose_config(config_name="predict").paths
    with open_dict(config):
        config.paths = paths  # this machine's SDR_DATA_DIR etc.
        if data_dir:
            config.data.dir = data_dir
        voices = config.data.get("synthetic_voices")
        if stage != "fit" and voices and not (Path(str(voices)).expanduser() / METADATA_FILENAME).is_file():
            # TRAIN's synthetic voices only ever trained the model: scoring it needs none of them
            log.info("data.synthetic_voices=%s (the voices this run trained on) is not here; evaluation does not "
                     "need them", voices)
            config.data.synthetic_voices = None
    datamodule = instantiate_part("data", config.data)
    datamodule.prepare_data()
    datamodule.setup(stage, model=run.model)
    return datamodule


def load_for_inference(ckpt_path: str | Path, run_dir: str | Path | None = None, paths: DictConfig | None = None,
                       data_dir: str | None = None, refit_probe: bool = True) -> LoadedRun:
    """`load_checkpoint`, then, for a model evaluated with a probe refit on its TRAIN clips (SimCLR), that refit as
    eval.py does it (the clips must be at the run's data.dir or `data_dir`); `refit_probe=False` keeps the
    checkpoint's own online probe."""
    run = load_checkpoint(ckpt_path, run_dir)
    if run.model.needs_probe_refit:
        if refit_probe:
            log.info("Refitting %s's linear probe on its run's TRAIN clips, as eval.py does", type(run.model).__name__)
            run.model.prepare_for_evaluation(run_datamodule(run, paths, data_dir, stage="fit"))
        else:
            log.warning("refit_probe=false: using the checkpoint's online probe, not the refit one eval.py reports")
    return run
