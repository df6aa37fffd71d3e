"""A local web page for a trained checkpoint: `python demo.py ckpt_path=<run>/checkpoints/<best>.ckpt [port=7860]`
(also installed as `sdr-demo`; needs `pip install -e '.[demo]'`). Record or upload audio; the page shows the digits,
their probabilities, the log-Mel spectrogram with the detected segments and which model answered.
Configuration: conf/demo.yaml."""

from sdr_lightning.cli import demo

if __name__ == "__main__":
    demo()
