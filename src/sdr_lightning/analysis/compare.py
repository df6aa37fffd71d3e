"""One results table for a whole Hydra multirun sweep: `python compare.py outputs/multirun/<date_time>`.

Per run: the overrides that define it, DEV and TEST accuracy with 95% bootstrap CIs from its predictions, TEST
macro-F1, size and training time. Per group of runs that differ only in `seed` or `data.fold` (repeats of one
setting; a leave-one-speaker-out sweep `data=loso data.fold=0,1,2,3,4,5` gives mean ± std over folds): mean ± std.
Between the best run of each group (chosen on DEV, never TEST): paired bootstrap p-values on TEST. Writes
results.md, results.csv, groups.csv, pvalues.csv and results.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from sdr_lightning.analysis.predictions import read_predictions
from sdr_lightning.analysis.significance import accuracy_ci, paired_bootstrap
from sdr_lightning.analysis.tables import markdown_table
from sdr_lightning.data.metadata import METRIC_PREFIXES, REPORT_FOLDERS
from sdr_lightning.errors import DataError, SdrError

# Overrides that say where things are or how they display, not what was trained.
NOISE_KEYS = {"data.dir", "data.cache_dir", "ckpt_path", "trainer.enable_progress_bar", "trainer.enable_model_summary"}
NOISE_PREFIXES = ("paths.", "hydra.", "report.")
SEED = "seed"
# Overrides that repeat one setting rather than change it: runs differing only in these form one group.
REPEATS = (SEED, "data.fold")
# reports/<folder>/ -> metrics.json key prefix, for the splits a run reports (data.metadata names them)
SPLITS = {REPORT_FOLDERS[split]: METRIC_PREFIXES[split] for split in ("DEV", "TEST")}
MISSING = "—"


@dataclass
class ClipScores:
    identifiers: np.ndarray  # sorted, so that two runs on the same clips line up
    correct: np.ndarray
    ci: tuple[float, float]


@dataclass
class Run:
    path: Path
    name: str  # relative to the sweep folder
    overrides: dict[str, str]
    metrics: dict[str, Any] | None
    problem: str = ""  # why there are no metrics
    scores: dict[str, ClipScores] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def job(self) -> str:
        match = re.match(r"(\d+)_", self.name)
        return match.group(1) if match and "/" not in self.name else self.name

    def metric(self, key: str) -> float:
        value = (self.metrics or {}).get(key)
        return float(value) if isinstance(value, (int, float)) else math.nan


@dataclass
class Group:
    label: str
    overrides: dict[str, str]  # everything but the seed and fold (REPEATS)
    runs: list[Run]

    @property
    def finished(self) -> list[Run]:
        return [run for run in self.runs if run.finished]

    @property
    def best(self) -> Run | None:
        candidates = [run for run in self.finished if not math.isnan(run.metric("val/acc"))]
        return max(candidates, key=lambda run: run.metric("val/acc")) if candidates else None

    def values(self, key: str) -> np.ndarray:
        values = np.array([run.metric(key) for run in self.finished])
        return values[~np.isnan(values)]


# ----------------------------------------------------------------------------------------------------- loading


def find_run_dirs(sweep: Path) -> list[Path]:
    if not sweep.exists():
        raise DataError(f"{sweep} does not exist; pass the sweep folder that `python train.py -m ...` printed, "
                        "e.g. outputs/multirun/<date_time>.")
    if not sweep.is_dir():
        raise DataError(f"{sweep} is a file; pass the sweep folder, e.g. outputs/multirun/<date_time>.")
    # Finished jobs have metrics.json; failed or unfinished ones only Hydra's record of their overrides.
    dirs = {path.parent for path in sweep.rglob("metrics.json")}
    dirs |= {path.parent.parent for path in sweep.rglob(".hydra/overrides.yaml")}
    # Runs made inside a job folder (eval.py writes <job>/eval/<time>/) belong to that job, not the sweep.
    dirs = {path for path in dirs if not any(parent in dirs for parent in path.parents)}
    if not dirs:
        raise DataError(f"no runs under {sweep}: no job folder with metrics.json or .hydra/overrides.yaml. "
                        "Pass a Hydra multirun folder such as outputs/multirun/<date_time>, after its jobs ran.")
    return sorted(dirs, key=lambda path: natural_key(path.relative_to(sweep).as_posix()))


def natural_key(text: str) -> list[Any]:
    # job 10 after job 9
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)]


def load_run(path: Path, sweep: Path, resamples: int) -> Run:
    name = path.relative_to(sweep).as_posix() if path != sweep else path.name
    run = Run(path=path, name=name, overrides={}, metrics=None)
    try:
        run.overrides = read_overrides(path / ".hydra" / "overrides.yaml")
    except Exception as err:  # a broken file fails this run's row, not the whole table
        run.problem = f"unreadable .hydra/overrides.yaml ({err})"
        return run
    metrics_file = path / "metrics.json"
    if not metrics_file.exists():
        run.problem = "failed or unfinished (no metrics.json)"
        return run
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, ValueError) as err:
        run.problem = f"unreadable metrics.json ({err})"
        return run
    if not isinstance(metrics, dict):
        run.problem = "metrics.json is not a JSON object"
        return run
    run.metrics = metrics
    for split, prefix in SPLITS.items():
        scores = read_scores(path / "reports" / split / "predictions.csv", resamples)
        if scores is not None:
            run.scores[split] = scores
            check_accuracy(run, split, prefix)
    return run


def read_overrides(path: Path) -> dict[str, str]:
    if not path.exists():  # e.g. a run directory not made by Hydra: nothing defines it
        return {}
    overrides = {}
    for item in OmegaConf.to_container(OmegaConf.load(path)) or []:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if key not in NOISE_KEYS and not key.startswith(NOISE_PREFIXES):
            overrides[key] = value
    return overrides


def read_scores(path: Path, resamples: int) -> ClipScores | None:
    if not path.exists():
        return None
    try:
        predictions = read_predictions(path)
    except (DataError, OSError, UnicodeDecodeError, csv.Error, ValueError) as err:
        warn(f"{path}: unreadable ({err}); accuracy shown without CI.")
        return None
    if not len(predictions):
        warn(f"{path}: no clips in it; accuracy shown without CI.")
        return None
    identifiers = np.array(predictions.identifiers)
    if len(set(identifiers)) < len(identifiers):
        warn(f"{path}: some identifiers appear more than once; accuracy and CI count every row.")
    order = np.argsort(identifiers, kind="stable")
    correct = predictions.correct
    return ClipScores(identifiers[order], correct[order], accuracy_ci(correct, resamples=resamples))


def check_accuracy(run: Run, split: str, prefix: str) -> None:
    reported = run.metric(f"{prefix}/acc")
    counted = float(run.scores[split].correct.mean())
    if not math.isnan(reported) and abs(reported - counted) > 1e-4:
        warn(f"{run.path / 'reports' / split / 'predictions.csv'}: accuracy {counted:.4f} differs from "
             f"{prefix}/acc {reported:.4f} in metrics.json; its CI and p-values use the CSV.")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------- analysis


def group_runs(runs: list[Run], varying: list[str]) -> list[Group]:
    groups: dict[tuple[tuple[str, str], ...], Group] = {}
    for run in runs:
        config = {k: v for k, v in run.overrides.items() if k not in REPEATS}
        key = tuple(sorted(config.items()))
        if key not in groups:
            groups[key] = Group(label=group_label(config, varying), overrides=config, runs=[])
        groups[key].runs.append(run)
    return list(groups.values())


def group_label(config: dict[str, str], varying: list[str]) -> str:
    # Name a group by what sets it apart; overrides shared by every run go in the report's header instead.
    # With a single group (only seeds or folds vary) its full overrides are the more useful name.
    shown = [f"{k}={config[k]}" for k in varying if k in config]
    if not any(k not in REPEATS for k in varying):
        shown = [f"{k}={v}" for k, v in config.items()]
    return ", ".join(shown) or "defaults"


def override_keys(runs: list[Run]) -> tuple[list[str], dict[str, str]]:
    """Keys whose value differs between runs (or is missing in some), and the overrides all runs share."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys]
    common = {k: runs[0].overrides[k] for k in keys
              if all(k in run.overrides and run.overrides[k] == runs[0].overrides[k] for run in runs)}
    return [k for k in keys if k not in common], common


