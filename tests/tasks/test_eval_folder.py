"""eval.py audio_dir=: a folder of the user's own labelled clips evaluated as one report, with the same report files
as DEV/TEST, its left-out files listed; train.py data=folder with the folder as extra TRAIN or EXTRA clips."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import sdr_lightning.data.cache as cache_module
from sdr_lightning.analysis.predictions import read_predictions
from sdr_lightning.errors import ConfigError, DataError
from sdr_lightning.tasks.evaluate import evaluate
from sdr_lightning.tasks.train import train
from tests.data.test_folder import write_bad, write_clips
from tests.helpers import ROOT, compose

REPORT_FILES = {"predictions.csv", "confusion_matrix.csv", "confusion_matrix.png", "per_class.csv", "per_speaker.csv",
                "summary.json"}


@pytest.fixture(autouse=True)
def empty_memory_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "_MEMORY", {})


def eval_cfg(out: Path, cnn_run: dict, synthetic_data: Path, *overrides: str):
    cfg = compose(out, [f"ckpt_path={cnn_run['best_checkpoint']}", f"data_dir={synthetic_data}", f"output_dir={out}",
                        "report.embeddings=[]", "report.projector=false", *overrides], config_name="eval")
    GlobalHydra.instance().clear()
    return cfg


def test_eval_audio_dir_writes_the_reports(cnn_run: dict, synthetic_data: Path, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    folder = write_clips(tmp_path / "my_clips", [f"{d}_{who}_0.wav" for d in range(10) for who in ("ann", "bob")])
    why = write_bad(folder)
    out = tmp_path / "eval"
    with caplog.at_level(logging.WARNING):
        summary = evaluate(eval_cfg(out, cnn_run, synthetic_data, f"audio_dir={folder}"))
    assert list(summary) == ["my_clips"]  # replaces DEV/TEST
    report = out / "my_clips"
    assert REPORT_FILES <= {p.name for p in report.iterdir()}
    predictions = read_predictions(report / "predictions.csv")
    assert sorted(predictions.identifiers) == sorted(f"my_clips/{d}_{who}_0" for d in range(10) for who in ("ann",
                                                                                                           "bob"))
    assert summary["my_clips"]["clips"] == 20
    assert summary["my_clips"]["accuracy"] == pytest.approx(predictions.accuracy, abs=1e-6)
    with (report / "per_speaker.csv").open() as handle:
        rows = {row["speaker"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"ann", "bob"} and all(int(r["clips"]) == 10 for r in rows.values())
    for speaker, row in rows.items():
        mine = [ok for ok, s in zip(predictions.correct, predictions.speakers) if s == speaker]
        assert float(row["accuracy"]) == pytest.approx(sum(mine) / len(mine), abs=1e-6)
    written = json.loads((out / "eval_metrics.json").read_text())["splits"]["my_clips"]
    assert written["clips"] == 20 and set(written["per_speaker"]) == {"ann", "bob"}
    assert sorted(Path(item["file"]).name for item in written["left_out"]) == sorted(why)
    listed = [r.getMessage() for r in caplog.records if "are left out" in r.getMessage()]
    assert len(listed) == 1 and all(name in listed[0] for name in why)


def test_eval_audio_csv_and_a_heard_speaker(cnn_run: dict, synthetic_data: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    folder = write_clips(tmp_path / "rec", ["a.wav", "b.wav", "c.wav"])
    table = tmp_path / "labels_for_rec.csv"
    table.write_text("file,label,speaker\na.wav,1,george\nb.wav,2,george\nc.wav,3,eve\n")
    out = tmp_path / "eval"
    with caplog.at_level(logging.WARNING):
        summary = evaluate(eval_cfg(out, cnn_run, synthetic_data, f"audio_dir={folder}", f"audio_csv={table}"))
    assert summary["rec"]["clips"] == 3 and summary["rec"]["left_out"] == []
    assert set(read_predictions(out / "rec" / "predictions.csv").speakers) == {"george", "eve"}
    # george was a TRAIN speaker: scored, with the warning speakers= gives
    assert any("['george'] were in this model's training data" in r.getMessage() for r in caplog.records)


def test_eval_audio_dir_errors_leave_no_folder(cnn_run: dict, synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    with pytest.raises(ConfigError, match="audio_dir=.*nowhere: no such folder"):
        evaluate(eval_cfg(out, cnn_run, synthetic_data, f"audio_dir={tmp_path / 'nowhere'}"))
    write_bad(tmp_path / "junk")
    expected = r"(?s)No usable clip in .*junk \(data.extra_eval or eval.py audio_dir\).*\{digit\}_\{speaker\}_\{n\}"
    with pytest.raises(DataError, match=expected):
        evaluate(eval_cfg(out, cnn_run, synthetic_data, f"audio_dir={tmp_path / 'junk'}"))
    with pytest.raises(ConfigError, match="give one of them"):
        evaluate(eval_cfg(out, cnn_run, synthetic_data, f"audio_dir={tmp_path / 'junk'}", "speakers=[lucas]"))
    assert not out.exists()


@pytest.mark.slow
def test_train_with_data_folder(synthetic_data: Path, tmp_path: Path) -> None:
    """data=folder: extra TRAIN clips, and an extra evaluation folder reported after training as its own report."""
    extra_train = write_clips(tmp_path / "extra_train", [f"{d}_ann_{n}.wav" for d in range(10) for n in range(2)])
    extra_eval = write_clips(tmp_path / "my_eval", [f"{d}_bob_0.wav" for d in range(10)])
    run = tmp_path / "run"
    cfg = compose(run, [f"data.dir={synthetic_data}", "data=folder", f"data.extra_train={extra_train}",
                        f"data.extra_eval={extra_eval}", "model=linear", "debug=limit", "logger=csv",
                        "report.projector=false", "report.misclassified_audio=0"])
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    train(cfg)
    GlobalHydra.instance().clear()
    assert REPORT_FILES <= {p.name for p in (run / "reports" / "my_eval").iterdir()}
    trained = json.loads((run / "reports" / "my_eval" / "summary.json").read_text())
    assert trained["clips"] == 10
    assert (run / "reports" / "test" / "per_speaker.csv").is_file()
    # eval.py on the run reports its extra evaluation folder again after DEV/TEST, and under a suite's conditions
    metrics = json.loads((run / "metrics.json").read_text())
    summary = evaluate(eval_cfg(tmp_path / "eval", metrics, synthetic_data, "suite=[white_10db,telephone]"))
    assert list(summary) == ["dev", "test", "my_eval"]
    assert summary["my_eval"]["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-6)
    assert set(summary["my_eval"]["robustness"]) == {"white_10db", "telephone", "mean"}


@pytest.mark.slow
def test_the_commands(cnn_run: dict, synthetic_data: Path, tmp_path: Path) -> None:
    """`python train.py data=folder ... debug=fast_dev_run` and `python eval.py ckpt_path=... audio_dir=...`."""
    lucas = write_clips(tmp_path / "lucas_clips", ["3_lucas_7.wav"])
    env_run = [sys.executable, "train.py", f"data.dir={synthetic_data}", "data=folder", "debug=fast_dev_run",
               "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "model=linear",
               f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    refused = subprocess.run([*env_run, f"data.extra_train={lucas}"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode != 0
    assert "speaker(s) ['lucas'] are also evaluation" in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr
    folder = write_clips(tmp_path / "mine", [f"{d}_ann_0.wav" for d in range(10)])
    done = subprocess.run([*env_run, f"data.extra_train={folder}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    evaluated = subprocess.run([sys.executable, "eval.py", f"ckpt_path={cnn_run['best_checkpoint']}",
                                f"data_dir={synthetic_data}", f"audio_dir={folder}", f"output_dir={tmp_path / 'eval'}",
                                "report.embeddings=[]", "report.projector=false"], cwd=ROOT, capture_output=True,
                               text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "mine: accuracy" in evaluated.stdout and "per speaker: ann" in evaluated.stdout
    assert (tmp_path / "eval" / "mine" / "per_speaker.csv").is_file()
