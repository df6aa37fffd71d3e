"""Wall time for a preset to reach a DEV accuracy (default: `cnn_ensemble` to val/acc >= 0.95; target <= 3 min).

    python benchmarks/time_to_accuracy.py [--preset cnn_ensemble] [--threshold 0.95] [--seeds 1 2 3 4 5] [--threads 2]
    python benchmarks/time_to_accuracy.py -- trainer.max_epochs=60           # Hydra overrides after --

Each seed trains `experiment=<preset>` through the real config, built as `train.py` does, with a fresh cache
folder (the clips are decoded and featurized in the run: the first-run cost). The clock starts before the data
setup and stops at the first validation with val/acc >= --threshold, where Lightning's EarlyStopping
(`stopping_threshold`) ends the run; the final DEV/TEST evaluation and reports of `train.py` are not timed.
A seed that never gets there reports "not reached", with its best DEV accuracy and when it had it. The summary is
the median over all runs of the time to the threshold, a run that never reached it counting as the slowest.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
from _common import (
    add_common_arguments,
    clear_memory_cache,
    configure,
    find_data,
    machine,
    markdown_table,
    median,
    run_config,
    write_json,
)
from pytorch_lightning.callbacks import Callback, EarlyStopping

from sdr_lightning.tasks.train import build

TARGET_S = 180.0
METRIC = "val/acc"  # DEV accuracy, whatever `monitor` the preset sets


class ValidationClock(Callback):
    """Seconds since `started` at the start of training and at each validation, with the monitored value."""

    def __init__(self, started: float, metric: str) -> None:
        self.started, self.metric = started, metric
        self.setup_s = float("nan")
        self.history: list[tuple[int, float, float]] = []  # (epoch, value, seconds)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.setup_s = time.perf_counter() - self.started

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])
        self.history.append((trainer.current_epoch, value, time.perf_counter() - self.started))


def run_seed(preset: str, seed: int, threshold: float, overrides: list[str], data: Path, work: Path) -> dict:
    clear_memory_cache()  # a cold start: decode and featurize again
    cfg = run_config([f"experiment={preset}", f"seed={seed}", *overrides], work / f"seed{seed}", data,
                         work / f"cache_seed{seed}")
    started = time.perf_counter()
    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule, model, trainer = build(cfg)
    clock = ValidationClock(started, METRIC)
    stop = EarlyStopping(monitor=METRIC, mode="max", stopping_threshold=threshold,
                         patience=10**9, check_on_train_epoch_end=False)
    trainer.callbacks[:0] = [clock, stop]  # ahead of the checkpoint callbacks, which Lightning keeps last
    trainer.fit(model, datamodule=datamodule)
    total = time.perf_counter() - started
    reached = next(((epoch, s) for epoch, value, s in clock.history if value >= threshold), None)
    best_epoch, best, best_s = max(clock.history, key=lambda h: (h[1], -h[2]))
    # epochs counted from 1: "after 3 epochs" is the validation at the end of the third
    return {"seed": seed, "reached": reached is not None, "epochs": reached[0] + 1 if reached else None,
            "seconds": reached[1] if reached else None, "setup_s": clock.setup_s, "best_acc": best,
            "best_epochs": best_epoch + 1, "best_s": best_s, "total_s": total, "epochs_run": len(clock.history)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats=1)
    parser.add_argument("--preset", default="cnn_ensemble", help="conf/experiment/<preset>.yaml")
    parser.add_argument("--threshold", type=float, default=0.95, help="DEV accuracy to reach (val/acc)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)
    configure(args.threads)
    data = find_data(args.data)
    print(f"experiment={args.preset} to val/acc >= {args.threshold} on {data}; {machine()}\n", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="sdr_time_to_acc_") as tmp:
        for seed in args.seeds:
            for _ in range(args.repeats):
                r = run_seed(args.preset, seed, args.threshold, args.overrides, data, Path(tmp))
                results.append(r)
                print(f"seed {seed}: " + (f"reached after {r['epochs']} epochs, {r['seconds']:.1f} s" if r["reached"]
                                          else f"not reached, best {r['best_acc']:.4f}"), flush=True)
    rows = [[r["seed"], f"{r['setup_s']:.1f}",
             f"{r['seconds']:.1f} s ({r['epochs']} epochs)" if r["reached"] else "not reached",
             f"{r['best_acc']:.4f} ({r['best_epochs']} epochs, {r['best_s']:.1f} s)", r["epochs_run"],
             f"{r['total_s']:.1f}"] for r in results]
    print()
    print(markdown_table(["seed", "setup s", f"wall time to val/acc >= {args.threshold}", "best DEV acc (when)",
                          "epochs run", "total s"], rows))
    # A run that never reached the threshold counts as slower than any that did, so failures pull the median up.
    times = [r["seconds"] if r["reached"] else math.inf for r in results]
    reached = sum(r["reached"] for r in results)
    time_s = median(times)
    verdict = "met" if time_s <= TARGET_S else "not met"
    shown = f"{time_s:.1f} s" if math.isfinite(time_s) else "not reached"
    print(f"\nreached by {reached}/{len(results)} runs; median time to the threshold over all runs (a run that never "
          f"reached it counts as the slowest): {shown}; target <= {TARGET_S:.0f} s: {verdict}")
    if reached < len(results):
        print("best DEV acc of the runs that did not reach it: "
              + ", ".join(f"{r['best_acc']:.4f} (seed {r['seed']})" for r in results if not r["reached"]))
    write_json(args.out, {"benchmark": "time_to_accuracy", "machine": machine(), "data": str(data),
                          "preset": args.preset, "threshold": args.threshold, "overrides": args.overrides,
                          "median_s": time_s if math.isfinite(time_s) else None, "target_s": TARGET_S,
                          "met": verdict == "met", "runs": results})


if __name__ == "__main__":
    main()
