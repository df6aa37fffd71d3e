import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from sdr_lightning.analysis.predictions import read_predictions
from sdr_lightning.errors import ConfigError, DataError
from sdr_lightning.tasks.evaluate import evaluate
from sdr_lightning.tasks.train import train
from tests.helpers import ROOT, compose, write_synthetic_dataset


def train_run(make_cfg, run_dir: Path, *overrides: str) -> dict:
    """A short training run, with the saved config a real `python train.py` leaves in <run>/.hydra."""
    cfg = make_cfg(*overrides, "debug=limit")
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    train(cfg)
    return json.loads((run_dir / "metrics.json").read_text())


def tensorboard_tags(log_dir: Path) -> dict:
    events = EventMultiplexer()
    events.AddRunsFromDirectory(str(log_dir))
    events.Reload()
    return events.Runs()["."]


def test_training_writes_reports_and_tensorboard_figures(make_cfg, tmp_path: Path) -> None:
    metrics = train_run(make_cfg, tmp_path, "model=cnn")
    for split, key in (("dev", "val/acc"), ("test", "test/acc")):
        folder = tmp_path / "reports" / split
        assert {"predictions.csv", "confusion_matrix.csv", "confusion_matrix.png", "per_class.csv"} <= {
            p.name for p in folder.iterdir()}
        predictions = read_predictions(folder / "predictions.csv")
        # the report is of the same (best) weights the trainer evaluated
        assert predictions.accuracy == pytest.approx(metrics[key], abs=1e-6)
    tags = tensorboard_tags(tmp_path / "tensorboard")
    assert {"confusion_matrix/dev", "confusion_matrix/test"} <= set(tags["images"])
    mistakes = (~read_predictions(tmp_path / "reports" / "test" / "predictions.csv").correct).sum()
    audio = [t for t in tags["audio"] if t.startswith("misclassified_test/")]
    assert len(audio) == min(8, mistakes)
    if audio:
        assert "true_" in audio[0] and "_predicted_" in audio[0]
    projector = (tmp_path / "tensorboard" / "projector_config.pbtxt").read_text()
    assert all(f"{split}_{space}" in projector for split in ("dev", "test") for space in ("encoder", "mel"))


