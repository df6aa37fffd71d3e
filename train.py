"""Train and evaluate one model: `python train.py model=vit`, or a sweep: `python train.py -m model=cnn,linear`
(also installed as `sdr-train`). Resume a run in its own folder: `python train.py resume_dir=outputs/runs/<run>`.
Configuration: conf/train.yaml."""

from sdr_lightning.cli import train

if __name__ == "__main__":
    train()
