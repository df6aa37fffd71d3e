"""The speed benchmarks run end to end on the tiny synthetic dataset (their figures are not checked: no timing here)."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.helpers import ROOT

BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = ["feature_extraction", "train_throughput", "time_to_accuracy", "peak_memory"]


@pytest.fixture(autouse=True)
def lightning_log_levels(monkeypatch: pytest.MonkeyPatch):
    """The scripts quiet Lightning's loggers for a clean table; later tests read those logs (caplog)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from _common import QUIET_LOGGERS

    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/<name>.py` does, for `_common`
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load(name, monkeypatch).main(["--help"])
    assert exit_info.value.code == 0
    assert "--repeats" in capsys.readouterr().out


def test_feature_extraction(synthetic_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "features.json"
    load("feature_extraction", monkeypatch).main(["--data", str(synthetic_data), "--repeats", "1",
                                                  "--accelerator", "cpu", "--out", str(out)])
    figures = json.loads(out.read_text())["figures"]
    clips = len((synthetic_data / "SDR_metadata.tsv").read_text().splitlines()) - 1
    assert figures["reference"]["clips"] == figures["cold"]["clips"] == figures["cached"]["clips"] == clips
    assert figures["epoch"]["clips"] == figures["epoch_featurized"]["clips"] == 64  # 80 TRAIN clips, drop_last
    assert figures["reference"]["ratio_to_reference"] == 1.0
    assert all(f["clips_per_s"] > 0 for f in figures.values())


def test_train_throughput(synthetic_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "throughput.json"
    load("train_throughput", monkeypatch).main(["--data", str(synthetic_data), "--models", "linear", "--epochs", "2",
                                                "--out", str(out), "--", "data.batch_size=16",
                                                "trainer.accelerator=cpu"])
    figure = json.loads(out.read_text())["figures"]["linear"]
    assert [epoch["clips"] for epoch in figure["epochs"]] == [80]  # the warm-up epoch is left out
    assert 0.0 < figure["data_share"] <= figure["outside_steps_share"] < 1.0 and figure["clips_per_s"] > 0


@pytest.mark.parametrize("threshold", [0.0, 1.01])
def test_time_to_accuracy(threshold: float, synthetic_data: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "time.json"
    load("time_to_accuracy", monkeypatch).main(["--data", str(synthetic_data), "--preset", "best_linear",
                                                "--threshold", str(threshold), "--seeds", "1", "--out", str(out),
                                                "--", "trainer.max_epochs=3", "trainer.accelerator=cpu",
                                                "data.batch_size=16"])
    run = json.loads(out.read_text())["runs"][0]
    if threshold == 0.0:  # stopped by EarlyStopping's stopping_threshold at the first validation
        assert run["reached"] and run["epochs"] == 1 and run["epochs_run"] == 1
        assert 0 < run["setup_s"] < run["seconds"] <= run["total_s"]
    else:  # never reached: every epoch runs, and the best DEV accuracy is reported instead
        assert not run["reached"] and run["seconds"] is None and run["epochs_run"] == 3
        assert 0.0 <= run["best_acc"] <= 1.0


def test_peak_rss_follows_allocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    peak_memory = load("peak_memory", monkeypatch)
    allocate = [sys.executable, "-c", "import sys; block = bytearray(int(sys.argv[1]) * 2**20); block[::4096] = "
                "b'x' * len(block[::4096])"]
    small = peak_memory.peak_rss_mb([*allocate, "1"], {}, tmp_path / "small.log")
    large = peak_memory.peak_rss_mb([*allocate, "300"], {}, tmp_path / "large.log")
    assert 250 < large - small < 350
    with pytest.raises(SystemExit, match="failed"):
        peak_memory.peak_rss_mb([sys.executable, "-c", "raise SystemExit(3)"], {}, tmp_path / "fail.log")


def test_robustness_table(cnn_run: dict, synthetic_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture) -> None:
    from sdr_lightning.data import conditions

    monkeypatch.setitem(conditions.SUITES, "small", ["quiet", "telephone"])
    sweep = tmp_path / "loso"
    for fold, accuracy in enumerate([0.9, 0.7, 0.8]):
        (sweep / f"{fold}_data.fold-{fold}" / ".hydra").mkdir(parents=True)
        (sweep / f"{fold}_data.fold-{fold}" / ".hydra" / "overrides.yaml").write_text(f"- data.fold={fold}\n")
        (sweep / f"{fold}_data.fold-{fold}" / "metrics.json").write_text(json.dumps({"test/acc": accuracy}))
    out = tmp_path / "robust.json"
    seeds = [f"seeds={cnn_run['best_checkpoint']}"] * 2  # a name given twice: one column, mean ± std
    load("robustness", monkeypatch).main([f"tiny={cnn_run['best_checkpoint']}", *seeds, "--suite", "small", "--data",
                                          str(synthetic_data), "--voices", str(synthetic_data),
                                          "--loso", f"tiny={sweep}", "--out", str(out)])
    columns = json.loads(out.read_text())["columns"]
    column = columns["tiny"]
    assert set(column) >= {"clean", "quiet", "telephone", "suite mean", "espeak voices", "LOSO mean"}
    assert column["LOSO worst fold"] == [0.7] and column["LOSO mean"] == [pytest.approx(0.8)]
    assert columns["seeds"]["clean"] == column["clean"] * 2
    printed = capsys.readouterr().out
    assert "| telephone | >= 0.92 |" in printed and f"{column['clean'][0]:.4f} ± 0.0000 (n=2)" in printed


def test_robustness_loso_suite(cnn_run: dict, synthetic_data: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """--loso-suite scores each fold's checkpoint on its TEST split, found where metrics.json says or, for a moved
    sweep, in the job's checkpoints/; a fold without its checkpoint is one clear error."""
    import shutil

    from sdr_lightning.data import conditions

    monkeypatch.setitem(conditions.SUITES, "small", ["quiet", "telephone"])
    checkpoint = Path(cnn_run["best_checkpoint"])
    sweep = tmp_path / "loso"
    for fold in range(2):
        job = sweep / f"{fold}_data.fold-{fold}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- data.fold={fold}\n")
        recorded = checkpoint
        if fold == 1:  # recorded elsewhere, as after moving the sweep
            (job / "checkpoints").mkdir()
            shutil.copy(checkpoint, job / "checkpoints" / checkpoint.name)
            shutil.copy(checkpoint.parent.parent / ".hydra" / "config.yaml", job / ".hydra" / "config.yaml")
            recorded = tmp_path / "moved_away" / checkpoint.name
        (job / "metrics.json").write_text(json.dumps({"test/acc": 0.5, "best_checkpoint": str(recorded)}))
    out = tmp_path / "robust.json"
    robustness = load("robustness", monkeypatch)
    robustness.main(["--suite", "small", "--data", str(synthetic_data), "--loso", f"tiny={sweep}", "--loso-suite",
                     "--out", str(out)])
    column = json.loads(out.read_text())["columns"]["tiny"]
    scored = robustness.score(checkpoint, "TEST", None, "small", synthetic_data)
    assert column["LOSO telephone"] == [pytest.approx(scored["telephone"])]
    assert column["LOSO suite mean"] == column["LOSO suite mean, worst fold"] == [pytest.approx(scored["suite mean"])]
    assert "LOSO clean" not in column and column["LOSO mean"] == [0.5]
    # condition names instead of a suite, and the decision folds only; each fold's figures in the JSON
    robustness.main(["--suite", "telephone,quiet", "--folds", "1", "--data", str(synthetic_data), "--loso",
                     f"tiny={sweep}", "--loso-suite", "--out", str(out)])
    written = json.loads(out.read_text())
    (folds,) = written["loso_folds"]["tiny"]
    assert list(folds) == ["1"] and set(folds["1"]) == {"clean", "telephone", "quiet", "suite mean"}
    assert folds["1"]["telephone"] == pytest.approx(scored["telephone"])
    assert written["columns"]["tiny"]["LOSO folds"] == [1]
    with pytest.raises(SystemExit, match=r"--folds 1,4: .* no job for fold\(s\) 4"):
        robustness.main(["--suite", "small", "--folds", "1,4", "--data", str(synthetic_data), "--loso",
                         f"tiny={sweep}"])
    with pytest.raises(SystemExit, match=r"--suite quiet,hail: .*hail"):
        robustness.main(["--suite", "quiet,hail", "--loso", f"tiny={sweep}"])
    # --loso-checkpoint last: fold 1's last.ckpt is scored (clean too, not metrics.json's 0.5); fold 0 has none
    shutil.copy(checkpoint, sweep / "1_data.fold-1" / "checkpoints" / "last.ckpt")
    robustness.main(["--suite", "telephone", "--folds", "1", "--data", str(synthetic_data), "--loso", f"tiny={sweep}",
                     "--loso-suite", "--loso-checkpoint", "last", "--out", str(out)])
    column = json.loads(out.read_text())["columns"]["tiny"]
    assert column["LOSO mean"] == [pytest.approx(scored["clean"])] != [0.5]
    assert column["LOSO telephone"] == [pytest.approx(scored["telephone"])]
    with pytest.raises(SystemExit, match=r"fold 0 .*no checkpoints/last.ckpt"):
        robustness.main(["--data", str(synthetic_data), "--loso", f"tiny={sweep}", "--loso-checkpoint", "last"])
    (sweep / "1_data.fold-1" / "checkpoints" / checkpoint.name).unlink()
    with pytest.raises(SystemExit, match=r"fold 1 .*best_checkpoint .* is not there"):
        robustness.main(["--suite", "small", "--data", str(synthetic_data), "--loso", f"tiny={sweep}", "--loso-suite"])


def test_robustness_adapt(cnn_run: dict, synthetic_data: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """--adapt N: each scored set's accuracy after the checkpoint's BatchNorm statistics are re-estimated on N of
    that set's clips (blended with its own as if from --adapt-prior clips, 30 by default), starting from the
    checkpoint's own statistics every time."""
    import torch

    from sdr_lightning.data import conditions
    from sdr_lightning.models.adapt import adapt_batchnorm, dataset_batches
    from sdr_lightning.tasks.checkpoint import load_for_inference, run_datamodule
    from sdr_lightning.tasks.evaluate import predict_split

    monkeypatch.setitem(conditions.SUITES, "small", ["quiet", "telephone"])
    robustness = load("robustness", monkeypatch)
    checkpoint = Path(cnn_run["best_checkpoint"])
    out = tmp_path / "adapted.json"
    robustness.main([f"tiny={checkpoint}", "--suite", "small", "--data", str(synthetic_data), "--adapt", "8",
                     "--voices", str(synthetic_data), "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["adapt"] == {"clips": 8, "prior": 30.0}
    column = written["columns"]["tiny"]
    # by hand: telephone after the statistics of 8 of its clips, blended with the checkpoint's as 30 clips
    run = load_for_inference(checkpoint, data_dir=str(synthetic_data))
    datamodule = run_datamodule(run, data_dir=str(synthetic_data))
    telephone = datamodule.condition_dataset("TEST", conditions.suite(["telephone"])[0])
    before = predict_split(run.model, datamodule, "TEST", dataset=telephone)
    adapt_batchnorm(run.model, dataset_batches(telephone, datamodule.hparams.batch_size, clips=8), prior=30)
    after = predict_split(run.model, datamodule, "TEST", dataset=telephone)
    assert column["telephone"] == [pytest.approx(after.accuracy)]
    assert not torch.allclose(torch.as_tensor(before.probabilities), torch.as_tensor(after.probabilities))
    plain = robustness.score(checkpoint, "TEST", None, "small", synthetic_data)
    assert set(column) >= {"clean", "quiet", "telephone", "espeak voices"} and plain["telephone"] == pytest.approx(
        before.accuracy)


def test_robustness_clip_norm_scores_with_that_weight(cnn_run: dict, synthetic_data: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from sdr_lightning.data import conditions
    from sdr_lightning.models.normalization import set_clip_weight
    from sdr_lightning.tasks.checkpoint import load_for_inference, run_datamodule
    from sdr_lightning.tasks.evaluate import predict_split

    monkeypatch.setitem(conditions.SUITES, "small", ["telephone"])
    robustness = load("robustness", monkeypatch)
    checkpoint = Path(cnn_run["best_checkpoint"])
    out = tmp_path / "clip_norm.json"
    robustness.main([f"tiny={checkpoint}", "--suite", "small", "--data", str(synthetic_data), "--clip-norm", "0.5",
                     "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["clip_norm"] == 0.5
    run = load_for_inference(checkpoint, data_dir=str(synthetic_data))
    datamodule = run_datamodule(run, data_dir=str(synthetic_data))
    telephone = datamodule.condition_dataset("TEST", conditions.suite(["telephone"])[0])
    plain = predict_split(run.model, datamodule, "TEST", dataset=telephone).accuracy
    set_clip_weight(run.model, 0.5)
    blended = predict_split(run.model, datamodule, "TEST", dataset=telephone).accuracy
    assert written["columns"]["tiny"]["telephone"] == [pytest.approx(blended)] and blended != pytest.approx(plain)
    with pytest.raises(SystemExit, match="--clip-norm 1.5"):
        robustness.main([f"tiny={checkpoint}", "--data", str(synthetic_data), "--clip-norm", "1.5"])


def test_dropout_mask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "dropout.json"
    load("dropout_mask", monkeypatch).main(["--shape", "4", "8", "16", "--repeats", "2", "--out", str(out)])
    figures = json.loads(out.read_text())
    assert set(figures["median_ms"]) == {"nn.Dropout", "Dropout16"} and figures["ratio"] > 0
    assert "nn.Dropout / Dropout16:" in capsys.readouterr().out


def test_recipe_cost(synthetic_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cost.json"
    load("recipe_cost", monkeypatch).main(["--data", str(synthetic_data), "--baseline", "model=linear",
                                           "--candidate", "model=linear augment=noise data.augment_bank=1",
                                           "--epochs", "1", "--latency-runs", "3", "--out", str(out)])
    figures = json.loads(out.read_text())
    assert figures["train_ratio"] > 0 and figures["latency_ratio"] > 0
    assert figures["recipes"]["candidate"]["overrides"].endswith("data.augment_bank=1")


def test_digit_strings(cnn_run: dict, synthetic_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "strings.json"
    load("digit_strings", monkeypatch).main([cnn_run["best_checkpoint"], "--data", str(synthetic_data), "--strings",
                                             "3", "--conditions", "clean", "white_10db", "--segmenters", "energy",
                                             "--digit-free-s", "3", "--stream-strings", "2", "--gates", "0", "0.5",
                                             "--min-confidence", "auto", "--out", str(out)])
    written = json.loads(out.read_text())
    gate = float(torch.load(cnn_run["best_checkpoint"], weights_only=True)["state_dict"]["digit_gate"])
    assert written["min_confidence"] == pytest.approx(gate if gate > 0 else 0.3)  # auto: the checkpoint's own
    figures = written["results"]["energy"]
    clean = figures["clean"]["0.0"]
    assert clean["digits"] >= 9 and 0 <= clean["der"] and clean["string_acc"] <= 1
    assert figures["clean"]["0.5"]["insertions"] <= clean["insertions"]  # a gate only ever drops digits
    assert "room tone" in figures and figures["streaming"]["digits"] > 0
    assert "| clean |" in capsys.readouterr().out


def test_generalization_targets_runs_a_second_stage_from_its_first_stages_runs(tmp_path: Path) -> None:
    import subprocess

    printed = subprocess.run([sys.executable, str(BENCHMARKS / "generalization_targets.py"), "--rows",
                              "simclr_clusters", "--seeds", "3", "4", "--dry-run", "--out", str(tmp_path)],
                             capture_output=True, text=True, check=True).stdout
    commands = [line for line in printed.splitlines() if line.startswith("$ ")]
    # the reference and the first stage first (multiruns over the seeds), then one second-stage run per seed
    assert [c.split()[3 if " -m " in c else 2] for c in commands] == [
        "experiment=supervised_george", "experiment=simclr_george_best", "experiment=simclr_george_clusters",
        "experiment=simclr_george_clusters"]
    for job, seed in enumerate((3, 4)):
        stage_two = commands[2 + job]
        assert f"seed={seed}" in stage_two
        assert f"model.init_from={tmp_path / 'simclr' / str(job) / 'checkpoints' / 'last.ckpt'}" in stage_two