@pytest.mark.parametrize("model", ["model=cnn", "model=simclr", "callbacks=ema", "callbacks=swa"])
def test_eval_reproduces_training_figures(make_cfg, synthetic_data: Path, tmp_path: Path, model: str) -> None:
    run_dir = tmp_path / "run"
    # callbacks=ema: a fast average (decay 0.5) that differs clearly from the raw weights after a few steps
    extra = ["callbacks.ema.decay=0.5"] if model == "callbacks=ema" else []
    metrics = train_run(lambda *o: make_cfg(*o, f"paths.output_dir={run_dir}"), run_dir, model, *extra,
                        "report.projector=false", "report.misclassified_audio=0")
    out = tmp_path / "eval"
    cfg = compose(out, [f"ckpt_path={metrics['best_checkpoint']}", f"data_dir={synthetic_data}",
                        f"output_dir={out}", "report.embeddings=[tsne]"], config_name="eval")
    summary = evaluate(cfg)
    assert summary["dev"]["accuracy"] == pytest.approx(metrics["val/acc"], abs=1e-6)
    assert summary["test"]["accuracy"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert (out / "test" / "embeddings" / "encoder_tsne.png").is_file()
    assert (out / "test" / "embeddings" / "mel_tsne.png").is_file()
    assert json.loads((out / "eval_metrics.json").read_text())["splits"]["test"]["clips"] == summary["test"]["clips"]
    for split in ("dev", "test"):  # the training run's reports are of the very weights eval.py loads
        trained = read_predictions(run_dir / "reports" / split / "predictions.csv").probabilities
        assert trained == pytest.approx(read_predictions(out / split / "predictions.csv").probabilities, abs=1e-5)


def test_eval_on_named_speakers(make_cfg, synthetic_data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    metrics = train_run(lambda *o: make_cfg(*o, f"paths.output_dir={run_dir}"), run_dir, "model=linear")
    out = tmp_path / "eval"
    cfg = compose(out, [f"ckpt_path={metrics['best_checkpoint']}", f"data_dir={synthetic_data}",
                        f"output_dir={out}", "speakers=[lucas]", "report.embeddings=[]"], config_name="eval")
    summary = evaluate(cfg)
    assert list(summary) == ["lucas"] and summary["lucas"]["clips"] == 21
    assert set(read_predictions(out / "lucas" / "predictions.csv").speakers) == {"lucas"}


def test_eval_without_the_run_config_says_what_to_do(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    cfg = compose(tmp_path / "eval", [f"ckpt_path={ckpt}"], config_name="eval")
    with pytest.raises(ConfigError, match=r"config.yaml not found.*run_dir="):
        evaluate(cfg)
    cfg = compose(tmp_path / "eval", [f"ckpt_path={tmp_path}/nope.ckpt"], config_name="eval")
    with pytest.raises(ConfigError, match="no such checkpoint"):
        evaluate(cfg)


@pytest.mark.slow
def test_eval_script_reports_missing_checkpoint_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "eval.py", f"ckpt_path={tmp_path}/missing.ckpt"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "no such checkpoint" in result.stderr and "Traceback" not in result.stderr


def corrupt_run(cnn_run: dict, folder: Path, content: bytes) -> Path:
    """A run folder whose checkpoint is `content` (empty, or text renamed .ckpt) beside a good run config."""
    source = Path(cnn_run["best_checkpoint"]).parent.parent
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / ".hydra", folder / ".hydra")
    ckpt = folder / "checkpoints" / "broken.ckpt"
    ckpt.write_bytes(content)
    return ckpt


@pytest.mark.parametrize("content", [b"", b"these are notes, not a checkpoint\n"], ids=["empty", "text"])
def test_a_corrupt_checkpoint_is_one_error_in_eval_predict_and_export(cnn_run: dict, tmp_path: Path,
                                                                    content: bytes) -> None:
    from sdr_lightning.tasks.export import export
    from sdr_lightning.tasks.predict import predict

    ckpt = corrupt_run(cnn_run, tmp_path / "run", content)
    commands = [(evaluate, "eval", []), (predict, "predict", ["audio=x.wav"]), (export, "export", [])]
    for command, config, extra in commands:
        cfg = compose(tmp_path / "out", [f"ckpt_path={ckpt}", *extra], config_name=config)
        refused = r"broken.ckpt: cannot read it as a checkpoint \((the file is empty|not a whole)"
        with pytest.raises(ConfigError, match=refused):
            command(cfg)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".hydra", "checkpoints"]  # no eval/, export/


def test_a_failed_eval_leaves_no_folder(cnn_run: dict, tmp_path: Path) -> None:
    """The checkpoint loads but the clips are not there: nothing is written into the run."""
    run = tmp_path / "run"
    shutil.copytree(Path(cnn_run["best_checkpoint"]).parent.parent, run, ignore=shutil.ignore_patterns("eval"))
    cfg = compose(tmp_path / "out", [f"ckpt_path={run / 'checkpoints' / Path(cnn_run['best_checkpoint']).name}",
                                     f"data_dir={tmp_path / 'nowhere'}", "report.embeddings=[]"], config_name="eval")
    with pytest.raises(DataError, match="nowhere"):
        evaluate(cfg)
    assert not (run / "eval").exists()


@pytest.mark.slow
def test_eval_script_on_an_empty_checkpoint_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """`: > empty.ckpt; python eval.py ckpt_path=empty.ckpt` crashed with IndexError and made ../eval/<time>."""
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    (cwd / "empty.ckpt").write_bytes(b"")
    result = subprocess.run([sys.executable, str(ROOT / "eval.py"), "ckpt_path=empty.ckpt"], cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "empty.ckpt"]  # no eval/ anywhere


def test_eval_reports_the_robustness_suite_and_other_sets(cnn_run: dict, synthetic_data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from sdr_lightning.data import conditions

    monkeypatch.setitem(conditions.SUITES, "small", ["white_10db", "telephone", "woman_voice"])
    other = write_synthetic_dataset(tmp_path / "elsewhere", takes=1, seed=5)  # a set laid out like FSDD's
    out = tmp_path / "eval"
    cfg = compose(out, [f"ckpt_path={cnn_run['best_checkpoint']}", f"data_dir={synthetic_data}", f"output_dir={out}",
                        "suite=small", f"sets.espeak={other}", "report.embeddings=[]"], config_name="eval")
    summary = evaluate(cfg)
    for split in ("dev", "test"):
        rows = list(csv.DictReader((out / split / "robustness.csv").open()))
        assert [r["condition"] for r in rows] == ["white_10db", "telephone", "woman_voice", "mean"]
        figures = summary[split]["robustness"]
        assert figures["mean"] == pytest.approx(sum(figures[k] for k in ("white_10db", "telephone",
                                                                          "woman_voice")) / 3)
        assert json.loads((out / split / "robustness.json").read_text())["accuracy"] == figures
    assert summary["espeak"]["clips"] == 61 and (out / "espeak" / "predictions.csv").is_file()
    scalars = tensorboard_tags(out / "tensorboard")["scalars"]
    assert {"robustness_test/telephone", "robustness_test/mean", "robustness_dev/mean"} <= set(scalars)


def test_training_with_report_suite_puts_it_in_metrics_and_compare(make_cfg, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from sdr_lightning.analysis.compare import compare
    from sdr_lightning.data import conditions

    monkeypatch.setitem(conditions.SUITES, "small", ["quiet", "clipped"])
    run = tmp_path / "sweep" / "0_model-linear"
    train_run(lambda *o: make_cfg(*o, f"paths.output_dir={run}"), run, "model=linear", "report.suite=small",
              "report.projector=false")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["robust/test_mean"] == pytest.approx((metrics["robust/test_quiet"]
                                                         + metrics["robust/test_clipped"]) / 2)
    assert "robust/dev_mean" in metrics
    text = compare(tmp_path / "sweep", tmp_path / "table", resamples=100)
    assert "TEST robust mean" in text and f"{metrics['robust/test_mean']:.4f}" in text
