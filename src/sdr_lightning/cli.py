"""Every command, made one way: the root scripts (`python train.py ...`) and the console scripts (`sdr-train ...`)
both call these functions.

| command | config | what it runs |
|---|---|---|
| train.py / sdr-train | conf/train.yaml | sdr_lightning.tasks.train.train |
| eval.py / sdr-eval | conf/eval.yaml | sdr_lightning.tasks.evaluate.evaluate |
| predict.py / sdr-predict | conf/predict.yaml | sdr_lightning.tasks.predict.predict |
| export.py / sdr-export | conf/export.yaml | sdr_lightning.tasks.export.export |
| adapt.py / sdr-adapt | conf/adapt.yaml | sdr_lightning.tasks.adapt.adapt (BatchNorm statistics of new recordings) |
| compare.py / sdr-compare | (arguments) | sdr_lightning.analysis.compare.main |
| sdr-significance | (arguments) | sdr_lightning.analysis.significance.main |
| sdr-voices | (arguments) | sdr_lightning.data.voices.main (espeak-ng's synthetic voices) |
| sdr-listen | conf/listen.yaml | sdr_lightning.tasks.listen.listen (digits from the microphone) |
| demo.py / sdr-demo | conf/demo.yaml | sdr_lightning.tasks.demo.demo (a local web page) |

The Hydra commands compose the repository's conf/ with the command line's overrides, print our own errors (SdrError)
as one line without a traceback, and import their task only once the config is composed, so `--help` and config
errors answer without loading torch.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sdr_lightning.config import CONFIG_DIR
from sdr_lightning.errors import SdrError


def hydra_command(config_name: str, task: str, resumable: bool = False) -> Callable[[], None]:
    """An entry point running `task` ("module:function", called with the composed config) on
    conf/<config_name>.yaml. `resumable`: `resume_dir=<run>` replays that run (sdr_lightning.tasks.launch)."""

    def command() -> None:
        import hydra

        from sdr_lightning.tasks.launch import in_multirun, resume_arguments, run_sweep_job

        if not (CONFIG_DIR / f"{config_name}.yaml").is_file():
            sys.exit(f"error: {CONFIG_DIR / config_name}.yaml not found: this command reads the repository's conf/ "
                     f"folder. Install the package from a checkout with `pip install -e .`, or run "
                     f"`python {config_name}.py` in the checkout.")
        if resumable:
            try:
                sys.argv = resume_arguments(sys.argv)
            except SdrError as err:
                sys.exit(f"error: {err}")

        @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
        def main(cfg: DictConfig) -> Any:
            module, _, function = task.partition(":")
            run = getattr(importlib.import_module(module), function)
            if in_multirun():  # a failing job is logged and reported at the end; the other jobs still run
                return run_sweep_job(run, cfg)
            try:
                return run(cfg)
            except SdrError as err:  # our own errors already say what to do: no traceback
                discard_empty_run_dir()
                sys.exit(f"error: {err}")

        main()

    return command


def discard_empty_run_dir() -> None:
    """Remove the run folder Hydra made for this job if the job wrote nothing into it (a refused config, a missing
    clip): only Hydra's own `.hydra/` record and the job's log. A folder holding anything else is kept."""
    from hydra.core.hydra_config import HydraConfig

    folder = Path(HydraConfig.get().runtime.output_dir)
    log_name = f"{HydraConfig.get().job.name}.log"
    if not (folder / ".hydra").is_dir():
        return  # not a folder Hydra made for a run (eval, predict and export write none)
    for path in folder.rglob("*"):
        if path.is_file() and path.name != log_name and ".hydra" not in path.relative_to(folder).parts:
            return
    shutil.rmtree(folder, ignore_errors=True)


def argparse_command(module: str) -> Callable[[list[str] | None], None]:
    """An entry point running `<module>.main(argv)`, a command with its own argument parser."""

    def command(argv: list[str] | None = None) -> None:
        importlib.import_module(module).main(argv)

    return command


train = hydra_command("train", "sdr_lightning.tasks.train:train", resumable=True)
evaluate = hydra_command("eval", "sdr_lightning.tasks.evaluate:evaluate")
predict = hydra_command("predict", "sdr_lightning.tasks.predict:predict")
export = hydra_command("export", "sdr_lightning.tasks.export:export")
adapt = hydra_command("adapt", "sdr_lightning.tasks.adapt:adapt")
compare = argparse_command("sdr_lightning.analysis.compare")
significance = argparse_command("sdr_lightning.analysis.significance")
voices = argparse_command("sdr_lightning.data.voices")
listen = hydra_command("listen", "sdr_lightning.tasks.listen:listen")
demo = hydra_command("demo", "sdr_lightning.tasks.demo:demo")
