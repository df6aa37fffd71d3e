"""export.py: TorchScript and ONNX exports take a raw waveform batch of any size and length and give the
checkpoint's logits (checked here with onnxruntime and torch.jit.load, independently of the export's own check)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from sdr_lightning.data.datamodule import collate_waveforms
from sdr_lightning.errors import ConfigError
from sdr_lightning.tasks.checkpoint import load_checkpoint
from sdr_lightning.tasks.export import export, export_model
from tests.helpers import ROOT, compose

# subprocesses, DDP ranks, Optuna trials or exporters: the slow tier (pytest -m slow)
pytestmark = pytest.mark.slow

# lengths in samples at 8 kHz: shorter than one FFT window (256), exactly one, 0.5 s, and one odd long clip
LENGTHS = [10, 256, 4000, 12345]


def clip_batches(seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each clip alone and all of them in one padded batch (batch sizes and lengths unlike the export's examples)."""
    generator = torch.Generator().manual_seed(seed)
    clips = []
    for n in LENGTHS:
        envelope = torch.hann_window(n, periodic=False) if n > 1 else torch.ones(n)
        clips.append(0.4 * torch.randn(n, generator=generator) * envelope)
    batch = collate_waveforms([(clip, 0, 0) for clip in clips])
    return [(clip[None], torch.tensor([len(clip)])) for clip in clips] + [(batch["waveform"], batch["lengths"])]


def assert_exports_match(model: torch.nn.Module, folder: Path, atol: float = 1e-4) -> None:
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("waveform", ["batch", "samples"]),
                                                                ("lengths", ["batch"])]  # dynamic axes
    scripted = torch.jit.load(str(folder / "model.pt"))
    program = torch.export.load(str(folder / "model.pt2")).module()
    with torch.inference_mode():
        batches = clip_batches()
        expected = [model(waveform, lengths).numpy() for waveform, lengths in batches]
        assert np.ptp(expected[-1], axis=0).max() > 0.1  # the clips' logits differ: a comparison that can fail
        for (waveform, lengths), logits in zip(batches, expected):
            onnx_logits = session.run(None, {"waveform": waveform.numpy(), "lengths": lengths.numpy()})[0]
            np.testing.assert_allclose(onnx_logits, logits, atol=atol, rtol=0)
            np.testing.assert_allclose(scripted(waveform, lengths).numpy(), logits, atol=atol, rtol=0)
            np.testing.assert_allclose(program(waveform, lengths).numpy(), logits, atol=atol, rtol=0)


def test_export_command_writes_models_that_match_the_checkpoint(cnn_run: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "export"
    cfg = compose(tmp_path, [f"ckpt_path={cnn_run['best_checkpoint']}", f"output_dir={out}",
                                    "formats=[torchscript,onnx,exported_program]"], config_name="export")
    GlobalHydra.instance().clear()
    results = export(cfg)
    assert [r.format for r in results] == ["torchscript", "onnx", "exported_program"]
    assert all(r.max_abs_diff < 1e-4 for r in results)
    info = json.loads((out / "export.json").read_text())
    assert info["sample_rate"] == 8000
    assert info["files"] == {"torchscript": "model.pt", "onnx": "model.onnx", "exported_program": "model.pt2"}
    printed = capsys.readouterr().out
    assert "max |logit - checkpoint's|" in printed and str(out / "model.onnx") in printed
    model = load_checkpoint(cnn_run["best_checkpoint"]).model
    assert float(model.calibration_temperature) != 1.0  # so the match shows the exports divide by it too
    assert info["calibration_temperature"] == pytest.approx(float(model.calibration_temperature))
    assert_exports_match(model.eval(), out)


# the ViT pads short inputs to a patch and derives its patch count from the length: the hardest shapes to export
SMALL_VIT = ["model=vit", "model.encoder.depth=1", "model.encoder.dim=32", "model.encoder.heads=2",
             "model.encoder.mlp_dim=64"]


# best_cnn's featurizer smooths with a DCT projection (cepstra) and its model owns training-only augmentations
BEST_CNN = ["experiment=best_cnn", "model.encoder.channels=16"]
# cnn_ensemble adds grouped convolutions and one head per member (an einsum)
CNN_ENSEMBLE = ["experiment=cnn_ensemble", "model.encoder.channels=8"]


# The 10-sample test clip is one near-silent frame; smoothed by the cepstra its log-Mel is almost flat, so the
# per-clip normalisation divides by a tiny spread and ONNX Runtime's rounding shows at 1e-3 (the others: < 1e-6).
@pytest.mark.parametrize(("overrides", "atol"), [(["model=linear"], 1e-4), (SMALL_VIT, 1e-4), (BEST_CNN, 5e-3),
                                                 (CNN_ENSEMBLE, 5e-3),
                                                 ([*CNN_ENSEMBLE, "model.clip_norm=0.1"], 5e-3)],
                         ids=["linear", "vit", "best_cnn", "cnn_ensemble", "clip_norm"])
def test_other_models_export(overrides: list[str], atol: float, tmp_path: Path) -> None:
    """Random weights are enough: what matters is that every op and shape path survives tracing and export."""
    cfg = compose(tmp_path, overrides)
    GlobalHydra.instance().clear()
    torch.manual_seed(0)
    model = instantiate(cfg.model, _recursive_=False, _convert_="all").eval()
    results = export_model(model, tmp_path, ["torchscript", "onnx", "exported_program"], atol=atol)
    assert [r.format for r in results] == ["torchscript", "onnx", "exported_program"]
    assert_exports_match(model, tmp_path, atol=atol)


def test_unknown_format_and_tolerance_are_config_errors(tmp_path: Path) -> None:
    cfg = compose(tmp_path, ["model=linear"])
    GlobalHydra.instance().clear()
    model = instantiate(cfg.model, _recursive_=False, _convert_="all")
    with pytest.raises(ConfigError, match="formats=.*torchscript"):
        export_model(model, tmp_path, ["tflite"])
    with pytest.raises(ConfigError, match=r"atol=-1"):  # no export matches to better than -1
        export_model(model, tmp_path, ["torchscript"], atol=-1)


PACKED_CNN = ["--model", "cnn", "--override", "model.encoder.members=2", "model.encoder.channels=8"]


@pytest.mark.parametrize("model", [["--model", "linear"], PACKED_CNN], ids=["linear", "packed_cnn"])
def test_latency_benchmark_runs(model: list[str], synthetic_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys) -> None:
    """benchmarks/inference_latency.py end to end with a few calls (its figures are not checked: no timing here)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as `python benchmarks/<name>.py` does, for `_common`
    spec = importlib.util.spec_from_file_location("inference_latency", ROOT / "benchmarks" / "inference_latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "latency.json"
    module.main([*model, "--runs", "3", "--batch", "4", "--batch-repeats", "1", "--threads", "1",
                 "--data", str(synthetic_data), "--out", str(out)])
    figures = json.loads(out.read_text())["figures"]
    assert [f["backend"] for f in figures] == ["eager PyTorch", "TorchScript", "ONNX Runtime"]
    assert all(f["median_ms"] > 0 and f["clips_per_s"] > 0 for f in figures)
    printed = capsys.readouterr().out
    assert "target: single clip <= 5 ms" in printed
    packed = json.loads(out.read_text())["packed_single_clip_ms"]
    if "--override" in model:  # a packed ensemble: its single clip on both grouped-convolution paths
        assert packed["matmul"] > 0 and packed["library_kernel"] > 0 and "library's grouped kernel" in printed
    else:
        assert packed is None
