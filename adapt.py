"""Adapt a checkpoint to your recordings (voice, microphone, room) from unlabeled clips:
`python adapt.py ckpt_path=<run>/checkpoints/<ckpt>.ckpt audio=my_clips/` (also installed as `sdr-adapt`).
Configuration: conf/adapt.yaml."""

from sdr_lightning.cli import adapt

if __name__ == "__main__":
    adapt()
