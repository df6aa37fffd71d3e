"""What the benchmarks share: finding the clips, composing the real config in-process, medians, tables.

Imported by the scripts next to it (`from _common import ...`): running `python benchmarks/<script>.py` puts this
folder first on sys.path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from sdr_lightning.analysis.tables import markdown_table  # noqa: F401 - the benchmarks' tables
from sdr_lightning.config import compose_config
from sdr_lightning.data.cache import clear_memory
from sdr_lightning.data.metadata import METADATA_FILENAME

ROOT = Path(__file__).resolve().parents[1]
QUIET_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning.fabric")


def find_data(given: str | Path | None) -> Path:
    """The folder holding SDR_metadata.tsv and the clips: --data, $SDR_DATA_DIR, ../shared/speech_data, speech_data."""
    candidates = [given, os.environ.get("SDR_DATA_DIR"), ROOT.parent / "shared" / "speech_data", ROOT / "speech_data"]
    for folder in candidates:
        if folder and (Path(folder) / METADATA_FILENAME).is_file():
            return Path(folder)
    tried = ", ".join(str(c) for c in candidates if c)
    raise SystemExit(f"error: no {METADATA_FILENAME} in {tried}. Pass --data /path/to/speech_data "
                     "(or run `python train.py` once to download FSDD).")


def add_common_arguments(parser: argparse.ArgumentParser, repeats: int) -> None:
    parser.add_argument("--data", default=None, help="folder with SDR_metadata.tsv and the clips "
                        "(default: $SDR_DATA_DIR, ../shared/speech_data, speech_data)")
    parser.add_argument("--repeats", type=int, default=repeats, help="runs per figure; the table shows their median")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")


def configure(threads: int | None) -> None:
    """Thread count, and no Lightning chatter between the table's rows."""
    if threads:
        torch.set_num_threads(threads)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")


def run_config(overrides: Sequence[str], run_dir: Path, data: Path, cache_dir: Path) -> DictConfig:
    """`conf/train.yaml` with `overrides`, as `python train.py` composes it (sdr_lightning.config.compose_config),
    writing under `run_dir`, reading the clips in `data` and caching under `cache_dir`."""
    quiet = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    return compose_config([*quiet, f"paths.data_dir={data}", f"paths.cache_dir={cache_dir}", *overrides],
                          output_dir=run_dir)


def clear_memory_cache() -> None:
    """Forget the clips and features decoded earlier in this process, so the next setup reads disk again."""
    clear_memory()


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # GPU work is asynchronous: count it where it was queued
    return result, time.perf_counter() - started


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> str:
    """One line on where the figures come from (they depend on it)."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, {device}, torch {torch.__version__}"


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {path}")
