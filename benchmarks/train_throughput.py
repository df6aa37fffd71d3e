"""Training throughput (clips/s) per model, and the share of training time spent loading data (target <= 10%).

    python benchmarks/train_throughput.py [--models linear cnn vit simclr cnn+waveform] [--epochs 3] [--repeats 1]
    python benchmarks/train_throughput.py --models cnn -- data.batch_size=128     # Hydra overrides after --

Each model trains for --epochs epochs through the real config (`model=<name>`, plus `augment=waveform` for
`cnn+waveform`), composed and built as `train.py` does, with validation and checkpoints off so that only the
training loop runs. Per epoch, from its start to the end of its last step:

  clips/s         clips / wall time
  data loading    time in Lightning's profiled `[_TrainingEpochLoop].train_dataloader_next` (fetch + collate) and
                  `batch_to_device`, plus the wait before the epoch's first step (making the loader's iterator
                  and fetching the first batch, which Lightning does not profile), as a share of the wall time
  outside steps   the share of the wall time between steps (on_train_batch_end to the next on_train_batch_start):
                  data loading plus Lightning's own per-step bookkeeping (logging, progress, hooks)

The first epoch is a warm-up and is left out when there are more; the table shows the median over the other
epochs of every repeat. On a GPU the split is the CPU's time: loading overlaps the GPU's queued work, so the data
share bounds the real stall from above; the wall time waits for the GPU at the epoch's last step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from _common import add_common_arguments, configure, find_data, machine, markdown_table, median, run_config, write_json
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.profilers import Profiler

from sdr_lightning.tasks.train import build

RUNS = {
    "linear": ["model=linear"],
    "cnn": ["model=cnn"],
    "vit": ["model=vit"],
    "simclr": ["model=simclr"],
    "cnn+waveform": ["model=cnn", "augment=waveform"],
}
TARGET_DATA_SHARE = 0.10


class DataProfiler(Profiler):
    """Lightning's profiler hooks, timing only the training batches' fetch and transfer (little overhead)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self._started: dict[str, float] = {}

    @staticmethod
    def _is_data(action: str) -> bool:
        return action == "[_TrainingEpochLoop].train_dataloader_next" or (
            action.startswith("[Strategy]") and action.endswith(".batch_to_device"))

    def start(self, action_name: str) -> None:
        if self._is_data(action_name):
            self._started[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        started = self._started.pop(action_name, None)
        if started is not None:
            self.seconds += time.perf_counter() - started


class StepTimer(Callback):
    """Per training epoch: clips, wall time, time inside steps, and data-loading time (with DataProfiler)."""

    def __init__(self, profiler: DataProfiler) -> None:
        self.profiler = profiler
        self.epochs: list[dict[str, float]] = []
        self._mark = self._epoch_start = self._profiled = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append({"clips": 0, "wall_s": 0.0, "step_s": 0.0, "data_s": 0.0})
        self._epoch_start = self._mark = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._mark = time.perf_counter()
        if batch_idx == 0:  # the first fetch happened before Lightning's profiling starts: count the whole wait
            self.epochs[-1]["data_s"] += self._mark - self._epoch_start
            self._profiled = self.profiler.seconds

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        last = batch_idx == trainer.num_training_batches - 1
        if last and trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the epoch ends when the GPU has done its queued work
        now = time.perf_counter()
        epoch = self.epochs[-1]
        epoch["step_s"] += now - self._mark
        epoch["clips"] += len(batch["label"])
        if last:
            epoch["wall_s"] = now - self._epoch_start
            epoch["data_s"] += self.profiler.seconds - self._profiled


def measure(name: str, overrides: list[str], args: argparse.Namespace, data: Path, work: Path) -> list[dict]:
    """Train once; the timed epochs (all but the first, when there are several)."""
    cfg = run_config([*RUNS[name], f"trainer.max_epochs={args.epochs}", "++trainer.limit_val_batches=0",
                          "++trainer.num_sanity_val_steps=0", "callbacks=none", *overrides],
                         work / name.replace("+", "_"), data, work / "cache")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model, trainer = build(cfg)
    trainer.profiler = DataProfiler()
    timer = StepTimer(trainer.profiler)
    trainer.callbacks.insert(0, timer)
    trainer.fit(model, datamodule=datamodule)
    return timer.epochs[1:] if len(timer.epochs) > 1 else timer.epochs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats=1)
    parser.add_argument("--models", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is a warm-up")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)
    configure(args.threads)
    data = find_data(args.data)
    print(f"TRAIN clips from {data}; {machine()}; {args.epochs} epochs x {args.repeats} repeats per model\n",
          flush=True)
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="sdr_throughput_") as tmp:
        for name in args.models:
            epochs = [e for _ in range(args.repeats) for e in measure(name, args.overrides, args, data, Path(tmp))]
            rate = median([e["clips"] / e["wall_s"] for e in epochs])
            share = median([e["data_s"] / e["wall_s"] for e in epochs])
            outside = median([1 - e["step_s"] / e["wall_s"] for e in epochs])
            met = "yes" if share <= TARGET_DATA_SHARE else "no"
            rows.append([name, f"{rate:,.0f}", f"{median([e['wall_s'] for e in epochs]):.2f}",
                         f"{100 * share:.1f}%", met, f"{100 * outside:.1f}%", len(epochs)])
            figures[name] = {"clips_per_s": rate, "data_share": share, "outside_steps_share": outside,
                             "epochs": epochs}
            print(f"{name}: {rate:,.0f} clips/s, data loading {100 * share:.1f}%", flush=True)
    print()
    print(markdown_table(["model", "clips/s", "s per epoch", "data loading", f"<= {100 * TARGET_DATA_SHARE:.0f}%",
                          "outside steps", "epochs timed"], rows))
    write_json(args.out, {"benchmark": "train_throughput", "machine": machine(), "data": str(data),
                          "epochs": args.epochs, "repeats": args.repeats, "overrides": args.overrides,
                          "figures": figures})


if __name__ == "__main__":
    main()
