"""A checkpoint on disk is always complete: AtomicCheckpointIO writes beside the target and renames, so a failed save
(a full disk) keeps the previous checkpoint and stops the run with one error naming the path and the free space; a
truncated checkpoint is refused at resume with a pointer to the newest one that loads. The clean finish and the
moving average of the weights (callbacks=ema)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sdr_lightning.files as files_module
from sdr_lightning.errors import ConfigError
from sdr_lightning.tasks.callbacks import AtomicCheckpointIO, CheckpointSaveError
from sdr_lightning.tasks.checkpoint import read_checkpoint
from sdr_lightning.tasks.train import train
from tests.helpers import ROOT


def state(value: float) -> dict:
    return {"state_dict": {"w": torch.full((1000,), value)}, "epoch": int(value)}


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    writer.save_checkpoint(state(1.0), path)
    before = path.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files_module.os, "fsync", disk_full)  # the data went out, the disk refused to keep it
    with pytest.raises(CheckpointSaveError) as raised:
        writer.save_checkpoint(state(2.0), path)
    message = str(raised.value)
    assert str(path) in message and "free there" in message and "No space left on device" in message
    assert "the previous one is intact" in message and "resume_dir=" in message
    assert path.read_bytes() == before  # the last good checkpoint survived
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind
    monkeypatch.undo()
    writer.save_checkpoint(state(3.0), path)
    assert read_checkpoint(path)["epoch"] == 3


def test_checkpoint_mode_follows_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint(state(1.0), tmp_path / "a.ckpt")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == 0o644  # mkstemp alone would make it 0600


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_resuming_from_a_truncated_checkpoint_names_the_newest_that_loads(make_cfg, tmp_path: Path) -> None:
    every_epoch = ("model=linear", "debug=limit", "callbacks.model_checkpoint.save_top_k=-1")
    train(make_cfg(*every_epoch))
    folder = tmp_path / "checkpoints"
    truncate(folder / "last.ckpt")  # what a full disk left behind with Lightning's own writer
    for ckpt_path in ("last", str(folder / "last.ckpt")):
        with pytest.raises(ConfigError) as raised:
            train(make_cfg(*every_epoch, f"ckpt_path={ckpt_path}"))
        message = str(raised.value)
        assert message.startswith(f"cannot resume: {folder / 'last.ckpt'}: cannot read it as a checkpoint")
        assert f"ckpt_path={folder / 'epoch_001.ckpt'}" in message  # the newest whole one
    (folder / "last.ckpt").unlink()
    with pytest.raises(ConfigError, match=r"has no last.ckpt .*epoch_001.ckpt"):
        train(make_cfg(*every_epoch, "ckpt_path=last"))
    for checkpoint in folder.glob("*.ckpt"):
        truncate(checkpoint)
    with pytest.raises(ConfigError, match="No other checkpoint .* loads: train afresh"):
        train(make_cfg(*every_epoch, f"ckpt_path={folder / 'epoch_001.ckpt'}"))


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 200 KiB file system of its own (tmpfs; needs root), as in the report: the run folder on another disk than
    the temporary folder, and that disk fills."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()}); the unit test above covers it")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_keeps_every_checkpoint_whole(tiny_disk: Path, synthetic_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SDR_DATA_DIR": str(synthetic_data), "SDR_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    run = tiny_disk / "run"
    result = subprocess.run(
        [sys.executable, "train.py", "model=linear", "trainer.max_epochs=6", "data.batch_size=16",
         f"hydra.run.dir={run}", "callbacks.model_checkpoint.save_top_k=-1", "trainer.enable_progress_bar=false",
         "report.projector=false", "report.misclassified_audio=0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: cannot save the checkpoint") and "free there" in last_line, last_line
    assert "Traceback" not in result.stderr
    saved = sorted((run / "checkpoints").glob("*.ckpt"))
    assert saved and not list((run / "checkpoints").glob(".*.tmp"))
    for checkpoint in saved:
        read_checkpoint(checkpoint)  # every checkpoint on disk is whole


def test_clean_finish_trains_the_last_epochs_on_clean_clips(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdr_lightning.data.datamodule import ClipDataset

    drawn: list[tuple[bool, bool]] = []  # per TRAIN batch: (clean_only, any augmented copy served)
    original = ClipDataset.__getitems__

    def spy(self, indices):
        batch = original(self, indices)
        if self.copies:
            drawn.append((self.clean_only, bool(batch["augmented"].any())))
        return batch

    monkeypatch.setattr(ClipDataset, "__getitems__", spy)
    cfg = make_cfg("experiment=robust_cnn_clean", "debug=limit", "trainer.max_epochs=3",
                   "callbacks.clean_finish.epochs=1", "data.augment_bank=2", "model.encoder.channels=8", "logger=csv",
                   "report.splits=[]")
    train(cfg)
    assert drawn and [clean for clean, _ in drawn] == sorted(clean for clean, _ in drawn)  # robust, then clean
    assert any(augmented for clean, augmented in drawn if not clean)
    assert any(clean for clean, _ in drawn) and not any(augmented for clean, augmented in drawn if clean)
    with pytest.raises(ConfigError, match="callbacks.clean_finish.epochs=-1"):
        train(make_cfg("experiment=robust_cnn_clean", "debug=limit", "callbacks.clean_finish.epochs=-1"))


def test_robust_cnn_speakers_shifts_voices_both_ways_and_reports_the_last_epoch(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("experiment=robust_cnn_speakers", "debug=limit", "trainer.max_epochs=3",
                   "callbacks.clean_finish.epochs=1", "data.augment_bank=2", "model.encoder.channels=8", "logger=csv",
                   "report.splits=[]", "test=false", "model.optimizer.lr=1e-12")  # DEV best at epoch 0
    voice = cfg.model.augment.waveform.voice
    assert min(voice.semitones) < 0 < max(voice.semitones)
    assert min(voice.formant_factors) < 1 < max(voice.formant_factors)
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert Path(metrics["best_checkpoint"]).name == "epoch_002.ckpt"  # the last of 3, whatever DEV said
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt")) == ["epoch_002.ckpt", "last.ckpt"]


def test_robust_vit_clean_reports_the_last_epoch(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("experiment=robust_vit_clean", "debug=limit", "trainer.max_epochs=3",
                   "callbacks.clean_finish.epochs=1", "data.augment_bank=2", "model.encoder.dim=16",
                   "model.encoder.depth=1", "model.encoder.heads=2", "model.encoder.mlp_dim=16", "logger=csv",
                   "report.splits=[]", "test=false", "model.optimizer.lr=1e-12")  # DEV best at epoch 0
    assert cfg.callbacks.model_checkpoint.monitor is None  # twenty-fifth round: the last epoch, not DEV's best
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert Path(metrics["best_checkpoint"]).name == "epoch_002.ckpt"  # the last of 3, whatever DEV said


def test_the_default_cnn_reports_its_last_epoch_and_the_tuned_presets_the_best_on_dev(make_cfg, tmp_path: Path,
                                                                                    capsys) -> None:
    """Twenty-sixth round: `python train.py` (model=cnn) keeps its last epoch; the presets tuned and reported with the
    best on DEV keep it."""
    for preset in ("experiment=best_cnn", "experiment=cnn_ensemble", "experiment=loso_cnn", "experiment=study_cnn",
                   "experiment=study_cnn_george", "hparams_search=cnn_optuna", "model=vit", "model=bcresnet"):
        assert make_cfg(preset).callbacks.model_checkpoint.monitor == "val/acc", preset
    assert make_cfg("model=cnn", "callbacks.model_checkpoint.monitor=val/acc").callbacks.model_checkpoint.monitor
    cfg = make_cfg("debug=limit", "trainer.max_epochs=3", "model.encoder.channels=8", "logger=csv",
                   "report.splits=[]", "test=false", "model.optimizer.lr=1e-12")  # DEV best at epoch 0
    assert cfg.callbacks.model_checkpoint.monitor is None
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert Path(metrics["best_checkpoint"]).name == "epoch_002.ckpt"  # the last of 3, whatever DEV said
    assert f"checkpoint: {metrics['best_checkpoint']} (the last epoch)" in capsys.readouterr().out

def test_robust_cnn_voices_trains_on_the_espeak_voices_and_says_how_to_build_them(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("experiment=robust_cnn_voices", "debug=fast_dev_run")
    assert cfg.data.synthetic_voices == ".voices/train"  # the train set of data/voices.py, never its eval set
    assert cfg.model.augment.waveform.voice.p == 0.5
    assert min(cfg.model.augment.waveform.voice.semitones) < 0  # robust_cnn_speakers' shift both ways, kept
    assert cfg.callbacks.model_checkpoint.monitor is None
    assert cfg.model.encoder.fast_dropout  # the fourteenth round's cheaper dropout masks
    assert cfg.model.augment.waveform.noise.p == 0.4 and cfg.model.featurizer.top_db == 50  # sixteenth round
    missing = tmp_path / "no_voices"
    says_how = rf"data.synthetic_voices={missing}: .*python -m sdr_lightning.data.voices --out"
    with pytest.raises(ConfigError, match=says_how):
        train(make_cfg("experiment=robust_cnn_voices", "debug=fast_dev_run", f"data.synthetic_voices={missing}"))


def test_weight_ema_checkpoints_the_average_and_resumes_exactly(make_cfg, tmp_path: Path) -> None:
    every_epoch = ("model=cnn", "model.encoder.channels=8", "debug=limit", "trainer.max_epochs=3", "callbacks=ema",
                   "callbacks.ema.decay=0.5", "callbacks.model_checkpoint.save_top_k=-1", "trainer.deterministic=true",
                   "logger=csv", "report.splits=[]")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(make_cfg(*every_epoch, f"paths.output_dir={full}"))
    first = torch.load(full / "checkpoints" / "epoch_000.ckpt", weights_only=True)
    average, raw = first["state_dict"], first["current_model_state"]
    assert average.keys() == raw.keys() and int(first["averaging_state"]["n_averaged"]) > 1
    assert any(not torch.equal(average[k], raw[k]) for k in average)  # the checkpoint's weights are the average
    # resumed after its first epoch, a run ends where the uninterrupted one did: the average came back too
    train(make_cfg(*every_epoch, f"paths.output_dir={resumed}", f"ckpt_path={full / 'checkpoints' / 'epoch_000.ckpt'}"))
    got = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    want = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    for weights in ("state_dict", "current_model_state"):
        assert all(torch.equal(got[weights][k], want[weights][k]) for k in want[weights]), weights
    with pytest.raises(ConfigError, match=r"callbacks.ema.decay=1.5"):
        train(make_cfg("debug=limit", "callbacks=ema", "callbacks.ema.decay=1.5"))


def test_weight_swa_averages_only_the_last_epochs_and_resumes_exactly(make_cfg, tmp_path: Path) -> None:
    every_epoch = ("model=cnn", "model.encoder.channels=8", "debug=limit", "trainer.max_epochs=3", "callbacks=swa",
                   "callbacks.swa.epochs=2", "callbacks.model_checkpoint.save_top_k=-1", "trainer.deterministic=true",
                   "logger=csv", "report.splits=[]")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(make_cfg(*every_epoch, f"paths.output_dir={full}"))
    first = torch.load(full / "checkpoints" / "epoch_000.ckpt", weights_only=True)
    assert "current_model_state" not in first  # before the last two epochs: the raw weights, no average yet
    second = torch.load(full / "checkpoints" / "epoch_001.ckpt", weights_only=True)
    last = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    steps_per_epoch = first["global_step"]
    assert int(second["averaging_state"]["n_averaged"]) == steps_per_epoch  # every step of epoch 1
    assert int(last["averaging_state"]["n_averaged"]) == 2 * steps_per_epoch  # and of epoch 2: equal weights
    average, raw = last["state_dict"], last["current_model_state"]
    assert any(not torch.equal(average[k], raw[k]) for k in average)  # the checkpoint's weights are the average
    # resumed after its second epoch (averaging under way), a run ends where the uninterrupted one did
    train(make_cfg(*every_epoch, f"paths.output_dir={resumed}", f"ckpt_path={full / 'checkpoints' / 'epoch_001.ckpt'}"))
    got = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    for weights in ("state_dict", "current_model_state"):
        assert all(torch.equal(got[weights][k], last[weights][k]) for k in last[weights]), weights
    with pytest.raises(ConfigError, match=r"callbacks.swa.epochs=0"):
        train(make_cfg("debug=limit", "callbacks=swa", "callbacks.swa.epochs=0"))
