"""`trainer=ddp` on CPU with 2 processes (gloo): each rank gets its own share of every split, the synced
DEV/TEST figures equal a single-process evaluation of the same weights, and one set of outputs is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from tests.helpers import ROOT

# subprocesses, DDP ranks, Optuna trials or exporters: the slow tier (pytest -m slow)
pytestmark = pytest.mark.slow


class BatchIndexRecorder(pl.Callback):
    """Test instrument, added with `+callbacks.indices=...`: the clip indices of every batch each rank sees, per
    trainer call and stage, written to <folder>/rank<r>.json at the end of each call."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.seen: dict[str, list[int]] = defaultdict(list)

    def _record(self, trainer: pl.Trainer, stage: str, batch: dict[str, torch.Tensor]) -> None:
        key = f"{trainer.state.fn.value}/{stage}"
        if trainer.state.fn.value == "fit":
            key += f"/epoch{trainer.current_epoch}"
        self.seen[key] += batch["index"].tolist()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._record(trainer, "train", batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, "validate", batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._record(trainer, "test", batch)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


def sweep_env(synthetic_data: Path, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SDR_DATA_DIR": str(synthetic_data), "SDR_LOG_DIR": str(tmp_path),
            "SDR_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def ddp_run(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny CNN run under DDP, 2 CPU ranks. eval_batch_size 5 splits TEST's 21 clips 11/10 between the ranks:
    3 and 2 batches, and a padded DistributedSampler would have repeated a clip."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    indices = tmp_path / "indices"
    result = subprocess.run(
        [sys.executable, "train.py", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "model=cnn",
         "seed=3", "trainer.max_epochs=2", "+trainer.limit_train_batches=2", "data.batch_size=8",
         "data.eval_batch_size=5", "report.projector=false", "report.misclassified_audio=0", *QUIET,
         # the best on DEV (model=cnn keeps its last epoch by default): the synced DEV accuracy chooses the checkpoint
         "callbacks.model_checkpoint.monitor=val/acc",
         "+callbacks.indices._target_=tests.tasks.test_ddp.BatchIndexRecorder", f"+callbacks.indices.folder={indices}"],
        cwd=ROOT, env=sweep_env(synthetic_data, tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # the child rank writes into the parent's run directory, not a new one
    seen = {rank: json.loads((indices / f"rank{rank}.json").read_text()) for rank in (0, 1)}
    return {"run": runs[0], "seen": seen, "stdout": result.stdout}


def test_each_rank_gets_its_own_share_of_every_split(ddp_run: dict[str, Any]) -> None:
    seen = ddp_run["seen"]
    for epoch in (0, 1):  # TRAIN: DistributedSampler, 2 batches of 8 per rank (per-device batch size), no overlap
        key = f"fit/train/epoch{epoch}"
        assert len(seen[0][key]) == len(seen[1][key]) == 16
        assert not set(seen[0][key]) & set(seen[1][key])
    # the final evaluation: every DEV/TEST clip exactly once over both ranks
    for key, total in (("validate/validate", 20), ("test/test", 21)):
        shares = [seen[0][key], seen[1][key]]
        assert sorted(shares[0] + shares[1]) == list(range(total))
        assert abs(len(shares[0]) - len(shares[1])) <= 1
    # validation during fit too (it chooses the checkpoint)
    assert sorted(seen[0]["fit/validate/epoch1"] + seen[1]["fit/validate/epoch1"]) == list(range(20))


def test_ddp_figures_equal_one_process_on_the_same_weights(ddp_run: dict[str, Any], synthetic_data: Path) -> None:
    from sdr_lightning.data.datamodule import SpokenDigitDataModule
    from sdr_lightning.models import DigitClassifier

    metrics = json.loads((ddp_run["run"] / "metrics.json").read_text())
    model = DigitClassifier.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu")
    datamodule = SpokenDigitDataModule(dir=str(synthetic_data), batch_size=8, eval_batch_size=5)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    single = {**trainer.validate(model, datamodule=datamodule, verbose=False)[0],
              **trainer.test(model, datamodule=datamodule, verbose=False)[0]}
    for key in ("val/acc", "val/f1_macro", "val/loss", "test/acc", "test/f1_macro", "test/loss"):
        assert metrics[key] == pytest.approx(single[key], abs=1e-6), key
    # the synced DEV accuracy during training chose the checkpoint: its score is the same figure
    state = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    score = next(v["best_model_score"] for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert float(score) == pytest.approx(metrics["val/acc"], abs=1e-6)
    # the per-split reports (rank 0, no sampler) agree as well
    for split in ("dev", "test"):
        summary = json.loads((ddp_run["run"] / "reports" / split / "summary.json").read_text())
        assert summary["accuracy"] == pytest.approx(metrics[f"{'val' if split == 'dev' else 'test'}/acc"], abs=1e-6)


def test_ddp_writes_one_set_of_outputs(ddp_run: dict[str, Any]) -> None:
    run = ddp_run["run"]
    assert (run / ".hydra" / "config.yaml").is_file()
    assert not list(run.glob(".pl_hydra*"))  # the child rank saves no config of its own
    assert (run / "train_ddp_process_1.log").is_file()  # rank 1 did run, with its own log
    assert sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))[-1] == "last.ckpt"
    assert len(list((run / "checkpoints").glob("*.ckpt"))) == 2  # best + last, once
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len({name.name.rsplit(".", 2)[-2] for name in events}) == 1  # one writing process (pid in the name)
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(run / "tensorboard"))
    multiplexer.Reload()
    scalars = set(multiplexer.Runs()["."]["scalars"])
    assert {"val/acc", "val/acc_best", "train/loss", "hp/test_acc"} <= scalars
    assert len(multiplexer.Scalars(".", "val/acc")) == 2  # one point per epoch, not one per rank
    assert (run / "reports" / "test" / "predictions.csv").is_file()
    assert ddp_run["stdout"].count("run directory:") == 1  # the summary is printed by rank 0 only


def test_ddp_inside_a_multirun_is_refused(make_cfg) -> None:
    """Lightning's DDP re-runs the command line for ranks 1..; in a multirun that would be the whole sweep."""
    from sdr_lightning.errors import ConfigError
    from sdr_lightning.tasks.train import build

    cfg = make_cfg("trainer=ddp", "trainer.devices=2", "model=linear", "hydra.mode=MULTIRUN")
    with pytest.raises(ConfigError, match="cannot run inside a multirun"):
        build(cfg)  # before any process is started
    build(make_cfg("trainer=ddp", "trainer.devices=2", "model=linear"))  # a single run is fine
    with pytest.raises(ConfigError, match="ddp_spawn .* is not supported"):  # it would train in throwaway processes
        build(make_cfg("trainer=ddp", "trainer.devices=2", "trainer.strategy=ddp_spawn", "model=linear"))


def test_length_grouped_batches_under_ddp(synthetic_data: Path, tmp_path: Path) -> None:
    """data.group_by_length under DDP: Lightning wraps the sampler, each rank takes every other clip of its order;
    the ranks' shares stay disjoint and each epoch is drawn anew."""
    indices = tmp_path / "indices"
    result = subprocess.run(
        [sys.executable, "train.py", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "model=cnn",
         "model.encoder.channels=16", "seed=3", "trainer.max_epochs=2", "data.batch_size=4", "data.group_by_length=2",
         "test=false", "report.projector=false", "report.misclassified_audio=0", *QUIET,
         "+callbacks.indices._target_=tests.tasks.test_ddp.BatchIndexRecorder", f"+callbacks.indices.folder={indices}"],
        cwd=ROOT, env=sweep_env(synthetic_data, tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    seen = [json.loads((indices / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    epochs = [[seen[rank][f"fit/train/epoch{epoch}"] for rank in (0, 1)] for epoch in (0, 1)]
    for shares in epochs:
        assert len(shares[0]) == len(shares[1]) > 0
        assert not set(shares[0]) & set(shares[1])
    assert epochs[0][0] != epochs[1][0]