def pvalue_matrix(groups: list[Group], resamples: int) -> np.ndarray:
    """Entry [i, j]: p-value that group i's best-DEV run beats group j's on TEST; NaN where they cannot be paired."""
    tests = [group.best.scores.get("test") if group.best else None for group in groups]
    matrix = np.full((len(groups), len(groups)), math.nan)
    for i, a in enumerate(tests):
        for j, b in enumerate(tests):
            if a is not None and b is not None and np.array_equal(a.identifiers, b.identifiers):
                matrix[i, j] = paired_bootstrap(a.correct, b.correct, resamples=resamples).p_value
    return matrix


# ------------------------------------------------------------------------------------------------ formatting


def number(value: float, digits: int = 4) -> str:
    return MISSING if math.isnan(value) else f"{value:.{digits}f}"


def with_ci(value: float, scores: ClipScores | None) -> str:
    if scores is None:
        return number(value)
    low, high = scores.ci
    return f"{number(value)} [{low:.3f}, {high:.3f}]"


def mean_std(values: np.ndarray, digits: int = 4) -> str:
    if values.size == 0:
        return MISSING
    if values.size == 1:
        return number(float(values[0]), digits)
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def pvalue_text(value: float, resamples: int) -> str:
    if math.isnan(value):
        return "n/a"
    return f"< {1 / resamples:.2g}" if value == 0 else f"{value:.4f}"


