import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from sdr_lightning.analysis.compare import compare, group_label, main
from tests.helpers import ROOT

CLIPS = 40
# (overrides, DEV wrong, TEST wrong) per job; in the cnn group the best on DEV (seed 2) is not the best on TEST.
JOBS = [
    (["model=cnn", "seed=1"], 4, 3),
    (["model=cnn", "seed=2"], 2, 5),
    (["model=cnn", "seed=3"], 6, 2),
    (["model=linear", "seed=1"], 14, 15),
    (["model=linear", "seed=2"], 12, 13),
    (["model=linear", "seed=3"], 16, 18),
]
SHARED = ["trainer.max_epochs=5", "trainer.enable_progress_bar=False", "paths.data_dir=/somewhere"]
RESAMPLES = 2000


def write_predictions(path: Path, wrong: int, seed: int, identifiers: list[str]) -> float:
    labels = np.arange(CLIPS) % 10
    predictions = labels.copy()
    misses = np.random.default_rng(seed).permutation(CLIPS)[:wrong]
    predictions[misses] = (labels[misses] + 1) % 10
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["identifier", "speaker", "label", "prediction", *(f"prob_{c}" for c in range(10))])
        for i in range(CLIPS):
            probs = np.full(10, 0.01)
            probs[predictions[i]] = 0.91
            writer.writerow([identifiers[i], "lucas", labels[i], predictions[i], *probs])
    return 1 - wrong / CLIPS


