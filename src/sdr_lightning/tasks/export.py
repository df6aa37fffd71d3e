"""Export a checkpoint to TorchScript (`model.pt`), ONNX (`model.onnx`) or a torch.export program (`model.pt2`,
TorchScript's successor): a raw waveform batch at the model's sample rate and each clip's length in samples go in,
logits come out, for any batch size and clip length.

Every export is loaded back from disk and checked against the checkpoint's own forward on clips of different
lengths (one shorter than an FFT window), alone and in one padded batch; `python export.py` prints the largest
logit difference and stops with an error above `atol`.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from sdr_lightning.data.datamodule import collate_waveforms
from sdr_lightning.errors import ConfigError
from sdr_lightning.models.classifier import combine_members
from sdr_lightning.tasks.predict import load_model

FILENAMES = {"torchscript": "model.pt", "onnx": "model.onnx", "exported_program": "model.pt2"}
INPUT_NAMES = ["waveform", "lengths"]
OUTPUT_NAMES = ["logits"]


class WaveformClassifier(nn.Module):
    """A DigitClassifier's inference path (featurizer, encoder, head, calibration temperature) as a plain module: a
    LightningModule cannot be traced (tracing reads its `trainer` property), and exports need none of the training
    plumbing.

    It appends `pad` zeros to the batch. They lie past every clip's length, so the features and encoders mask them
    and the logits do not change; but the batch is then always at least one FFT window wide and gives at least two
    frames (ViT: two patches), so the shape checks that pad short inputs in eager mode are always false, a trace
    cannot freeze them to the example's shape, and torch.export need not assume a size of at least 2."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.featurizer, self.encoder, self.head = model.featurizer, model.encoder, model.head
        self.register_buffer("temperature", model.calibration_temperature.detach().clone())  # models/calibration.py
        min_frames = getattr(model.encoder, "patch_time", 1) + getattr(model.encoder, "stride_time", 1)
        self.pad = self.featurizer.n_fft + self.featurizer.hop_length * (min_frames - 1)
        self.sample_rate = int(self.featurizer.sample_rate)

    def forward(self, waveform: Tensor, lengths: Tensor) -> Tensor:
        waveform = nn.functional.pad(waveform, (0, self.pad))
        features, frames = self.featurizer(waveform, lengths)
        return combine_members(self.head(self.encoder(features, frames))) / self.temperature


