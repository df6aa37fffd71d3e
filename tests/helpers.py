"""What tests share besides fixtures: the repository's paths, a small synthetic FSDD-like dataset, and the real
config composed onto a test's folder (sdr_lightning.config.compose_config, as the benchmarks use it)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import soundfile
from omegaconf import DictConfig
from torch import nn

from sdr_lightning.config import CONFIG_DIR, compose_config

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SDR_SHARED_DATA", ROOT.parent / "shared" / "speech_data"))

TRAIN_SPEAKERS = ["george", "jackson", "nicolas", "theo"]
EVAL_SPEAKERS = ["lucas", "yweweler"]
SAMPLE_RATE = 8000
# Test runs print no progress bars and never look for a GPU.
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.accelerator=cpu"]

__all__ = ["CONFIG_DIR", "EVAL_SPEAKERS", "FeatureConsumer", "ROOT", "SAMPLE_RATE", "SHARED_DATA", "TRAIN_SPEAKERS",
           "compose", "train_tiny", "write_metadata", "write_synthetic_dataset"]


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


def train_tiny(run_dir: Path, data: Path, *overrides: str) -> dict:
    """A few batches of training on the synthetic clips, laid out like a real run (<run>/.hydra, checkpoints/);
    returns its metrics.json."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from sdr_lightning.tasks.train import train

    cfg = compose(run_dir, [f"data.dir={data}", "data.batch_size=16", "debug=limit", "logger=csv",
                            "report.projector=false", "report.misclassified_audio=0", *overrides])
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    train(cfg)
    GlobalHydra.instance().clear()
    return json.loads((run_dir / "metrics.json").read_text())


def compose(output_dir: Path, overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """The real `conf/<config_name>.yaml` with outputs under `output_dir`, as the command would see it (quiet and on
    the CPU for train)."""
    quiet = QUIET if config_name == "train" else []
    return compose_config([*quiet, *(overrides or [])], config_name=config_name, output_dir=output_dir)


class FeatureConsumer(nn.Module):
    """What SpokenDigitDataModule.setup reads off a model, on its own: the featurizer that makes the cached features,
    and whether TRAIN batches stay raw waveforms (a model with waveform augmentations)."""

    def __init__(self, featurizer: nn.Module, needs_waveforms: bool = False) -> None:
        super().__init__()
        self.featurizer, self.needs_waveforms = featurizer, needs_waveforms
