"""Predict digits: `python predict.py ckpt_path=<run>/checkpoints/<best>.ckpt audio=<file, folder or 'glob'>
[csv=out.csv]` (also installed as `sdr-predict`). Configuration: conf/predict.yaml."""

from sdr_lightning.cli import predict

if __name__ == "__main__":
    predict()