# Figures only some runs have (data.robust_dev, report.suite=robustness): a column when any run has one.
OPTIONAL_STATS = [("DEV robust acc", "val/acc_robust", 4), ("TEST robust mean", "robust/test_mean", 4)]


def optional_stats(runs: list[Run]) -> list[tuple[str, str, int]]:
    return [stat for stat in OPTIONAL_STATS if any(stat[1] in (run.metrics or {}) for run in runs)]


def run_rows(runs: list[Run], varying: list[str]) -> tuple[list[str], list[list[str]]]:
    with_class = any(run.metrics and "model" in run.metrics for run in runs)
    extra = optional_stats(runs)
    header = ["job", *varying, *(["model class"] if with_class else []), "DEV acc [95% CI]", "TEST acc [95% CI]",
              "TEST macro-F1", *(name for name, _, _ in extra), "parameters", "train time (s)"]
    rows = []
    for run in runs:
        cells = [run.job, *(run.overrides.get(k, MISSING) for k in varying)]
        if with_class:
            cells.append(str((run.metrics or {}).get("model", MISSING)))
        if not run.finished:
            rows.append(cells + [run.problem] + [""] * (len(header) - len(cells) - 1))
            continue
        parameters = run.metric("parameters")
        rows.append(cells + [
            with_ci(run.metric("val/acc"), run.scores.get("dev")),
            with_ci(run.metric("test/acc"), run.scores.get("test")),
            number(run.metric("test/f1_macro")),
            *(number(run.metric(key), digits) for _, key, digits in extra),
            MISSING if math.isnan(parameters) else f"{int(parameters):,}",
            number(run.metric("train_time_s"), 0),
        ])
    return header, rows


GROUP_STATS = [("DEV acc", "val/acc", 4), ("TEST acc", "test/acc", 4), ("TEST macro-F1", "test/f1_macro", 4),
               ("train time (s)", "train_time_s", 1)]


def group_stats(groups: list[Group]) -> list[tuple[str, str, int]]:
    return [*GROUP_STATS[:3], *optional_stats([run for group in groups for run in group.runs]), GROUP_STATS[3]]


def group_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    stats = group_stats(groups)
    header = ["group", "n", *(name for name, _, _ in stats), "best run (DEV)"]
    rows = []
    for group in groups:
        failed = len(group.runs) - len(group.finished)
        n = f"{len(group.finished)}" + (f" (+{failed} failed)" if failed else "")
        best = group.best.job if group.best else MISSING
        rows.append([group.label, n, *(mean_std(group.values(key), digits) for _, key, digits in stats), best])
    return header, rows


