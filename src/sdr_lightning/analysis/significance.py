"""Paired bootstrap significance test for two systems scored on the same clips (Berg-Kirkpatrick, Burkett & Klein
2012, "An Empirical Investigation of Statistical Significance in NLP"), and a bootstrap CI for one accuracy.

Accuracy is a mean of per-clip 0/1 scores, so a bootstrap resample only matters through how many clips of each kind
it draws. Drawing those counts from a multinomial (binomial for one system) gives exactly the distribution that
resampling clip indices gives, in O(resamples) time and memory instead of O(resamples x clips).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdr_lightning.analysis.predictions import read_predictions
from sdr_lightning.errors import DataError, SdrError


@dataclass(frozen=True)
class BootstrapResult:
    accuracy_a: float
    accuracy_b: float
    difference: float  # accuracy_a - accuracy_b on the clips given
    p_value: float  # probability that A does not really beat B
    ci_low: float  # percentile interval of the resampled difference
    ci_high: float
    resamples: int
    n: int


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> BootstrapResult:
    a = as_correct(correct_a, "correct_a")
    b = as_correct(correct_b, "correct_b")
    if a.size != b.size:
        raise ValueError(f"correct_a has {a.size} clips but correct_b has {b.size}; "
                         "both must score the same clips in the same order.")
    check_resampling(resamples, level)
    n = a.size
    wins = int(np.count_nonzero(a & ~b))
    losses = int(np.count_nonzero(~a & b))
    # Each resample of n clips draws (A-only right, B-only right, tied) clips; its difference is (wins - losses) / n.
    counts = np.random.default_rng(seed).multinomial(n, [wins / n, losses / n, 1 - (wins + losses) / n],
                                                     size=resamples)
    margins = counts[:, 0] - counts[:, 1]
    observed = wins - losses
    # The resampled differences centre on the observed one, not on 0 as the null hypothesis wants; the paper's test
    # shifts them by the observed difference: p = P(delta_i - delta >= delta). Integers, so no rounding at the tie;
    # `>=` makes identical systems (every delta_i = 0) come out p = 1.
    p_value = float(np.count_nonzero(margins >= 2 * observed)) / resamples
    low, high = percentile_interval(margins / n, level)
    return BootstrapResult(accuracy_a=float(a.mean()), accuracy_b=float(b.mean()), difference=observed / n,
                           p_value=p_value, ci_low=low, ci_high=high, resamples=resamples, n=n)


def accuracy_ci(correct: np.ndarray, resamples: int = 10_000, seed: int = 0,
                level: float = 0.95) -> tuple[float, float]:
    c = as_correct(correct, "correct")
    check_resampling(resamples, level)
    hits = np.random.default_rng(seed).binomial(c.size, c.mean(), size=resamples)
    return percentile_interval(hits / c.size, level)


def as_correct(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one entry per clip), got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{name} is empty; a bootstrap needs at least one scored clip.")
    if array.dtype != bool:
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must be booleans (clip right or wrong), got values other than 0 and 1.")
        array = array.astype(bool)
    return array


def check_resampling(resamples: int, level: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level}.")


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def predictions_path(path: Path, split: str) -> Path:
    """A predictions.csv, or the run folder (or its eval folder) whose reports/<split>/ holds one."""
    if path.is_dir():
        for candidate in (path / "reports" / split / "predictions.csv", path / split / "predictions.csv"):
            if candidate.is_file():
                return candidate
        raise DataError(f"{path} has no reports/{split}/predictions.csv; pass a run folder or a predictions.csv.")
    return path


def paired_correct(path_a: Path, path_b: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip correctness of two prediction files, matched by clip identifier."""
    a, b = read_predictions(path_a), read_predictions(path_b)
    if set(a.identifiers) != set(b.identifiers):
        raise DataError(f"{path_a} and {path_b} do not cover the same clips ({len(a)} vs {len(b)} identifiers, "
                        f"{len(set(a.identifiers) ^ set(b.identifiers))} differ); compare runs evaluated on one split.")
    row_b = {identifier: i for i, identifier in enumerate(b.identifiers)}
    order = [row_b[identifier] for identifier in a.identifiers]
    return a.correct, b.correct[order]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Paired bootstrap test: does run A beat run B on the same clips? "
                    "e.g. sdr-significance outputs/runs/<cnn run> outputs/runs/<vit run>")
    parser.add_argument("a", type=Path, help="run folder or predictions.csv of system A")
    parser.add_argument("b", type=Path, help="run folder or predictions.csv of system B")
    parser.add_argument("--split", default="test", help="reports/<split>/ of a run folder (default: test)")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        path_a, path_b = predictions_path(args.a, args.split), predictions_path(args.b, args.split)
        result = paired_bootstrap(*paired_correct(path_a, path_b), resamples=args.resamples, seed=args.seed)
    except (SdrError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(f"A: {path_a}\nB: {path_b}\n"
          f"{result.n} clips: accuracy A {result.accuracy_a:.4f}, B {result.accuracy_b:.4f}, "
          f"A - B = {result.difference:+.4f} (95% CI {result.ci_low:+.4f} to {result.ci_high:+.4f})\n"
          f"p-value that A is not better than B: {result.p_value:.4f} ({result.resamples} paired bootstrap resamples)")


if __name__ == "__main__":
    main()
