"""Dropout's cost on the CPU: torch's `nn.Dropout` against `Dropout16` (models/dropout.py, the CNN's
`model.encoder.fast_dropout`), forward and backward on the activations of a training batch, timed in turn.

    python benchmarks/dropout_mask.py [--shape 64 256 100] [--p 0.2] [--repeats 30] [--threads 2]

The default shape is a batch of `robust_cnn*`'s packed CNN (64 clips, 4 members x 64 channels, 100 frames, about
1 s); each of its four blocks applies dropout once per step. Each repeat times both layers once, alternating which
goes first, and the table shows the medians and their ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import configure, machine, markdown_table, median, write_json  # benchmarks/_common.py
from torch import nn

from sdr_lightning.models.dropout import Dropout16


def step_ms(layer: nn.Module, x: torch.Tensor) -> float:
    """One forward and backward pass through `layer`, in ms."""
    x.grad = None
    start = time.perf_counter()
    layer(x).sum().backward()
    return (time.perf_counter() - start) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs="+", default=[64, 256, 100])
    parser.add_argument("--p", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    configure(args.threads)
    layers = {"nn.Dropout": nn.Dropout(args.p), "Dropout16": Dropout16(args.p)}
    x = torch.randn(*args.shape, requires_grad=True)
    for layer in layers.values():  # warm-up
        step_ms(layer, x)
    times: dict[str, list[float]] = {name: [] for name in layers}
    for repeat in range(args.repeats):
        order = list(layers) if repeat % 2 == 0 else list(reversed(layers))
        for name in order:
            times[name].append(step_ms(layers[name], x))
    medians = {name: median(values) for name, values in times.items()}
    ratio = medians["nn.Dropout"] / medians["Dropout16"]
    print(f"{machine()}; shape {tuple(args.shape)}, p={args.p}, median of {args.repeats}\n")
    print(markdown_table(["layer", "forward + backward ms"], [[name, f"{ms:.2f}"] for name, ms in medians.items()]))
    print(f"\nnn.Dropout / Dropout16: {ratio:.2f}x")
    write_json(args.out,
               {"machine": machine(), "shape": args.shape, "p": args.p, "median_ms": medians, "ratio": ratio})


if __name__ == "__main__":
    main()
