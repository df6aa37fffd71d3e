"""The unseen-speaker accuracy targets: each row's preset over several seeds (or the six LOSO folds), TEST mean.

    python benchmarks/generalization_targets.py                       # every row, 5 seeds
    python benchmarks/generalization_targets.py --rows cnn linear --seeds 1 2
    python benchmarks/generalization_targets.py --dry-run             # print the commands only

Each row is one Hydra multirun of `train.py` over `conf/experiment/<preset>.yaml`; runs go under --out. A second
stage (`after`) runs once per seed instead, starting from its first stage's run of that seed (`model.init_from`, its
last checkpoint). Model selection inside every run uses DEV only; TEST is read from each run's metrics.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    key: str
    setting: str
    study: str
    preset: str
    target: float | None = None  # absolute TEST accuracy
    beats: str | None = None  # or: this many points above another row's mean
    margin: float = 0.0
    folds: bool = False  # the six leave-one-speaker-out folds instead of seeds
    after: str | None = None  # a second stage: starts from this row's run of the same seed


ROWS = [
    Row("cnn", "cnn, 4 training speakers", "0.81", "best_cnn", target=0.97),
    Row("cnn_ensemble", "cnn, 4 training speakers, four CNNs in one model", "0.81", "cnn_ensemble", target=0.97),
    Row("vit", "vit, 4 training speakers", "0.75", "best_vit", target=0.95),
    Row("linear", "linear on downsampled Mel", "0.58", "best_linear", target=0.75),
    Row("george", "trained on george only, best recipe", "0.18-0.25", "best_george", target=0.70),
    Row("supervised_george", "supervised, george's labels only (SimCLR's reference)", "0.18", "supervised_george"),
    Row("simclr", "SimCLR probe, george's labels only (unlabeled: 4 training speakers)", "0.11",
        "simclr_george_best", beats="supervised_george", margin=0.05),
    Row("simclr_clusters", "SimCLR, then the other speakers labeled by cluster (george's labels only)", "0.11",
        "simclr_george_clusters", beats="supervised_george", margin=0.05, after="simclr"),
    Row("loso", "leave-one-speaker-out, cnn, mean of 6 folds", "-", "loso_cnn", target=0.95, folds=True),
]


QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "report.projector=false",
         "report.misclassified_audio=0"]


def sweep(row: Row, seeds: list[int], out: Path, extra: list[str], dry_run: bool) -> list[dict]:
    folder = out / row.key
    if row.after:  # one run per seed, each from the first stage's run of that seed (its sweep job, in seed order)
        commands = [[sys.executable, "train.py", f"experiment={row.preset}", f"seed={seed}",
                     f"model.init_from={out / row.after / str(job) / 'checkpoints' / 'last.ckpt'}",
                     f"hydra.run.dir={folder / str(job)}", *QUIET, *extra] for job, seed in enumerate(seeds)]
    else:
        varying = "data.fold=0,1,2,3,4,5" if row.folds else "seed=" + ",".join(map(str, seeds))
        commands = [[sys.executable, "train.py", "-m", f"experiment={row.preset}", varying,
                     f"hydra.sweep.dir={folder}", *QUIET, *extra]]
    for command in commands:
        print("$ " + " ".join(command[1:]), flush=True)
        if not dry_run:
            subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [] if dry_run else [json.loads(path.read_text()) for path in sorted(folder.glob("*/metrics.json"))]


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=[row.key for row in ROWS], default=[row.key for row in ROWS])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--out", type=Path, default=None, help="where runs go (default: a temporary folder)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sdr_targets_"))
    rows = [row for row in ROWS if row.key in args.rows]
    if any(row.beats or row.after for row in rows):  # a relative target needs its reference row, a stage its first
        wanted = {key for row in rows for key in (row.beats, row.after) if key} | {row.key for row in rows}
        rows = [row for row in ROWS if row.key in wanted]

    print(f"runs under {out}\n")
    means: dict[str, float] = {}
    lines = []
    for row in rows:
        started = time.perf_counter()
        runs = sweep(row, args.seeds, out, args.overrides, args.dry_run)
        if not runs:
            continue
        minutes = (time.perf_counter() - started) / 60
        test = [r["test/acc"] for r in runs]
        means[row.key] = statistics.mean(test)
        if row.beats:
            goal = means[row.beats] + row.margin
            target = f">= {row.beats} + {row.margin * 100:.0f} pts ({goal:.4f})"
        elif row.target is not None:
            goal, target = row.target, f">= {row.target:.2f}"
        else:
            goal, target = None, "(reference)"
        met = "-" if goal is None else ("yes" if means[row.key] >= goal else "no")
        lines.append(f"| {row.setting} | `{row.preset}` | {row.study} | {target} | {mean_std(test)} (n={len(test)}) "
                     f"| {mean_std([r['val/acc'] for r in runs])} | {met} | {minutes:.1f} |")
        print(lines[-1], flush=True)
    if lines:
        print("\n| setting | preset | seed study (TEST) | target | TEST mean ± std | DEV mean ± std | met | minutes |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
