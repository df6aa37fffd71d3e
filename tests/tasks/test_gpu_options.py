"""Speed settings chosen by config: torch.compile (`compile.*`), mixed precision (`trainer.precision`), data
loader workers (`data.num_workers`, `data.pin_memory`). Tested on CPU; a GPU only changes where they run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sdr_lightning.models import DigitClassifier
from sdr_lightning.tasks.train import build, train
from tests.helpers import CONFIG_DIR

QUICK = ("debug=limit", "report.projector=false", "report.misclassified_audio=0", "seed=5")


@pytest.mark.slow  # torch.compile takes seconds
def test_compile_trains_and_its_checkpoint_loads_uncompiled(make_cfg, tmp_path: Path) -> None:
    # aot_eager goes through Dynamo and AOTAutograd like inductor, without inductor's minutes of C++ codegen
    overrides = ("model=cnn", *QUICK, "compile.enabled=true", "compile.backend=aot_eager")
    _, model, _ = build(make_cfg(*overrides))
    assert model.encoder._compiled_call_impl is not None

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    train(make_cfg(*overrides))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the encoder really ran compiled

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    state = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert not [key for key in state if "_orig_mod" in key]
    plain = DigitClassifier.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu")  # strict
    assert plain.encoder._compiled_call_impl is None
    datamodule, _, _ = build(make_cfg(*QUICK))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_test_batches=2)
    test = trainer.test(plain, datamodule=datamodule, verbose=False)[0]
    assert test["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert test["test/loss"] == pytest.approx(metrics["test/loss"], abs=1e-4)


def test_bf16_mixed_precision_runs_on_cpu(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("model=cnn", *QUICK, "trainer.precision=bf16-mixed")
    assert build(cfg)[2].precision == "bf16-mixed"
    value = train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= value <= 1.0 and metrics["val/loss"] == pytest.approx(metrics["val/loss"])  # finite, not NaN
    assert torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)[
        "state_dict"]["head.weight"].dtype == torch.float32  # mixed precision keeps float32 weights


def test_gpu_trainer_preset() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        trainer = compose("train", overrides=["trainer=gpu"]).trainer
    GlobalHydra.instance().clear()
    assert (trainer.accelerator, trainer.devices, trainer.precision) == ("gpu", 1, "bf16-mixed")


def test_loader_workers_serve_the_same_batches(make_cfg, tmp_path: Path) -> None:
    first = train(make_cfg("model=linear", *QUICK, "logger=csv"))
    cfg = make_cfg("model=linear", *QUICK, "logger=csv", "data.num_workers=2", "data.pin_memory=true")
    datamodule, _, _ = build(cfg)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers and loader.pin_memory
    assert train(cfg) == first
