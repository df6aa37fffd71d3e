"""Inference on the CPU, from a raw 8 kHz waveform to a digit: single-clip latency (median and 90th percentile
over --runs calls) and batch throughput (clips/s at --batch clips, median of --batch-repeats), for eager PyTorch,
the TorchScript export and the ONNX export run by ONNX Runtime, with 1 thread and with the default thread count.

    python benchmarks/inference_latency.py [--ckpt <run>/checkpoints/<best>.ckpt] [--model cnn] [--override ...]
        [--runs 200] [--batch 256] [--threads 1 0] [--data speech_data] [--out latency.json]

Without --ckpt it builds `--model` (with any `--override`s) from the composed config with random weights: latency
does not depend on the weights. For a packed CNN ensemble (model.encoder.members > 1) it also times the single clip
on the library's grouped convolution kernel beside the encoder's matrix-product path, in turn (docs/speed.md).
The single clip is a real FSDD clip of median length (about 0.5 s) when the clips are found (--data,
$SDR_DATA_DIR, ../shared/speech_data or speech_data), else a 0.5 s synthetic tone burst; the batch is --batch
clips drawn from the same place. The model trims edge silence itself, so the clip's content sets its frame count.
Target (issue 5): single-clip median <= 5 ms.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine, markdown_table, write_json  # benchmarks/_common.py, first on sys.path when run
from hydra.utils import instantiate

from sdr_lightning.audio.io import load_audio
from sdr_lightning.config import compose_config
from sdr_lightning.data.datamodule import collate_waveforms
from sdr_lightning.tasks.checkpoint import load_checkpoint
from sdr_lightning.tasks.export import export_model

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 5.0


def find_data(given: str | None) -> Path | None:
    """--data (which must hold clips), else the first usual place that does, else None (synthetic clips)."""
    if given:
        if not any(Path(given).glob("*.wav")):
            raise SystemExit(f"error: --data {given}: no .wav clips there.")
        return Path(given)
    candidates = [os.environ.get("SDR_DATA_DIR"), ROOT.parent / "shared" / "speech_data", ROOT / "speech_data"]
    for folder in candidates:
        if folder and any(Path(folder).glob("*.wav")):
            return Path(folder)
    return None


def build_model(ckpt: str | None, model: str, overrides: Sequence[str] = ()) -> torch.nn.Module:
    if ckpt:
        return load_checkpoint(ckpt).model
    cfg = compose_config([f"model={model}", *overrides], output_dir=".")
    torch.manual_seed(0)
    return instantiate(cfg.model, _recursive_=False, _convert_="all").eval()


def clips(data: Path | None, batch: int) -> tuple[torch.Tensor, list[torch.Tensor], str]:
    """One median-length clip and `batch` clips for throughput."""
    if data is None:
        t = torch.arange(4000) / 8000
        burst = 0.3 * torch.sin(2 * torch.pi * 440 * t) * torch.hann_window(4000, periodic=False)
        return burst, [burst] * batch, "synthetic 0.5 s tone bursts"
    files, draw = sorted(data.glob("*.wav")), random.Random(0)
    files = draw.sample(files, batch) if len(files) >= batch else draw.choices(files, k=batch)
    waves = [load_audio(path) for path in files]
    single = sorted(waves, key=len)[len(waves) // 2]
    return single, waves, f"{batch} FSDD clips from {data} (single clip: median length, {len(single) / 8000:.2f} s)"


def timings_ms(call: Callable[[], object], runs: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):  # kernels, allocator, ORT's first-run planning
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


Runner = Callable[[torch.Tensor, torch.Tensor], Any]


def runners(model: torch.nn.Module, folder: Path, threads: int) -> dict[str, Runner]:
    """Each backend as waveform batch + lengths -> predicted digits (argmax included: the time is to a digit)."""
    import onnxruntime

    scripted = torch.jit.load(str(folder / "model.pt"))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's default (one per physical core)
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def eager(waveform: torch.Tensor, lengths: torch.Tensor):
        with torch.inference_mode():
            return model(waveform, lengths).argmax(-1)

    def torchscript(waveform: torch.Tensor, lengths: torch.Tensor):
        with torch.inference_mode():
            return scripted(waveform, lengths).argmax(-1)

    def onnx(waveform: torch.Tensor, lengths: torch.Tensor):
        logits = session.run(["logits"], {"waveform": waveform.numpy(), "lengths": lengths.numpy()})[0]
        return np.argmax(logits, axis=-1)

    return {"eager PyTorch": eager, "TorchScript": torchscript, "ONNX Runtime": onnx}


def grouped_kernel_ab(model: torch.nn.Module, one: tuple[torch.Tensor, torch.Tensor], runs: int) -> tuple[float, float]:
    """A packed ensemble's single-clip median ms, eager: its matrix-product path (what one clip gets) and the library's
    grouped kernel, timed in turn call after call so that the machine's load weighs on both alike."""
    encoder, times = model.encoder, {True: [], False: []}
    with torch.inference_mode():
        try:
            for round_ in range(runs + 10):
                for matmul, measured in times.items():
                    encoder.single_clip_matmul = matmul
                    start = time.perf_counter()
                    model(*one).argmax(-1)
                    if round_ >= 10:
                        measured.append((time.perf_counter() - start) * 1000)
        finally:
            encoder.single_clip_matmul = True
    return statistics.median(times[True]), statistics.median(times[False])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="a trained checkpoint (default: --model with random weights)")
    parser.add_argument("--model", default="cnn", help="conf/model/<name> when no --ckpt (default: cnn)")
    parser.add_argument("--override", nargs="*", default=[], help="config overrides for --model, e.g. "
                        "model.encoder.members=4 model.encoder.channels=64 (a packed ensemble)")
    parser.add_argument("--runs", type=int, default=200, help="single-clip calls timed per backend")
    parser.add_argument("--batch", type=int, default=256, help="clips per throughput batch")
    parser.add_argument("--batch-repeats", type=int, default=5, help="timed throughput batches per backend")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="thread counts; 0: the default")
    parser.add_argument("--data", help="folder of FSDD clips (default: $SDR_DATA_DIR, ../shared/speech_data)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    default_threads = torch.get_num_threads()
    model = build_model(args.ckpt, args.model, args.override)
    single, waves, source = clips(find_data(args.data), args.batch)
    one = (single[None], torch.tensor([len(single)]))
    batch = collate_waveforms([(w, 0, 0) for w in waves])
    many = (batch["waveform"], batch["lengths"])
    print(machine())
    print(f"{type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters); {source}")

    rows, ab = [], None
    with tempfile.TemporaryDirectory() as folder:
        results = export_model(model, Path(folder), ["torchscript", "onnx"])  # also checks the exports' logits
        print("exports' max |logit difference| from eager: "
              + ", ".join(f"{r.format} {r.max_abs_diff:.1e}" for r in results))
        for threads in args.threads:
            torch.set_num_threads(threads or default_threads)
            for name, predict in runners(model, Path(folder), threads).items():
                single_ms = timings_ms(lambda: predict(*one), args.runs)
                batch_ms = timings_ms(lambda: predict(*many), args.batch_repeats, warmup=1)
                rows.append((name, threads or default_threads, statistics.median(single_ms),
                             float(np.percentile(single_ms, 90)), args.batch / statistics.median(batch_ms) * 1000))
            if threads == 1 and getattr(getattr(model, "encoder", None), "members", 1) > 1:
                ab = grouped_kernel_ab(model, one, args.runs)
    torch.set_num_threads(default_threads)

    headers = ["backend", "threads", "single clip: median ms", "p90 ms", f"batch of {args.batch}: clips/s"]
    print("\n" + markdown_table(headers, [(name, threads, f"{median:.2f}", f"{p90:.2f}", f"{throughput:,.0f}")
                                          for name, threads, median, p90, throughput in rows]))
    if ab:
        print(f"\npacked ensemble, one clip, eager, 1 thread, in turn: grouped convolutions as a matrix product "
              f"{ab[0]:.2f} ms, the library's grouped kernel {ab[1]:.2f} ms ({ab[1] / ab[0]:.2f}x)")
    eager_one = next(median for name, _, median, _, _ in rows if name == "eager PyTorch")
    verdict = "met" if eager_one <= TARGET_MS else "NOT met"
    print(f"\ntarget: single clip <= {TARGET_MS:.0f} ms median; eager PyTorch with {rows[0][1]} thread(s): "
          f"{eager_one:.2f} ms ({verdict})")
    write_json(args.out, {"machine": machine(), "model": type(model).__name__, "clips": source,
                          "target_ms": TARGET_MS, "target_met": eager_one <= TARGET_MS,
                          "packed_single_clip_ms": None if ab is None else {"matmul": ab[0], "library_kernel": ab[1]},
                          "figures": [dict(zip(("backend", "threads", "median_ms", "p90_ms", "clips_per_s"), row))
                                      for row in rows]})


if __name__ == "__main__":
    main()
