"""Train and evaluate one model: `python train.py model=vit`, or a sweep: `python train.py -m model=cnn,linear`.

Resume a run where its last checkpoint left it, in its own directory and with its own overrides:
`python train.py resume_dir=outputs/runs/<run>` (overrides given as well win over the run's own)."""

import sys

import hydra
from omegaconf import DictConfig

from sdr_lightning.errors import SdrError
from sdr_lightning.launch import in_multirun, resume_arguments, run_sweep_job


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from sdr_lightning.train import run  # imported here, so --help and config errors answer without loading torch

    if in_multirun():  # a failing job is logged and reported at the end; the other jobs still run
        return run_sweep_job(run, cfg)
    try:
        return run(cfg)
    except SdrError as err:  # our own errors already say what to do: no traceback
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    try:
        sys.argv = resume_arguments(sys.argv)
    except SdrError as err:
        sys.exit(f"error: {err}")
    main()
