"""Peak memory of a training run per model: the process's peak RSS, and the GPU's peak allocation when on one.

    python benchmarks/peak_memory.py [--models linear cnn vit simclr cnn+waveform] [--epochs 2] [--repeats 1]
    python benchmarks/peak_memory.py --models vit -- data.batch_size=128            # Hydra overrides after --

Each run is a real `python train.py model=<name> trainer.max_epochs=<--epochs>` in its own process, with its
final DEV/TEST evaluation and reports, and a fresh cache folder (so it decodes and featurizes the clips, as a
first run does). The peak resident set size comes from the kernel's accounting of that one process
(os.wait4's ru_maxrss); the GPU figure is torch.cuda.max_memory_allocated, which train.py writes to the run's
metrics.json when it trains on a GPU. The first row is the same for a process that only imports the project
(torch, Lightning, Hydra): what every run pays before any data. With data.num_workers > 0 the worker processes
are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, add_common_arguments, find_data, markdown_table, median, write_json

RUNS = {
    "linear": ["model=linear"],
    "cnn": ["model=cnn"],
    "vit": ["model=vit"],
    "simclr": ["model=simclr"],
    "cnn+waveform": ["model=cnn", "augment=waveform"],
}


# Linux charges a child with the resident pages it had before its exec, which under vfork are the parent's (here
# torch and all). So a small Python process starts each measured command and reports that command's ru_maxrss
# (os.wait4): the floor is its own ~15 MiB, not this process's hundreds.
_MEASURE = ("import os, subprocess, sys; child = subprocess.Popen(sys.argv[2:]); "
            "_, status, usage = os.wait4(child.pid, 0); open(sys.argv[1], 'w').write(str(usage.ru_maxrss)); "
            "sys.exit(os.waitstatus_to_exitcode(status))")


def peak_rss_mb(command: list[str], env: dict[str, str], log: Path) -> float:
    """Run `command` to completion; its peak RSS in MiB (Linux reports ru_maxrss in KiB)."""
    result = log.with_suffix(".maxrss")
    with log.open("w") as output:
        code = subprocess.call([sys.executable, "-I", "-c", _MEASURE, str(result), *command], cwd=ROOT, env=env,
                               stdout=output, stderr=subprocess.STDOUT)
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise SystemExit(f"error: {' '.join(command)} failed ({code}); its output ends:\n{tail}")
    return int(result.read_text()) / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats=1)
    parser.add_argument("--models", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--epochs", type=int, default=2, help="trainer.max_epochs of each run")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)
    data = find_data(args.data)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    print(f"clips from {data}; {args.epochs} epochs per run; median of {args.repeats}\n", flush=True)
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="sdr_memory_") as tmp:
        work = Path(tmp)
        imports = [sys.executable, "-c", "import torch, pytorch_lightning, hydra, sdr_lightning.tasks.train"]
        baseline = median([peak_rss_mb(imports, env, work / "imports.log") for _ in range(args.repeats)])
        rows.append(["(imports only)", f"{baseline:,.0f}", "-", "-"])
        figures["imports"] = {"peak_rss_mb": baseline}
        for name in args.models:
            rss, gpu = [], []
            for repeat in range(args.repeats):
                run_dir = work / f"{name.replace('+', '_')}_{repeat}"
                command = [sys.executable, "train.py", *RUNS[name], f"trainer.max_epochs={args.epochs}",
                           f"hydra.run.dir={run_dir}", f"paths.data_dir={data}", f"paths.cache_dir={run_dir}/cache",
                           "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                           *args.overrides]
                rss.append(peak_rss_mb(command, env, work / f"{run_dir.name}.log"))
                metrics = json.loads((run_dir / "metrics.json").read_text())
                if "gpu_max_memory_allocated_mb" in metrics:
                    gpu.append(metrics["gpu_max_memory_allocated_mb"])
            figures[name] = {"peak_rss_mb": median(rss), "gpu_max_memory_allocated_mb": median(gpu) if gpu else None,
                             "runs_rss_mb": rss}
            rows.append([name, f"{median(rss):,.0f}", f"{median(rss) - baseline:,.0f}",
                         f"{median(gpu):,.0f}" if gpu else "- (CPU run)"])
            print(f"{name}: peak RSS {median(rss):,.0f} MiB", flush=True)
    print()
    print(markdown_table(["model", "peak RSS (MiB)", "above imports (MiB)", "GPU max allocated (MiB)"], rows))
    write_json(args.out, {"benchmark": "peak_memory", "data": str(data), "epochs": args.epochs,
                          "repeats": args.repeats, "overrides": args.overrides, "figures": figures})


if __name__ == "__main__":
    main()