def write_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None) -> Path:
    job = sweep / f"{num}_{'+'.join(o.replace('=', '-') for o in overrides)}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in [*overrides, *SHARED]))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def write_sweep(sweep: Path) -> dict[str, list[dict]]:
    """2 configs x 3 seeds with predictions, a vit run with DEV predictions only, and a vit job that failed."""
    identifiers = [f"{i % 10}_lucas_{i // 10}" for i in range(CLIPS)]
    expected: dict[str, list[dict]] = {}
    for num, (overrides, dev_wrong, test_wrong) in enumerate(JOBS):
        job = sweep / "placeholder"
        dev = write_predictions(job / "reports/dev/predictions.csv", dev_wrong, num, identifiers)
        test = write_predictions(job / "reports/test/predictions.csv", test_wrong, 100 + num, identifiers)
        metrics = {"val/acc": dev, "val/f1_macro": dev - 0.01, "val/loss": 1.0, "test/acc": test,
                   "test/f1_macro": test - 0.02 * num, "test/loss": 1.1, "train_time_s": 10.0 + 3 * num ** 1.5,
                   "epochs": 5, "parameters": 1000 * (1 + num // 3), "best_checkpoint": "", "model": "Classifier"}
        final = write_job(sweep, num, overrides, metrics)
        (job / "reports").rename(final / "reports")
        job.rmdir()
        expected.setdefault(overrides[0], []).append({**metrics, "job": str(num)})
    vit = write_job(sweep, 6, ["model=vit", "seed=1"], {"val/acc": 0.5, "test/acc": 0.45, "train_time_s": 7.0})
    write_predictions(vit / "reports/dev/predictions.csv", 20, 6, identifiers)
    write_job(sweep, 7, ["model=vit", "seed=2"], None)
    # eval.py runs inside a job folder; they are not jobs of the sweep
    nested = sweep / "0_model-cnn+seed-1" / "eval" / "2026-01-01_00-00-00" / ".hydra"
    nested.mkdir(parents=True)
    (nested / "overrides.yaml").write_text("- ckpt_path=x.ckpt\n- report.projector=false\n")
    return expected


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def sweep_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, str]:
    sweep = tmp_path_factory.mktemp("multirun") / "2026-01-01_00-00-00"
    expected = write_sweep(sweep)
    out = sweep.parent / "results"
    text = compare(sweep, out, RESAMPLES)
    return sweep, out, expected, text


def test_writes_every_file(sweep_results) -> None:
    _, out, _, text = sweep_results
    assert {p.name for p in out.iterdir()} == {"results.md", "results.csv", "groups.csv", "pvalues.csv",
                                               "results.png"}
    assert (out / "results.md").read_text() == text
    image = imread(out / "results.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 500


def test_group_mean_and_std_match_numpy(sweep_results) -> None:
    _, out, expected, _ = sweep_results
    groups = {row["model"]: row for row in read_csv(out / "groups.csv")}
    assert list(groups) == ["cnn", "linear", "vit"]
    for override, runs in expected.items():
        row = groups[override.split("=")[1]]
        assert row["group"] == override and row["n"] == "3" and row["failed"] == "0"
        for column, key in [("dev_acc", "val/acc"), ("test_acc", "test/acc"), ("test_f1_macro", "test/f1_macro"),
                            ("train_time_s", "train_time_s")]:
            values = np.array([run[key] for run in runs])
            assert float(row[f"{column}_mean"]) == pytest.approx(values.mean())
            assert float(row[f"{column}_std"]) == pytest.approx(values.std(ddof=1))
    assert (groups["vit"]["n"], groups["vit"]["failed"], groups["vit"]["dev_acc_std"]) == ("1", "1", "")


def test_markdown_tables(sweep_results) -> None:
    _, _, expected, text = sweep_results
    assert "## Runs" in text and "## Groups" in text and "## Paired bootstrap p-values on TEST" in text
    assert "Overrides shared by all runs: trainer.max_epochs=5" in text
    assert "enable_progress_bar" not in text and "paths.data_dir" not in text
    cnn = np.array([run["val/acc"] for run in expected["model=cnn"]])
    assert f"| model=cnn | 3 | {cnn.mean():.4f} ± {cnn.std(ddof=1):.4f} |" in text
    assert "| model=vit | 1 (+1 failed) |" in text


def test_runs_have_bootstrap_ci_and_failed_job_is_listed(sweep_results) -> None:
    _, out, _, text = sweep_results
    rows = read_csv(out / "results.csv")
    assert len(rows) == 8  # the eval run nested in job 0 is not a job
    assert "trainer.max_epochs" in rows[0] and "trainer.enable_progress_bar" not in rows[0]
    for row in rows[:6]:
        for split in ("dev", "test"):
            low, acc, high = (float(row[f"{split}_acc{s}"]) for s in ("_ci_low", "", "_ci_high"))
            assert low <= acc <= high and high - low > 0.05
    vit, failed = rows[6], rows[7]
    assert vit["dev_acc_ci_low"] and not vit["test_acc_ci_low"]  # no TEST predictions: accuracy without CI
    assert "| 6 | vit | 1 | — | 0.5000 [" in text and "| 0.4500 |" in text  # older run: no model class
    assert failed["job"] == "7" and "no metrics.json" in failed["status"] and failed["model"] == "vit"
    assert "| 7 | vit | 2 | — | failed or unfinished (no metrics.json) |" in text


def test_pvalues_between_best_dev_runs(sweep_results) -> None:
    _, out, expected, _ = sweep_results
    rows = read_csv(out / "pvalues.csv")
    labels = ["model=cnn", "model=linear", "model=vit"]
    assert [row["group"] for row in rows] == labels
    matrix = np.array([[float(row[label]) if row[label] else np.nan for label in labels] for row in rows])
    assert matrix.shape == (3, 3)
    assert matrix[0, 0] == matrix[1, 1] == 1.0  # a run never beats itself
    assert np.isnan(matrix[2]).all() and np.isnan(matrix[:, 2]).all()  # vit has no TEST predictions
    assert matrix[0, 1] < 0.05 < 0.95 < matrix[1, 0]  # cnn (0.875 on TEST) beats linear (0.675)
    for row, override in zip(rows, ["model=cnn", "model=linear"]):
        runs = expected[override]
        best = runs[int(np.argmax([run["val/acc"] for run in runs]))]["job"]
        assert row["best_run"].split("_")[0] == best
    assert rows[0]["best_run"].startswith("1_")  # chosen on DEV, although job 2 is better on TEST


def test_different_clips_cannot_be_paired(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    write_sweep(sweep)
    best_linear = sweep / "4_model-linear+seed-2" / "reports/test/predictions.csv"
    best_linear.write_text(best_linear.read_text().replace("_lucas_", "_theo_"))
    compare(sweep, tmp_path / "out", 200)
    matrix = read_csv(tmp_path / "out" / "pvalues.csv")
    assert (matrix[0]["model=cnn"], matrix[0]["model=linear"], matrix[1]["model=linear"]) == ("1.0", "", "1.0")
    assert "| model=cnn (job 1) | 1.0000 | n/a | n/a |" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.parametrize("name, message", [("missing", "does not exist"), ("empty", "no runs under")])
def test_bad_folder_is_one_clear_error(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / name)])
    text = str(exit_info.value)
    assert text.startswith("error: ") and message in text and str(tmp_path / name) in text


def test_only_failed_jobs_is_an_error(tmp_path: Path) -> None:
    write_job(tmp_path, 0, ["model=cnn"], None)
    with pytest.raises(SystemExit, match="none of the 1 runs"):
        main([str(tmp_path)])


@pytest.mark.slow
def test_top_level_script(sweep_results, tmp_path: Path) -> None:
    sweep = sweep_results[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "compare.py", str(sweep), "--out", str(tmp_path), "--resamples", "100"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "## Groups" in result.stdout and (tmp_path / "results.png").exists()
    missing = subprocess.run([sys.executable, "compare.py", str(tmp_path / "nope")], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.startswith("error:") and "Traceback" not in missing.stderr


def test_group_named_by_what_differs() -> None:
    assert group_label({"model": "cnn", "trainer.max_epochs": "5"}, ["model", "seed"]) == "model=cnn"
    assert group_label({"model": "cnn", "trainer.max_epochs": "5"}, ["seed"]) == "model=cnn, trainer.max_epochs=5"
    assert group_label({}, ["model", "seed"]) == "defaults"


def test_folds_are_summarised_like_seeds(tmp_path: Path) -> None:
    """A leave-one-speaker-out sweep: one group per model, mean ± std over its folds."""
    sweep = tmp_path / "sweep"
    accuracies = {"cnn": [0.9, 0.8, 0.7], "linear": [0.6, 0.5, 0.55]}
    num = 0
    for model, values in accuracies.items():
        for fold, acc in enumerate(values):
            write_job(sweep, num, [f"model={model}", "data=loso", f"data.fold={fold}"],
                      {"val/acc": acc, "test/acc": acc - 0.05, "test/f1_macro": acc, "train_time_s": 1.0})
            num += 1
    text = compare(sweep, tmp_path / "out", 100)
    groups = {row["group"]: row for row in read_csv(tmp_path / "out" / "groups.csv")}
    assert list(groups) == ["model=cnn", "model=linear"]
    for model, values in accuracies.items():
        row = groups[f"model={model}"]
        assert row["n"] == "3" and "data.fold" not in row
        assert float(row["dev_acc_mean"]) == pytest.approx(np.mean(values))
        assert float(row["dev_acc_std"]) == pytest.approx(np.std(values, ddof=1))
    assert "## Groups (runs that differ only in `seed` or `data.fold`)" in text
