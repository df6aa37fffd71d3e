"""Crashes: a run killed with SIGKILL resumes from its last checkpoint and ends with exactly the metrics of an
uninterrupted run; `resume_dir` and `ckpt_path` resolution; a multirun goes on past a failing job.

Seeded reproducibility without a crash: test_train.py::test_same_seed_same_metrics."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from sdr_lightning.errors import ConfigError
from sdr_lightning.tasks.launch import resume_arguments
from sdr_lightning.tasks.train import train
from tests.helpers import ROOT

# CNN with a waveform augmentation: shuffling, noise and dropout all draw from the random generators.
RUN = ["model=cnn", "augment=noise", "debug=limit", "trainer.max_epochs=10", "trainer.deterministic=true",
       "data.batch_size=16", "seed=4", "logger=csv", "report.splits=[]", "trainer.enable_progress_bar=false",
       "trainer.enable_model_summary=false", "trainer.accelerator=cpu"]
COMPARED = ["val/acc", "val/loss", "val/f1_macro", "test/acc", "test/loss", "test/f1_macro", "epochs"]


def start_training(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`python train.py args` in the background; stderr to a file (a pipe nobody reads could fill and block it)."""
    with log.open("w") as stderr:
        return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr, text=True)


def finish(process: subprocess.Popen, log: Path) -> str:
    process.wait(timeout=300)
    assert process.returncode == 0, log.read_text()[-3000:]
    return log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["data.augment_bank=2", "data.group_by_length=2"]], ids=["plain", "grouped"])
def test_sigkilled_run_resumes_to_the_same_metrics(synthetic_data: Path, tmp_path: Path, extra: list[str]) -> None:
    """`grouped`: a bank and length-grouped batches, whose sampler draws the order and the copies by epoch."""
    env = {**os.environ, "SDR_DATA_DIR": str(synthetic_data), "SDR_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    # side by side: saves time
    uninterrupted = start_training([*RUN, *extra, f"hydra.run.dir={full}"], env, tmp_path / "full.log")
    process = start_training([*RUN, *extra, f"hydra.run.dir={killed}"], env, tmp_path / "killed.log")
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "metrics.json").exists()
    state = torch.load(last, weights_only=True, map_location="cpu")  # checkpoints stay weights_only-loadable
    assert state["epoch"] < 9 and any("RngStateCheckpoint" in key for key in state["callbacks"])

    finish(uninterrupted, tmp_path / "full.log")
    log = finish(start_training([f"resume_dir={killed}"], env, tmp_path / "resumed.log"), tmp_path / "resumed.log")
    # Lightning logs to stderr, or to the run's train.log when Hydra's logging was set up before it was imported
    assert f"Restoring states from the checkpoint path at {last}" in log + (killed / "train.log").read_text()
    resumed = json.loads((killed / "metrics.json").read_text())
    expected = json.loads((full / "metrics.json").read_text())
    assert {k: resumed[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
    assert Path(resumed["best_checkpoint"]).name == Path(expected["best_checkpoint"]).name


def test_resume_arguments_replay_the_runs_overrides(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "2026-01-01_00-00-00_cnn"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- model=cnn\n- seed=3\n- ckpt_path=old.ckpt\n")
    argv = resume_arguments(["train.py", f"resume_dir={run_dir}", "seed=5", "trainer.enable_progress_bar=false"])
    assert argv == ["train.py", "model=cnn", "seed=5", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}",
                    "ckpt_path=last"]
    assert resume_arguments(["train.py", "model=vit"]) == ["train.py", "model=vit"]
    with pytest.raises(ConfigError, match=r"overrides.yaml not found"):
        resume_arguments(["train.py", f"resume_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="without -m"):
        resume_arguments(["train.py", "-m", f"resume_dir={run_dir}"])


def test_missing_checkpoint_file_is_one_error(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"ckpt_path=/nowhere/last.ckpt: no such checkpoint file"):
        train(make_cfg("model=linear", "debug=fast_dev_run", "ckpt_path=/nowhere/last.ckpt"))


def test_last_checkpoint_is_the_newest_epoch_when_dev_stops_improving(make_cfg, tmp_path: Path) -> None:
    # a learning rate of 1e-12: DEV never improves after the first epoch, so the best checkpoint stays epoch 0.
    # Lightning's own save_last (2.6) would have left last.ckpt there too, and a resume would redo every later epoch.
    train(make_cfg("model=linear", "debug=limit", "trainer.max_epochs=3", "model.optimizer.lr=1e-12",
                   "model.scheduler=null"))
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["epoch_000.ckpt", "last.ckpt"]
    last = torch.load(folder / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["epoch"] == 2
    best = [state for key, state in last["callbacks"].items() if "val/acc" in key]
    assert len(best) == 1 and Path(best[0]["best_model_path"]).name == "epoch_000.ckpt"
    assert Path(json.loads((tmp_path / "metrics.json").read_text())["best_checkpoint"]).name == "epoch_000.ckpt"


def test_ckpt_path_last_continues_this_runs_directory(make_cfg, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    # no one-cycle schedule: its length is fixed by the first run, so it cannot be extended to more epochs
    short = ("model=linear", "debug=limit", "model.scheduler=null")
    train(make_cfg(*short, "trainer.max_epochs=1"))
    lightning = logging.getLogger("pytorch_lightning")  # it may not propagate to the root logger caplog watches
    lightning.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="pytorch_lightning"):
            train(make_cfg(*short, "trainer.max_epochs=2", "ckpt_path=last"))
    finally:
        lightning.removeHandler(caplog.handler)
    assert f"Restoring states from the checkpoint path at {tmp_path / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_multirun_reports_failed_jobs_and_runs_the_others(synthetic_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SDR_DATA_DIR": str(synthetic_data), "SDR_LOG_DIR": str(tmp_path),
           "SDR_CACHE_DIR": str(tmp_path / "cache")}
    # fold 99 fails with our DataError, the callback that raises stands for a bug: 3 of the 4 jobs fail
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "data=loso", "data.fold=99,0",
         "+callbacks.bug._target_=tests.tasks.test_resume.RaisesAtTrainStart,pytorch_lightning.Callback",
         "model=linear", "debug=limit", "data.batch_size=16", "report.splits=[]", "logger=csv",
         "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    jobs = {p.name.split("_")[0]: p for p in tmp_path.glob("multirun/*/*_*")}
    assert sorted(jobs) == ["0", "1", "2", "3"]
    assert (jobs["3"] / "metrics.json").is_file()  # the job after the failures still ran
    assert sorted(n for n, job in jobs.items() if (job / "error.txt").is_file()) == ["0", "1", "2"]
    assert "3 of 4 jobs failed" in result.stderr
    assert f"{jobs['1']}: error: data.fold=99 is out of range" in result.stderr
    assert f"{jobs['2']}: RuntimeError: a bug in a callback" in result.stderr
    assert "Traceback" not in (jobs["1"] / "error.txt").read_text()  # our errors: the message alone
    assert "Traceback" in (jobs["2"] / "error.txt").read_text()  # anything else: the traceback, for debugging


class RaisesAtTrainStart(pl.Callback):
    """A stand-in for a bug: an exception that is not one of ours."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise RuntimeError("a bug in a callback")