def check_batches(sample_rate: int, n_fft: int, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """Clips of 0.5 s, 1.5 s and one shorter than an FFT window (noisy tone bursts), each alone, then all three
    in one zero-padded batch."""
    generator = torch.Generator().manual_seed(seed)
    clips = []
    for length, pitch in ((sample_rate // 2, 440.0), (3 * sample_rate // 2, 700.0), (n_fft // 2, 300.0)):
        time = torch.arange(length) / sample_rate
        tone = 0.3 * torch.sin(2 * torch.pi * pitch * time) * torch.hann_window(length, periodic=False)
        clips.append(tone + 0.01 * torch.randn(length, generator=generator))
    batches = [(clip[None], torch.tensor([len(clip)])) for clip in clips]
    together = collate_waveforms([(clip, 0, 0) for clip in clips])
    return batches + [(together["waveform"], together["lengths"])]


def export_torchscript(module: WaveformClassifier, path: Path, example: tuple[Tensor, Tensor]) -> None:
    with warnings.catch_warnings():
        # The tracer warns about every Python-level shape check; the padding above makes them constant, and
        # the round trip in `export_model` would catch any that is not.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
    torch.jit.save(traced, str(path))


def dynamic_shapes(named: bool = False) -> dict[str, dict[int, Any]]:
    """Any batch size and clip length. Dim.DYNAMIC, not Dim("samples"): a named Dim makes torch.export fail on guards
    it cannot prove although they always hold (the ViT's patch count). `named`: ONNX axis names (torch.onnx makes
    them Dim.DYNAMIC too)."""
    batch, samples = ("batch", "samples") if named else (torch.export.Dim.DYNAMIC, torch.export.Dim.DYNAMIC)
    return {"waveform": {0: batch, 1: samples}, "lengths": {0: batch}}


def export_program(module: WaveformClassifier, path: Path, example: tuple[Tensor, Tensor]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export's own internals
        program = torch.export.export(module, example, dynamic_shapes=dynamic_shapes())
    torch.export.save(program, str(path))


def export_onnx(module: WaveformClassifier, path: Path, example: tuple[Tensor, Tensor],
                opset: int | None = None) -> None:
    """torch.export (dynamo) to ONNX with dynamic batch and length axes, weights inside the one file."""
    # Quiet: an INFO line per merged constant, and a warning per torchvision op it cannot find (none is used here).
    quiet = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints")  # both inputs' batch
            warnings.simplefilter("ignore", FutureWarning)  # torch.export's own internals
            torch.onnx.export(
                module, example, str(path), dynamo=True, opset_version=opset, verbose=False, external_data=False,
                input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, dynamic_shapes=dynamic_shapes(named=True),
            )
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def torchscript_runner(path: Path) -> Callable[[Tensor, Tensor], np.ndarray]:
    loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda waveform, lengths: loaded(waveform, lengths).numpy()


def onnx_runner(path: Path) -> Callable[[Tensor, Tensor], np.ndarray]:
    import onnxruntime  # imported here: predict/eval never need it

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda waveform, lengths: session.run(
        OUTPUT_NAMES, {"waveform": waveform.numpy(), "lengths": lengths.numpy()})[0]


def program_runner(path: Path) -> Callable[[Tensor, Tensor], np.ndarray]:
    loaded = torch.export.load(str(path)).module()
    return lambda waveform, lengths: loaded(waveform, lengths).numpy()


RUNNERS = {"torchscript": torchscript_runner, "onnx": onnx_runner, "exported_program": program_runner}


@dataclass
class ExportResult:
    format: str
    path: Path
    max_abs_diff: float


@torch.inference_mode()
def max_abs_diff(module: nn.Module, run: Callable[[Tensor, Tensor], np.ndarray],
                 batches: Sequence[tuple[Tensor, Tensor]]) -> float:
    """Largest |logit difference| between `run` (an exported model) and `module` over `batches`."""
    return max(float(np.abs(run(w, n) - module(w, n).numpy()).max()) for w, n in batches)


def export_model(model: nn.Module, output_dir: Path, formats: Sequence[str], atol: float = 1e-3,
                 opset: int | None = None) -> list[ExportResult]:
    """Write each format under `output_dir`, load it back and compare its logits with `model`'s own forward."""
    unknown = sorted(set(formats) - set(RUNNERS))
    if unknown or not formats:
        raise ConfigError(f"formats={list(formats)}: choose one or more of {sorted(RUNNERS)}.")
    exporters = {"torchscript": export_torchscript, "onnx": partial(export_onnx, opset=opset),
                 "exported_program": export_program}
    model = model.cpu().eval()
    module = WaveformClassifier(model).eval()
    batches = check_batches(module.sample_rate, module.featurizer.n_fft)
    example = batches[-1]  # several clips of different lengths, so no size is taken for a constant
    output_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in formats:
        path = output_dir / FILENAMES[name]
        with torch.no_grad():
            exporters[name](module, path, example)
        diff = max_abs_diff(model, RUNNERS[name](path), batches)  # against the checkpoint's model, not the wrapper
        results.append(ExportResult(name, path, diff))
        if not diff <= atol:  # also catches NaN
            raise ConfigError(f"{path}: its logits differ from the checkpoint's by up to {diff:.3g} (atol={atol}) "
                              f"on the check clips; the file is kept for inspection. Raise atol=... only if that "
                              f"difference is acceptable.")
    return results


def export(cfg: DictConfig) -> list[ExportResult]:
    """`python export.py ckpt_path=... [formats=[torchscript,onnx]] [output_dir=...]`."""
    model = load_model(cfg)
    output_dir = Path(cfg.output_dir).expanduser()
    formats = [str(f) for f in cfg.formats]
    results = export_model(model, output_dir, formats, atol=cfg.atol, opset=cfg.get("opset"))
    sample_rate = int(model.featurizer.sample_rate)
    info: dict[str, Any] = {
        "checkpoint": str(Path(cfg.ckpt_path).expanduser().resolve()),
        "model": type(model).__name__,
        "sample_rate": sample_rate,
        "inputs": {"waveform": "float32 (batch, samples), mono, zero-padded",
                   "lengths": "int64 (batch,), each clip's length in samples"},
        "outputs": {"logits": "float32 (batch, 10); softmax gives the probability of digits 0-9 (calibrated: "
                               "already divided by the checkpoint's temperature)"},
        "calibration_temperature": float(model.calibration_temperature),
        "files": {r.format: r.path.name for r in results},
        "max_abs_diff": {r.format: r.max_abs_diff for r in results},
    }
    (output_dir / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"{type(model).__name__} from {info['checkpoint']}: waveform (batch, samples) at {sample_rate} Hz "
          f"+ lengths (batch,) -> logits (batch, 10)")
    for result in results:
        print(f"{result.format:<16} {result.path}  max |logit - checkpoint's| = {result.max_abs_diff:.2e}")
    return results
