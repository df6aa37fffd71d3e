"""Wall time of `paired_bootstrap` (median of 5 runs), next to naive clip-index resampling for reference.

    python benchmarks/bootstrap_speed.py [--resamples 10000] [--clips 500 3000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from sdr_lightning.analysis.significance import paired_bootstrap

REPEATS = 5


def index_resampling(a: np.ndarray, b: np.ndarray, resamples: int, seed: int = 0, chunk: int = 1000) -> float:
    """The textbook version: draw n clip indices per resample (chunked so memory stays bounded)."""
    rng = np.random.default_rng(seed)
    d = a.astype(np.int8) - b.astype(np.int8)
    n, observed = d.size, int(d.sum())
    exceed = 0
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        exceed += int(np.count_nonzero(d[idx].sum(axis=1, dtype=np.int64) >= 2 * observed))
    return exceed / resamples


def median_seconds(call: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--clips", type=int, nargs="+", default=[500, 3000])
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    print(f"median of {REPEATS} runs, {args.resamples:,} resamples\n")
    print("| clips | paired_bootstrap (ms) | index resampling (ms) |")
    print("|---|---|---|")
    for n in args.clips:
        a = rng.random(n) < 0.92
        b = rng.random(n) < 0.90
        fast = median_seconds(lambda: paired_bootstrap(a, b, resamples=args.resamples))
        naive = median_seconds(lambda: index_resampling(a, b, args.resamples))
        print(f"| {n:,} | {1000 * fast:.2f} | {1000 * naive:.1f} |", flush=True)


if __name__ == "__main__":
    main()
