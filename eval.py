"""Evaluate a trained run: `python eval.py ckpt_path=<run>/checkpoints/<best>.ckpt [speakers=[lucas]]`."""

import sys

import hydra
from omegaconf import DictConfig

from sdr_lightning.errors import SdrError
from sdr_lightning.evaluate import run_eval


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        run_eval(cfg)
    except SdrError as err:  # our own errors already say what to do: no traceback
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
