"""Evaluate a trained run: `python eval.py ckpt_path=<run>/checkpoints/<best>.ckpt [speakers=[lucas]]` (also installed
as `sdr-eval`). Configuration: conf/eval.yaml."""

from sdr_lightning.cli import evaluate

if __name__ == "__main__":
    evaluate()
