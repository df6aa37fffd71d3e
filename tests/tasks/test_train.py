import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from sdr_lightning.errors import OutputError
from sdr_lightning.tasks.train import train
from tests.helpers import ROOT

MODELS = [("model=linear",), ("model=cnn",), ("model=vit",), ("model=bcresnet",), ("model=simclr",),
          ("model=simclr", "encoder=vit")]


@pytest.mark.parametrize("model", MODELS, ids=" ".join)
def test_fast_dev_run_through_real_config(make_cfg, model: tuple[str, ...]) -> None:
    cfg = make_cfg(*model, "debug=fast_dev_run")
    assert 0.0 <= train(cfg) <= 1.0


def test_short_run_writes_outputs_and_loads_safely(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("model=cnn", "debug=limit", "seed=7")
    value = train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert value == metrics["val/acc"]
    assert {"val/acc", "val/f1_macro", "test/acc", "test/f1_macro", "train_time_s", "parameters"} <= set(metrics)
    events = EventMultiplexer()
    events.AddRunsFromDirectory(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = set(events.Runs()["."]["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "lr-AdamW", "hp/test_acc"} <= scalars
    assert events.PluginRunToTagToContent("hparams")["."]  # the HPARAMS tab has this run
    checkpoints = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert checkpoints and Path(metrics["best_checkpoint"]).is_file()

    state = torch.load(metrics["best_checkpoint"], weights_only=True, map_location="cpu")
    assert state["hyper_parameters"]["featurizer"]["n_mels"] == 40
    from sdr_lightning.models import DigitClassifier

    model = DigitClassifier.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu").eval()
    wave = torch.randn(1, 4000)
    assert model(wave, torch.tensor([4000])).argmax().item() in range(10)


def test_a_design_run_never_reads_test(make_cfg, tmp_path: Path, capsys, monkeypatch) -> None:
    import pytorch_lightning as pl

    tested = []
    original = pl.Trainer.test
    monkeypatch.setattr(pl.Trainer, "test", lambda self, *a, **k: tested.append(1) or original(self, *a, **k))
    train(make_cfg("model=linear", "debug=limit", "test=false", "report.splits=[DEV,TEST]", "logger=csv",
                   "report.projector=false", "report.misclassified_audio=0"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert not tested and "val/acc" in metrics and not any(k.startswith("test/") for k in metrics)
    assert (tmp_path / "reports" / "dev").is_dir() and not (tmp_path / "reports" / "test").exists()
    assert "TEST not read (test=false)" in capsys.readouterr().out


def test_a_preset_names_the_key_it_needs(make_cfg) -> None:
    from sdr_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^model.init_from is not set, and this preset needs it"):
        train(make_cfg("experiment=robust_cnn_tune", "debug=fast_dev_run"))


def test_same_seed_same_metrics(make_cfg, tmp_path: Path) -> None:
    first = train(make_cfg("model=linear", "debug=limit", "seed=3", "callbacks=none", "logger=csv"))
    second = train(make_cfg("model=linear", "debug=limit", "seed=3", "callbacks=none", "logger=csv"))
    assert first == second


def test_resume_from_checkpoint(make_cfg, tmp_path: Path) -> None:
    every_epoch = ("model=linear", "debug=limit", "callbacks.model_checkpoint.save_top_k=-1")
    train(make_cfg(*every_epoch))
    first_epoch = tmp_path / "checkpoints" / "epoch_000.ckpt"
    assert first_epoch.is_file()
    train(make_cfg(*every_epoch, f"ckpt_path={first_epoch}"))
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_multirun_sweeps_models(synthetic_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SDR_DATA_DIR": str(synthetic_data), "SDR_LOG_DIR": str(tmp_path),
           "SDR_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "model=cnn,linear", "debug=limit", "data.batch_size=16",
         "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent.name for p in tmp_path.glob("multirun/*/*/metrics.json"))
    assert len(runs) == 2
    assert runs[0].startswith("0_") and "model-cnn" in runs[0] and "model-linear" in runs[1]
    assert len({p.parent for p in tmp_path.glob("multirun/*/*/tensorboard/events.out.tfevents.*")}) == 2


@pytest.mark.slow
def test_user_errors_print_one_message_without_traceback(synthetic_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SDR_DATA_DIR": str(synthetic_data), "SDR_LOG_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "train.py", "data.train_speakers=[lucas]", "debug=fast_dev_run"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "error: Speaker(s) ['lucas']" in result.stderr and "allow_speaker_overlap" in result.stderr
    assert "Traceback" not in result.stderr


def test_end_to_end_on_real_clips(make_cfg, shared_data: Path, tmp_path: Path) -> None:
    cfg = make_cfg(f"data.dir={shared_data}", "model=cnn", "trainer.max_epochs=3", "data.batch_size=64",
                   "+trainer.limit_train_batches=15")
    accuracy = train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert accuracy > 0.3  # 45 steps on real speech already beat chance (0.1)
    assert 0.0 < metrics["test/acc"] <= 1.0


def test_a_full_disk_while_writing_reports_keeps_the_checkpoint_and_metrics(make_cfg, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import sdr_lightning.tasks.evaluate as evaluate_module

    where = tmp_path / "reports" / "dev" / "confusion_matrix.png"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(evaluate_module, "write_split_report", disk_full)
    with pytest.raises(OutputError) as raised:
        train(make_cfg("model=linear", "debug=limit", "report.projector=false"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    message = str(raised.value)
    assert f"writing {where} failed: No space left on device" in message
    assert metrics["best_checkpoint"] in message and str(tmp_path / "metrics.json") in message
    assert Path(metrics["best_checkpoint"]).is_file()


def test_a_full_disk_for_metrics_json_names_the_kept_checkpoint(make_cfg, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import sdr_lightning.tasks.train as train_module

    def disk_full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(train_module, "write_atomically", disk_full)
    with pytest.raises(OutputError, match=r"metrics.json could not be written: No space left on device\. The trained "
                                          r"checkpoint \S+epoch_\d+.ckpt is kept"):
        train(make_cfg("model=linear", "debug=limit", "report.projector=false"))
    assert not (tmp_path / "metrics.json").exists() and list((tmp_path / "checkpoints").glob("epoch_*.ckpt"))
