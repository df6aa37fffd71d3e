"""Shared fixtures: a small synthetic FSDD-like dataset and the real Hydra config composed onto tmp paths."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "conf"
SHARED_DATA = Path(os.environ.get("SDR_SHARED_DATA", ROOT.parent / "shared" / "speech_data"))

TRAIN_SPEAKERS = ["george", "jackson", "nicolas", "theo"]
EVAL_SPEAKERS = ["lucas", "yweweler"]
SAMPLE_RATE = 8000


def write_synthetic_dataset(folder: Path, takes: int = 2, seed: int = 0) -> Path:
    """Tone clips whose pitch encodes the digit (so models can learn), FSDD naming, reference-style TSV."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for speaker_index, speaker in enumerate(TRAIN_SPEAKERS + EVAL_SPEAKERS):
        for digit in range(10):
            for take in range(takes):
                identifier = f"{digit}_{speaker}_{take}"
                n = int(rng.integers(1200, 4800))
                t = np.arange(n) / SAMPLE_RATE
                freq = 300 + 150 * digit + 10 * speaker_index
                wave = 0.5 * np.sin(2 * np.pi * freq * t) * np.hanning(n) + 0.01 * rng.standard_normal(n)
                soundfile.write(folder / f"{identifier}.wav", wave.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
                if speaker in TRAIN_SPEAKERS:
                    split = "TRAIN"
                else:
                    split = "DEV" if (digit + take) % 2 == 0 else "TEST"
                rows.append([identifier, speaker, split, digit, f"speech_data/{identifier}.wav"])
    # one clip shorter than an FFT window: must still give a prediction
    soundfile.write(folder / "3_lucas_99.wav", (0.3 * rng.standard_normal(120)).astype(np.float32), SAMPLE_RATE)
    rows.append(["3_lucas_99", "lucas", "TEST", 3, "speech_data/3_lucas_99.wav"])
    write_metadata(folder / "SDR_metadata.tsv", rows)
    return folder


def write_metadata(path: Path, rows: list[list], header: list[str] | None = None) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(header or ["", "identifier", "speaker", "split", "label", "file"])
        for index, row in enumerate(rows):
            writer.writerow([index, *row])


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("speech_data"))


def compose_config(output_dir: Path, overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """The real `conf/<config_name>.yaml` with outputs under `output_dir`, as `python train.py` would see it."""
    paths = [
        f"paths.root_dir={output_dir}",
        f"paths.output_dir={output_dir}",
        f"paths.log_dir={output_dir}",
        f"paths.cache_dir={output_dir}/cache",
    ]
    quiet = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.accelerator=cpu"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            return_hydra_config=True,
            overrides=[*paths, *(quiet if config_name == "train" else []), *(overrides or [])],
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path, synthetic_data: Path):
    """Compose the real config on the synthetic data: make_cfg("model=vit", "debug=fast_dev_run")."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(tmp_path, [f"data.dir={synthetic_data}", "data.batch_size=16", *overrides])

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "SDR_metadata.tsv").is_file():
        message = f"real FSDD clips not found at {SHARED_DATA} (set SDR_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI always has the data: never let these tests silently vanish there
        pytest.skip(message)
    return SHARED_DATA
