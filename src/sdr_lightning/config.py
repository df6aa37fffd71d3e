"""Building things from config: composing `conf/`, instantiating one part, and the allow-list for untrusted configs.

- `compose_config`: `conf/<name>.yaml` plus overrides, as the command line composes it (tests and benchmarks use it).
- `instantiate_part`: `hydra.utils.instantiate` with one-line errors that name the config key at fault.
- `validate_train_config`: the values a run cannot work with, refused before any work with one line naming the key,
  the value and the valid range.
- `check_targets`: refuse any `_target_` outside this package, `torch.optim` and `torch.optim.lr_scheduler`, before
  anything is imported or called. Every config read from a file (a checkpoint's hyperparameters, a run folder's
  `.hydra/` files) goes through it: instantiating is running code, and those files may come from anyone.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from sdr_lightning.errors import ConfigError, SdrError

# The repository's conf/ (src/sdr_lightning/ -> ../../conf): the entry points and the tests compose from it.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"

# Where a `_target_` read from a file may point: a class of this package, or a torch optimizer or scheduler.
ALLOWED_MODULES = ("sdr_lightning", "torch.optim")


def run_dir_of(ckpt_path: str) -> str:
    """`${sdr.run_dir:<ckpt_path>}`: the run folder a checkpoint belongs to (<run>/checkpoints/x.ckpt -> <run>), where
    eval.py and export.py write (conf/eval.yaml, conf/export.yaml)."""
    return str(Path(ckpt_path).expanduser().resolve().parent.parent)


def export_dir_of(ckpt_path: str) -> str:
    """`${sdr.export_dir:<ckpt_path>}`: where export.py writes by default, <run>/export; for a checkpoint adapted by
    adapt.py (<run>/adapted/<name>.ckpt), <run>/adapted/<name>_export, so it never replaces the run's own export."""
    checkpoint = Path(ckpt_path).expanduser().resolve()
    if checkpoint.parent.name == "adapted":
        return str(checkpoint.parent / f"{checkpoint.stem}_export")
    return str(Path(run_dir_of(ckpt_path)) / "export")


if not OmegaConf.has_resolver("sdr.run_dir"):
    OmegaConf.register_new_resolver("sdr.run_dir", run_dir_of)
if not OmegaConf.has_resolver("sdr.export_dir"):
    OmegaConf.register_new_resolver("sdr.export_dir", export_dir_of)


class UnsafeTargetError(ConfigError):
    """A config read from a file names a `_target_` outside the allow-list; nothing was imported or called."""


