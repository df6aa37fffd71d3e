"""Export a checkpoint to TorchScript and ONNX: `python export.py ckpt_path=<run>/checkpoints/<best>.ckpt
[formats=[torchscript,onnx]] [output_dir=...]` (also installed as `sdr-export`). Configuration: conf/export.yaml."""

from sdr_lightning.cli import export

if __name__ == "__main__":
    export()