def pvalue_rows(groups: list[Group], matrix: np.ndarray, resamples: int) -> tuple[list[str], list[list[str]]]:
    header = ["row beats column", *(group.label for group in groups)]
    rows = []
    for group, values in zip(groups, matrix):
        best = f" (job {group.best.job})" if group.best else ""
        rows.append([group.label + best, *(pvalue_text(value, resamples) for value in values)])
    return header, rows


def report(sweep: Path, runs: list[Run], groups: list[Group], varying: list[str], common: dict[str, str],
           matrix: np.ndarray, resamples: int) -> str:
    failed = sum(not run.finished for run in runs)
    shared = ", ".join(f"{k}={v}" for k, v in common.items()) or "none"
    intro = (f"{len(runs)} runs ({failed} failed) under `{sweep}`. Overrides shared by all runs: {shared}. "
             f"Bootstrap: {resamples:,} resamples.")
    return "\n\n".join([
        "# Results", intro,
        "## Runs",
        "Accuracy from metrics.json; 95% bootstrap CI over the clips in reports/<split>/predictions.csv.",
        markdown_table(*run_rows(runs, varying)),
        f"## Groups (runs that differ only in {' or '.join(f'`{k}`' for k in REPEATS)})",
        "Mean ± sample standard deviation over the finished runs of each group; n counts them.",
        markdown_table(*group_rows(groups)),
        "## Paired bootstrap p-values on TEST",
        "Between the best run of each group by DEV accuracy (Berg-Kirkpatrick et al., 2012). Entry [row, column]: "
        "p-value that the row's run beats the column's on the same TEST clips; small (e.g. < 0.05) means the row "
        "is reliably better. n/a: no TEST predictions, or the two runs scored different clips. With many groups, "
        "some small p-values arise by chance.",
        markdown_table(*pvalue_rows(groups, matrix, resamples)),
    ]) + "\n"


# -------------------------------------------------------------------------------------------------- files


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([["" if isinstance(v, float) and math.isnan(v) else v for v in row] for row in rows])


def write_results_csv(path: Path, runs: list[Run]) -> None:
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys]
    header = ["run_dir", "job", "status", *keys, "model_class", "dev_acc", "dev_acc_ci_low", "dev_acc_ci_high",
              "dev_f1_macro", "dev_loss", "test_acc", "test_acc_ci_low", "test_acc_ci_high", "test_f1_macro",
              "test_loss", *(key for _, key, _ in optional_stats(runs)), "train_time_s", "epochs", "parameters",
              "best_checkpoint"]
    rows = []
    for run in runs:
        raw = run.metrics or {}  # values as training wrote them: integers stay integers
        row: list[Any] = [run.name, run.job, "ok" if run.finished else run.problem,
                          *(run.overrides.get(k, "") for k in keys), raw.get("model", "")]
        for split, prefix in SPLITS.items():
            ci = run.scores[split].ci if split in run.scores else ("", "")
            row += [raw.get(f"{prefix}/acc", ""), *ci, raw.get(f"{prefix}/f1_macro", ""), raw.get(f"{prefix}/loss", "")]
        row += [raw.get(key, "") for _, key, _ in optional_stats(runs)]
        row += [raw.get(key, "") for key in ("train_time_s", "epochs", "parameters", "best_checkpoint")]
        rows.append(row)
    write_csv(path, header, rows)


def write_groups_csv(path: Path, groups: list[Group]) -> None:
    keys: list[str] = []
    for group in groups:
        keys += [k for k in group.overrides if k not in keys]
    header = ["group", *keys, "n", "failed"]
    stats = group_stats(groups)
    for _, key, _ in stats:
        name = key.replace("val/", "dev_").replace("test/", "test_").replace("robust/", "robust_")
        header += [f"{name}_mean", f"{name}_std"]
    header.append("best_run")
    rows = []
    for group in groups:
        row: list[Any] = [group.label, *(group.overrides.get(k, "") for k in keys), len(group.finished),
                          len(group.runs) - len(group.finished)]
        for _, key, _ in stats:
            values = group.values(key)
            row += [values.mean() if values.size else math.nan,
                    values.std(ddof=1) if values.size > 1 else math.nan]
        row.append(group.best.name if group.best else "")
        rows.append(row)
    write_csv(path, header, rows)


