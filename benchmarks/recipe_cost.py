"""What a recipe costs next to another, measured side by side in one run: wall time to train it from a cold cache
(decoding, featurizing, an augmentation bank, every epoch) and single-clip latency (raw 8 kHz waveform -> digit,
eager PyTorch, one thread), with the ratios.

    python benchmarks/recipe_cost.py                          # today's default against model=cnn
    python benchmarks/recipe_cost.py --baseline model=cnn --candidate experiment=robust_cnn --threads 2 [--epochs 3]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from _common import clear_memory_cache, configure, find_data, machine, markdown_table, run_config, write_json

from sdr_lightning.audio.io import load_audio
from sdr_lightning.tasks.train import build


def train_seconds(overrides: list[str], data: Path, work: Path, epochs: int | None) -> tuple[float, torch.nn.Module]:
    clear_memory_cache()  # cold: decode, featurize and build any bank again, as a first run does
    extra = [f"trainer.max_epochs={epochs}"] if epochs else []
    cfg = run_config([*overrides, *extra, "callbacks=none", "logger=csv"], work, data, work / "cache")
    started = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    return time.perf_counter() - started, model.eval()


def latencies_ms(models: list[torch.nn.Module], clip: torch.Tensor, runs: int) -> list[float]:
    """Median single-clip latency of each model, one thread, the models timed in turn round after round, so that
    whatever else loads the machine weighs on each alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    waveform, lengths = clip[None], torch.tensor([len(clip)])
    times: list[list[float]] = [[] for _ in models]
    try:
        with torch.inference_mode():
            for round_ in range(runs + 20):
                for model, measured in zip(models, times):
                    started = time.perf_counter()
                    model(waveform, lengths).argmax()
                    if round_ >= 20:  # the first rounds warm up the allocator and caches
                        measured.append((time.perf_counter() - started) * 1000)
    finally:
        torch.set_num_threads(threads)
    return [statistics.median(measured) for measured in times]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="model=cnn", help="overrides of the reference recipe")
    parser.add_argument("--candidate", default="", help="overrides of the recipe measured against it (default: none, "
                        "i.e. what `python train.py` trains)")
    parser.add_argument("--epochs", type=int, default=None, help="train this many epochs (default: the recipes' own)")
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--data", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    configure(args.threads)
    data = find_data(args.data)
    clip = load_audio(sorted(data.glob("*.wav"))[0])
    print(f"{machine()}; latency on a {len(clip) / 8000:.2f} s clip, one thread, median of {args.latency_runs}\n",
          flush=True)
    figures, models = {}, []
    for name, overrides in (("baseline", args.baseline), ("candidate", args.candidate)):
        with tempfile.TemporaryDirectory() as work:
            seconds, model = train_seconds(shlex.split(overrides), data, Path(work), args.epochs)
        models.append(model)
        figures[name] = {"overrides": overrides, "train_s": seconds,
                         "parameters": sum(p.numel() for p in model.parameters())}
        print(f"{name}: trained in {seconds:.0f} s", flush=True)
    for figure, latency in zip(figures.values(), latencies_ms(models, clip, args.latency_runs)):
        figure["latency_ms"] = latency
    rows = [[name, f"`{f['overrides'] or '(defaults)'}`", f"{f['train_s']:.0f}", f"{f['latency_ms']:.2f}",
             f"{f['parameters']:,}"] for name, f in figures.items()]
    ratio_train = figures["candidate"]["train_s"] / figures["baseline"]["train_s"]
    ratio_latency = figures["candidate"]["latency_ms"] / figures["baseline"]["latency_ms"]
    rows.append(["candidate / baseline", "", f"{ratio_train:.2f}x", f"{ratio_latency:.2f}x", ""])
    print("\n" + markdown_table(["recipe", "overrides", "training wall s (cold)", "single-clip latency ms",
                                 "parameters"], rows))
    write_json(args.out, {"machine": machine(), "recipes": figures, "train_ratio": ratio_train,
                          "latency_ratio": ratio_latency})


if __name__ == "__main__":
    main()
