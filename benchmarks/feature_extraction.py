"""Feature extraction throughput (clips/s) on the whole dataset: ours against the seed study's per-item approach.

    python benchmarks/feature_extraction.py [--data speech_data] [--repeats 5] [--threads 2] [--out fe.json]

Every repeat measures, in this order, in one process:

  reference       a torch Dataset whose __getitem__ decodes the wav (soundfile) and computes a torchaudio
                  MelSpectrogram + log, read once through a DataLoader: what the seed study paid every epoch
  ours, cold      SpokenDigitDataModule.setup() with an empty cache folder: decode every clip once, featurize in
                  batches on the accelerator (the model's LogMel, edge trimming included), write the disk cache
  ours, cached    setup() again with the in-memory cache cleared: read the disk cache
  ours, epoch     one pass of the TRAIN dataloader over the cached features: what every epoch costs
  ours, epoch, featurized per batch
                  one pass over TRAIN waveform batches, each featurized on the accelerator: the per-epoch cost when
                  waveform augmentation (augment=waveform) needs the raw audio

The table gives the median clips/s of the repeats and its ratio to the reference in the same run. Caches go to a
temporary folder; the clip folder is only read. "Cold" means our cache is empty; the OS may still hold the wav
files in its page cache, as it does for the reference.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytorch_lightning as pl
import soundfile
import torch
import torchaudio
from _common import (
    add_common_arguments,
    clear_memory_cache,
    configure,
    find_data,
    machine,
    markdown_table,
    median,
    run_config,
    timed,
    write_json,
)
from hydra.utils import instantiate
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from sdr_lightning.data.metadata import Clip, read_metadata


class PerItemMelDataset(Dataset):
    """The seed study's way: decode and featurize inside __getitem__, again on every pass."""

    def __init__(self, clips: list[Clip], featurizer_settings: dict) -> None:
        self.clips = clips
        keep = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max")
        # torchaudio's default centred frames, zero-padded so that clips shorter than a window still work
        settings = {k: featurizer_settings[k] for k in keep}
        self.mel = torchaudio.transforms.MelSpectrogram(**settings, pad_mode="constant")

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        clip = self.clips[index]
        samples, _ = soundfile.read(str(clip.path), dtype="float32")
        mel = self.mel(torch.from_numpy(samples))
        return torch.log(mel + 1e-6), clip.label


def collate_padded(items: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    features = pad_sequence([f.T for f, _ in items], batch_first=True).transpose(1, 2)
    return features, torch.tensor([label for _, label in items])


def count_clips(loader: DataLoader, featurize: Callable | None = None, device: torch.device | None = None) -> int:
    """Iterate `loader` once; with `featurize`, run it on each waveform batch on `device`."""
    clips = 0
    for batch in loader:
        if featurize is not None:
            featurize(batch["waveform"].to(device), batch["lengths"].to(device))
        clips += len(batch["label"])
    return clips


def measure(args: argparse.Namespace, data: Path, work: Path) -> tuple[dict, dict, torch.device]:
    """Seconds per repeat and clips counted, per figure; caches go under `work`."""
    cfg = run_config(args.overrides, work / "run", data, work / "unused")
    featurizer = instantiate(cfg.model.featurizer)
    # The datamodule featurizes on its trainer's device, as in `trainer.fit`; this trainer only picks the device.
    trainer = pl.Trainer(accelerator=args.accelerator, devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    device = trainer.strategy.root_device
    clips = read_metadata(data)
    reference = DataLoader(PerItemMelDataset(clips, featurizer.settings), batch_size=cfg.data.batch_size,
                           num_workers=cfg.data.num_workers, collate_fn=collate_padded)
    on_device = featurizer.to(device).eval()

    def setup(cache_dir: Path):
        datamodule = instantiate(cfg.data, cache_dir=str(cache_dir), download=False, _convert_="all")
        datamodule.trainer = trainer
        datamodule.setup("fit", model=SimpleNamespace(featurizer=featurizer, needs_waveforms=False))
        return datamodule

    def waveform_loader(datamodule) -> DataLoader:
        """The TRAIN loader a model with waveform augmentation gets (from the memory cache: nothing decoded)."""
        datamodule.setup("fit", model=SimpleNamespace(featurizer=featurizer, needs_waveforms=True))
        return datamodule.train_dataloader()

    print(f"{len(clips)} clips from {data}; {machine()}; featurizer on {device}; median of {args.repeats}\n",
          flush=True)
    runs: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for repeat in range(args.repeats):
        cache_dir = work / f"cache_{repeat}"
        clear_memory_cache()
        counts["reference"], seconds = timed(lambda: sum(len(labels) for _, labels in reference))
        runs.setdefault("reference", []).append(seconds)
        clear_memory_cache()
        datamodule, seconds = timed(lambda: setup(cache_dir))
        runs.setdefault("cold", []).append(seconds)
        counts["cold"] = counts["cached"] = len({c.identifier for split in datamodule.splits.values() for c in split})
        clear_memory_cache()
        datamodule, seconds = timed(lambda: setup(cache_dir))
        runs.setdefault("cached", []).append(seconds)
        counts["epoch"], seconds = timed(lambda: count_clips(datamodule.train_dataloader()))
        runs.setdefault("epoch", []).append(seconds)
        loader = waveform_loader(datamodule)
        with torch.no_grad():
            counts["epoch_featurized"], seconds = timed(lambda: count_clips(loader, on_device, device))
        runs.setdefault("epoch_featurized", []).append(seconds)
        shutil.rmtree(cache_dir)
    return runs, counts, device


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats=5)
    parser.add_argument("--accelerator", default="auto",
                        help="where our featurizer runs, as Lightning's Trainer(accelerator=...): auto, cpu, gpu")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the featurizer/data config (after --)")
    args = parser.parse_args(argv)
    configure(args.threads)
    data = find_data(args.data)
    with tempfile.TemporaryDirectory(prefix="sdr_features_") as tmp:
        runs, counts, device = measure(args, data, Path(tmp))

    names = {
        "reference": "reference: decode + MelSpectrogram per `__getitem__`, one pass",
        "cold": "ours, cold: decode once + batched featurize (setup, empty cache)",
        "cached": "ours, cached: setup reading the disk cache",
        "epoch": "ours, one TRAIN epoch over cached features",
        "epoch_featurized": "ours, one TRAIN epoch of waveform batches featurized per batch",
    }
    reference_rate = counts["reference"] / median(runs["reference"])
    rows, figures = [], {}
    for key, name in names.items():
        seconds = median(runs[key])
        rate = counts[key] / seconds
        rows.append([name, counts[key], f"{seconds:.3f}", f"{rate:,.0f}", f"{rate / reference_rate:.1f}x"])
        figures[key] = {"clips": counts[key], "median_s": seconds, "clips_per_s": rate,
                        "ratio_to_reference": rate / reference_rate, "runs_s": runs[key]}
    print(markdown_table(["what", "clips", "median s", "clips/s", "vs reference"], rows))
    write_json(args.out, {"benchmark": "feature_extraction", "machine": machine(), "device": str(device),
                          "data": str(data), "repeats": args.repeats, "figures": figures})


if __name__ == "__main__":
    main()