def compose_config(overrides: Sequence[str] = (), config_name: str = "train",
                   output_dir: str | Path | None = None) -> DictConfig:
    """`conf/<config_name>.yaml` with `overrides`, as `python <config_name>.py` composes it. `output_dir`: the run's
    folder (and its cache and logs), in place of Hydra's own. Hydra's runtime values (`${hydra:runtime.cwd}`) resolve
    as they would in the command; the `hydra` node itself is dropped."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    paths = []
    if output_dir is not None:
        paths = [f"paths.root_dir={output_dir}", f"paths.output_dir={output_dir}", f"paths.log_dir={output_dir}",
                 f"paths.cache_dir={output_dir}/cache"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=[*paths, *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


# key, test, the valid range in words. Keys a config does not have (another optimizer, say) are skipped.
TRAIN_CHECKS: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", lambda v: v is None or _integer(v), "an integer, or null to leave the random generators unseeded"),
    ("test", lambda v: isinstance(v, bool), "true (score TEST at the end) or false (a design run: DEV only)"),
    ("trainer.max_epochs", lambda v: _integer(v) and v >= 1,
     "an integer >= 1 (the one-cycle schedule spans a fixed number of epochs, so -1, Lightning's 'forever', cannot "
     "be scheduled)"),
    ("trainer.check_val_every_n_epoch", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("data.batch_size", lambda v: _integer(v) and v >= 1, "an integer >= 1 (clips per training step)"),
    ("data.group_by_length", lambda v: _integer(v) and v >= 0,
     "an integer >= 0 (batches per length-sorted group; 0 for plain shuffled batches)"),
    ("data.eval_batch_size", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("data.num_workers", lambda v: _integer(v) and v >= 0, "an integer >= 0 (0: load in the main process)"),
    ("data.cache_max_gb", lambda v: v is None or (_number(v) and v > 0), "a number of GB > 0, or null for no bound"),
    ("model.optimizer.lr", lambda v: _number(v) and v > 0, "a number > 0, e.g. 3e-3"),
    ("model.optimizer.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("model.label_smoothing", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("model.mixup", lambda v: v is None or (_number(v) and v >= 0), "a number >= 0 (mixup's Beta alpha; 0: none)"),
    ("model.consistency", lambda v: v is None or (_number(v) and v >= 0),
     "a number >= 0 (the weight of the clean/augmented consistency loss; 0: none)"),
]


def validate_train_config(cfg: DictConfig) -> None:
    """ConfigError for the first value in TRAIN_CHECKS outside its range, or the first key of `required` (keys a
    preset needs from the command line, e.g. robust_cnn_tune's model.init_from) left null, before anything is built or
    read."""
    for key in cfg.get("required") or []:
        if OmegaConf.select(cfg, str(key), default=None) is None:
            raise ConfigError(f"{key} is not set, and this preset needs it (its `required` list); add {key}=<value> "
                              "to the command.")
    for key, valid, expected in TRAIN_CHECKS:
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True, default=_ABSENT)
        except Exception as err:  # noqa: BLE001 - a missing (???) or broken interpolation: say which key
            raise ConfigError(f"{key}: cannot read its value ({str(err).splitlines()[0]}).") from err
        if value is _ABSENT:
            continue
        if not valid(value):
            raise ConfigError(f"{key}={value!r} cannot work; use {expected}.")


_ABSENT = object()


def instantiate_part(where: str, node: Mapping[str, Any] | DictConfig, **kwargs: Any) -> Any:
    """`instantiate(node, **kwargs)`. A bad value or a misspelt argument becomes one ConfigError naming `where` (the
    config key, e.g. model.encoder); our own errors raised inside a constructor come out as themselves."""
    from hydra.utils import instantiate

    if not isinstance(node, (Mapping, DictConfig)) or "_target_" not in node:
        raise ConfigError(f"{where} needs a _target_ (the class to build); got {node!r}.")
    try:
        return instantiate(node, **kwargs, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, SdrError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from err
        if isinstance(err.__cause__, _refused_value_errors()):  # e.g. an argument the class does not take
            raise ConfigError(f"{where} ({node['_target_']}): {err.__cause__}") from err
        raise


def _refused_value_errors() -> tuple[type[Exception], ...]:
    """What a constructor raises for a value it refuses: Python's own, and Lightning's MisconfigurationException."""
    try:
        from lightning_fabric.utilities.exceptions import MisconfigurationException
    except ImportError:
        return (TypeError, ValueError)
    return (TypeError, ValueError, MisconfigurationException)


def check_targets(node: Any, source: str | Path, where: str = "") -> None:
    """Raise UnsafeTargetError (naming `source`, the key and the target) if `node` holds a `_target_` outside
    ALLOWED_MODULES, or one that is not a class defined there (a function, or a name re-exported from elsewhere,
    such as `sdr_lightning.some_module.os.system`). Only allow-listed modules are imported to find out."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    elif isinstance(node, ListConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                check_target(value, source, path)
            else:
                check_targets(value, source, path)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            check_targets(value, source, f"{where}[{index}]")


def check_target(target: Any, source: str | Path, where: str = "_target_") -> type:
    """The class `target` names, if it is allowed (see check_targets); else UnsafeTargetError."""
    def refuse(why: str) -> UnsafeTargetError:
        return UnsafeTargetError(
            f"{source}: {where}={target!r} {why}. Files loaded by this project may only build classes of "
            f"{' or '.join(ALLOWED_MODULES)}; nothing was run. Use a file written by this project, or fix that key.")

    name = str(target)
    if not isinstance(target, str) or not any(name == m or name.startswith(m + ".") for m in ALLOWED_MODULES):
        raise refuse("is not allowed")
    found = _locate_allowed(name)
    if found is None:
        raise refuse("names nothing that exists in this version of the package")
    module = getattr(found, "__module__", "") or ""
    if not inspect.isclass(found) or not any(module == m or module.startswith(m + ".") for m in ALLOWED_MODULES):
        raise refuse(f"is not a class defined in {' or '.join(ALLOWED_MODULES)} (it is {found!r})")
    return found


def _locate_allowed(name: str) -> Any:
    """Import the longest module prefix of `name` (an allow-listed dotted path) and walk attributes from it."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        module_name = ".".join(parts[:split])
        try:
            found: Any = importlib.import_module(module_name)
        except (ImportError, ValueError):  # not a module (ValueError: an empty part, as in a..b)
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute, None)
            if found is None:
                return None
        return found
    return None
