"""What train.py does around Hydra: resume a run directory, and keep a multirun going when one job fails.

- `resume_arguments`: `python train.py resume_dir=<run>` becomes the run's own overrides plus
  `hydra.run.dir=<run> ckpt_path=last`, so the run continues in its directory from its last checkpoint.
- `run_sweep_job`: inside a multirun, a job that raises is logged with its run directory, leaves `error.txt`
  there and returns NaN (Optuna records a failed trial), so the remaining jobs still run.
- `FailedJobsReport` (a Hydra callback, `hydra.callbacks` in conf/train.yaml): at the end of the sweep it lists
  the failed jobs and exits with status 1.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from sdr_lightning.config import UnsafeTargetError, check_target
from sdr_lightning.errors import ConfigError, SdrError

log = logging.getLogger(__name__)

RESUME_KEY = "resume_dir"
ERROR_FILENAME = "error.txt"


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def resume_arguments(argv: list[str]) -> list[str]:
    """`argv` (program name first) with `resume_dir=<run>` replaced by that run's saved overrides (those given
    now win), `hydra.run.dir=<run>` and `ckpt_path=last`; `argv` unchanged without `resume_dir`."""
    given = [arg for arg in argv[1:] if _override_key(arg) == RESUME_KEY]
    if not given:
        return argv
    if "-m" in argv or "--multirun" in argv:
        raise ConfigError(f"{RESUME_KEY} resumes one run; resume each job of a sweep on its own "
                          f"({RESUME_KEY}=<sweep>/<job directory>), without -m.")
    run_dir = Path(given[-1].split("=", 1)[1]).expanduser()
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise ConfigError(f"{RESUME_KEY}={run_dir}: {saved} not found; give the directory of a run that train.py "
                          f"wrote (it holds .hydra/ and checkpoints/).")
    now = [arg for arg in argv[1:] if arg not in given]
    replaced = {_override_key(arg) for arg in now if "=" in arg} | {"ckpt_path", RESUME_KEY}
    previous = [str(arg) for arg in load_overrides(saved) if _override_key(str(arg)) not in replaced]
    # `last`: Lightning takes the newest last*.ckpt of the run's checkpoint folder (none: it starts afresh), unless
    # a checkpoint is named now (e.g. an older one, when last.ckpt is unreadable)
    resume_from = [] if any(_override_key(arg) == "ckpt_path" for arg in now) else ["ckpt_path=last"]
    return [argv[0], *previous, *now, f"hydra.run.dir={run_dir}", *resume_from]


def load_overrides(path: Path) -> list[str]:
    """A run's saved command-line overrides (`.hydra/overrides.yaml`), refused if any of them sets a `_target_`
    outside sdr_lightning.config's allow-list: replaying them would build (run) whatever it names."""
    try:
        overrides = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - YAML and I/O errors alike: one message
        raise ConfigError(f"{path}: cannot read it ({str(err).splitlines()[0]}).") from err
    if not isinstance(overrides, ListConfig) or not all(isinstance(item, str) for item in overrides):
        raise ConfigError(f"{path} is not a list of overrides (key=value); give the folder of a run train.py wrote.")
    for item in overrides:
        key, _, value = item.partition("=")
        if "_target_" in value or ("_target_" in key and key.rsplit(".", 1)[-1] != "_target_"):
            raise UnsafeTargetError(f"{path}: the override {item!r} builds a config node with a _target_ in it; "
                                    "resume_dir replays only plain values and _target_=<allowed class> overrides. "
                                    "Nothing was run.")
        if key.rsplit(".", 1)[-1] == "_target_":
            check_target(value.strip("'\""), path, key)
    return list(overrides)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_sweep_job(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """`task(cfg)` as one job of a multirun: an exception is logged and recorded in the job's directory, and the
    job returns NaN instead of raising, so the launcher goes on with the other jobs."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    error_file = output_dir / ERROR_FILENAME
    error_file.unlink(missing_ok=True)  # a job re-run in the same directory starts clean
    try:
        return task(cfg)
    except Exception as err:  # noqa: BLE001 - any failure of one job must not stop the sweep
        job = HydraConfig.get().job
        if isinstance(err, SdrError):  # our own errors say what to do: no traceback
            text = f"error: {err}\n"
            log.error("job %s failed: %s (run directory: %s)", job.num, err, output_dir)
        else:
            summary = " ".join(str(err).split())  # one line, whatever the exception's layout
            text = f"{type(err).__name__}: {summary}\n\n" + "".join(traceback.format_exception(err))
            log.exception("job %s failed (run directory: %s)", job.num, output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        error_file.write_text(text)
        return float("nan")


class FailedJobsReport(Callback):
    """At the end of a multirun, list the jobs that left an error.txt (message and directory) and exit with
    status 1; reads the sweep folder, so it works with launchers that run jobs in other processes."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        failed = sorted(sweep_dir.rglob(ERROR_FILENAME))
        if not failed:
            return
        jobs = len(list(sweep_dir.rglob(".hydra/overrides.yaml")))
        lines = [f"{len(failed)} of {jobs} jobs failed (the others finished):"]
        for path in failed:
            first_line = path.read_text().partition("\n")[0]  # the message; a traceback follows for bugs
            lines.append(f"  {path.parent}: {first_line}")
        sys.exit("\n".join(lines))