def write_pvalues_csv(path: Path, groups: list[Group], matrix: np.ndarray) -> None:
    header = ["group", "best_run", *(group.label for group in groups)]
    rows = [[group.label, group.best.name if group.best else "", *values] for group, values in zip(groups, matrix)]
    write_csv(path, header, rows)


def plot(groups: list[Group], path: Path) -> None:
    """Horizontal bars, so long group names stay readable; full 0-1 axis, so gaps are not exaggerated."""
    fig = Figure(figsize=(8, 1.6 + 0.8 * len(groups)), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(len(groups))
    for offset, (split, prefix, colour) in zip((-0.2, 0.2), (("DEV", "val", "#9ecae1"),
                                                              ("TEST", "test", "#08519c"))):
        means, errors = [], []
        for group in groups:
            values = group.values(f"{prefix}/acc")
            means.append(values.mean() if values.size else math.nan)
            errors.append(error_bar(group, split.lower(), values))
        ax.barh(positions + offset, means, height=0.4, xerr=np.array(errors).T, capsize=3, color=colour,
                label=split, error_kw={"ecolor": "#444444"})
        for y, mean, (_, high) in zip(positions + offset, means, errors):
            if not math.isnan(mean):
                ax.text(mean + np.nan_to_num(high) + 0.01, y, f"{mean:.3f}", va="center", fontsize=9)
    labels = [textwrap.fill(group.label, 30) + f"\n(n={len(group.finished)})" for group in groups]
    ax.set_yticks(positions, labels)
    ax.invert_yaxis()  # first group on top, as in the tables
    ax.set_xlim(0, 1.1)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("accuracy")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    # on the figure, not the axes, so that wide group names cannot push it off the canvas
    fig.suptitle("Mean accuracy per group; error bars: ± std over seeds/folds (n > 1) or 95% bootstrap CI (n = 1)",
                 fontsize=9)
    fig.savefig(path, dpi=120)


def error_bar(group: Group, split: str, values: np.ndarray) -> tuple[float, float]:
    if values.size > 1:
        std = float(values.std(ddof=1))
        return std, std
    scores = group.finished[0].scores.get(split) if values.size == 1 else None
    if scores is None:
        return math.nan, math.nan  # no bar rather than a zero-width one that looks like certainty
    low, high = scores.ci
    return max(values[0] - low, 0.0), max(high - values[0], 0.0)


# ---------------------------------------------------------------------------------------------------- entry


def compare(sweep: Path, out: Path, resamples: int) -> str:
    runs = [load_run(path, sweep, resamples) for path in find_run_dirs(sweep)]
    if not any(run.finished for run in runs):
        raise DataError(f"none of the {len(runs)} runs under {sweep} has a metrics.json (all failed or still "
                        "running); see each job folder's train.log, or wait for the jobs to finish.")
    varying, common = override_keys(runs)
    groups = group_runs(runs, varying)
    matrix = pvalue_matrix(groups, resamples)
    text = report(sweep, runs, groups, varying, common, matrix, resamples)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(text)
        write_results_csv(out / "results.csv", runs)
        write_groups_csv(out / "groups.csv", groups)
        write_pvalues_csv(out / "pvalues.csv", groups, matrix)
        plot([group for group in groups if group.finished], out / "results.png")
    except OSError as err:
        raise DataError(f"cannot write the results to {out} ({err}); choose another folder with --out.") from err
    return text


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a Hydra multirun folder, e.g. outputs/multirun/<date_time>")
    parser.add_argument("--out", type=Path, default=None, help="where the result files go (default: the sweep)")
    parser.add_argument("--resamples", type=positive_int, default=10_000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    out = args.out or args.sweep
    try:
        text = compare(args.sweep, out, args.resamples)
    except SdrError as err:  # our own errors already say what to do: no traceback
        sys.exit(f"error: {err}")
    print(text)
    print(f"wrote results.md, results.csv, groups.csv, pvalues.csv and results.png to {out}")
