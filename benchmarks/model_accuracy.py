"""DEV/TEST accuracy and training time of each model's default config, over several seeds.

    python benchmarks/model_accuracy.py --models cnn linear vit simclr --seeds 12345 1 2 3

Runs `train.py` once per (model, seed) under --out, then prints a Markdown table: per run, and per model the
mean ± std and median. Extra Hydra overrides go after `--`, e.g. `-- trainer.max_epochs=45`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(model: str, seed: int, out: Path, overrides: list[str]) -> dict:
    run_dir = out / f"{model}_seed{seed}"
    command = [sys.executable, "train.py", f"model={model}", f"seed={seed}", f"hydra.run.dir={run_dir}",
               "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *overrides]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((run_dir / "metrics.json").read_text())


def summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f} (median {statistics.median(values):.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["linear", "cnn", "vit", "simclr"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[12345])
    parser.add_argument("--out", type=Path, default=None, help="where runs go (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sdr_accuracy_"))

    print(f"runs under {out}\n")
    print("| model | seed | DEV acc | TEST acc | train time (s) | parameters |")
    print("|---|---|---|---|---|---|")
    results: dict[str, list[dict]] = {}
    for model in args.models:
        for seed in args.seeds:
            m = train(model, seed, out, args.overrides)
            results.setdefault(model, []).append(m)
            print(f"| {model} | {seed} | {m['val/acc']:.4f} | {m['test/acc']:.4f} | {m['train_time_s']:.0f} "
                  f"| {m['parameters']:,} |", flush=True)
    print("\n| model | runs | DEV acc | TEST acc | train time (s), median |")
    print("|---|---|---|---|---|")
    for model, runs in results.items():
        print(f"| {model} | {len(runs)} | {summary([r['val/acc'] for r in runs])} "
              f"| {summary([r['test/acc'] for r in runs])} "
              f"| {statistics.median(r['train_time_s'] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
