"""Predict digits: `python predict.py ckpt_path=<run>/checkpoints/<best>.ckpt audio=<file, folder or 'glob'>
[csv=out.csv]` (also installed as `sdr-predict`). Configuration: conf/predict.yaml."""

from sdr_lightning.predict import main

if __name__ == "__main__":
    main()
