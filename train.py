"""Train and evaluate one model: `python train.py model=vit`, or a sweep: `python train.py -m model=cnn,linear`."""

import sys

import hydra
from omegaconf import DictConfig

from sdr_lightning.errors import SdrError
from sdr_lightning.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg)
    except SdrError as err:  # our own errors already say what to do: no traceback
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
