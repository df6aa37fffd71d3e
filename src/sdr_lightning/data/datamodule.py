"""SpokenDigitDataModule: clips decoded once (memory + disk cache), optional cached features, padded batches."""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from sdr_lightning.data.audio import load_audio
from sdr_lightning.data.download import FSDD_URL, prepare_fsdd
from sdr_lightning.data.metadata import (METADATA_FILENAME, UNLABELED, Clip, check_files_exist, read_metadata,
                                         resolve_labeled_speakers, select_splits)

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# Keyed by content, so repeated setups in one process (multiruns, tests) decode and featurize once.
_MEMORY_CACHE: dict[str, list[Tensor]] = {}


class ClipDataset(Dataset):
    """Items of one split: the clip's tensor (`kind`: "waveform" or "features") and its label.

    `labels` overrides the clips' own labels (UNLABELED for clips whose label training may not use)."""

    def __init__(self, clips: Sequence[Clip], tensors: Sequence[Tensor], kind: str = "waveform",
                 labels: Sequence[int] | None = None) -> None:
        self.clips, self.tensors, self.kind = list(clips), list(tensors), kind
        self.labels = list(labels) if labels is not None else [c.label for c in self.clips]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        return self.tensors[index], self.labels[index], index


def collate_waveforms(items: list[tuple[Tensor, int, int]]) -> dict[str, Tensor]:
    return _pad_batch(items, "waveform", "lengths")


def collate_features(items: list[tuple[Tensor, int, int]]) -> dict[str, Tensor]:
    return _pad_batch(items, "features", "feature_lengths")


def _pad_batch(items: list[tuple[Tensor, int, int]], key: str, length_key: str) -> dict[str, Tensor]:
    tensors = [t for t, _, _ in items]
    lengths = torch.tensor([t.shape[-1] for t in tensors])
    padded = tensors[0].new_zeros((len(tensors), *tensors[0].shape[:-1], int(lengths.max())))
    for row, tensor in zip(padded, tensors):
        row[..., : tensor.shape[-1]] = tensor
    return {
        key: padded,
        length_key: lengths,
        "label": torch.tensor([label for _, label, _ in items]),
        "index": torch.tensor([index for _, _, index in items]),
    }


class SpokenDigitDataModule(pl.LightningDataModule):
    """TRAIN/DEV/TEST from the metadata table; batches carry padded tensors plus their true lengths.

    Without a featurizer, batches hold raw waveforms (`waveform`, `lengths`). With `featurizer` set (the
    model's own module), features are computed once per featurizer setting and batches hold `features`,
    `feature_lengths`; with `train_waveforms` too, TRAIN batches stay waveforms, for the model to augment.

    `fold` (0..5 on FSDD) picks a leave-one-speaker-out split instead (see metadata.loso_split).

    `labeled_speakers` (null: every TRAIN clip is labeled) keeps all TRAIN clips but gives the clips of other
    speakers the label UNLABELED (-1) in batches: semi-supervised training (SimCLR) learns from their audio,
    supervised losses and metrics skip them. DEV/TEST keep their labels.
    """

    def __init__(
        self,
        dir: str,
        cache_dir: str | None = None,
        sample_rate: int = 8000,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        train_speakers: list[str] | None = None,
        dev_speakers: list[str] | None = None,
        test_speakers: list[str] | None = None,
        allow_speaker_overlap: bool = False,
        download: bool = True,
        download_url: str = FSDD_URL,
        cache_features: bool = True,
        fold: int | None = None,
        labeled_speakers: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_dir = Path(dir)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.featurizer: nn.Module | None = None
        self.train_waveforms = False
        self.splits: dict[str, list[Clip]] = {}
        self.datasets: dict[str, ClipDataset] = {}

    def use_featurizer(self, featurizer: nn.Module, train_waveforms: bool = False) -> None:
        """Deliver features made by `featurizer` (computed once) instead of waveforms, if `cache_features`.

        `train_waveforms`: TRAIN batches keep raw waveforms, which a model with waveform augmentations
        augments and featurizes on the fly (`model.needs_waveforms`); DEV/TEST still get cached features.
        """
        if self.hparams.cache_features:
            self.featurizer = featurizer
        self.train_waveforms = train_waveforms
        self.datasets = {}

    def prepare_data(self) -> None:
        if self.hparams.download and not (self.data_dir / METADATA_FILENAME).is_file():
            log.info("No %s in %s: fetching FSDD from %s", METADATA_FILENAME, self.data_dir, self.hparams.download_url)
            prepare_fsdd(self.data_dir, url=self.hparams.download_url)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        clips = read_metadata(self.data_dir)
        self.splits = select_splits(clips, _as_list(hp.train_speakers), _as_list(hp.dev_speakers),
                                    _as_list(hp.test_speakers), hp.allow_speaker_overlap, fold=hp.fold)
        used = sorted({c.identifier: c for split in self.splits.values() for c in split}.values(),
                      key=lambda c: c.identifier)
        check_files_exist(used)
        waveform_key = self._waveform_key(used)
        waveforms = self._cached(waveform_key, lambda: [load_audio(c.path, hp.sample_rate) for c in used])
        by_kind = {"waveform": dict(zip((c.identifier for c in used), waveforms))}
        if self.featurizer is not None:
            key = waveform_key + getattr(self.featurizer, "cache_key", repr(self.featurizer))
            features = self._cached(key, lambda: featurize_all(self.featurizer, waveforms))
            by_kind["features"] = dict(zip((c.identifier for c in used), features))
        labeled = resolve_labeled_speakers(self.splits["TRAIN"], _as_list(hp.labeled_speakers))
        self.datasets = {}
        for name, split in self.splits.items():
            raw = self.featurizer is None or (name == "TRAIN" and self.train_waveforms)
            kind = "waveform" if raw else "features"
            labels = [c.label if c.speaker in labeled else UNLABELED for c in split] if name == "TRAIN" else None
            self.datasets[name] = ClipDataset(split, [by_kind[kind][c.identifier] for c in split], kind, labels)
        log.info("Splits: %s; TRAIN labels from %s (%d clips)", {name: len(ds) for name, ds in self.datasets.items()},
                 sorted(labeled), sum(label != UNLABELED for label in self.datasets["TRAIN"].labels))

    def _waveform_key(self, clips: Sequence[Clip]) -> str:
        digest = hashlib.sha256(f"v{CACHE_VERSION}|{self.hparams.sample_rate}".encode())
        for clip in clips:
            stat = clip.path.stat()
            digest.update(f"|{clip.identifier}:{clip.path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()

    def _cached(self, key: str, compute) -> list[Tensor]:
        key = hashlib.sha256(key.encode()).hexdigest()[:20]
        if key in _MEMORY_CACHE:
            return _MEMORY_CACHE[key]
        path = self.cache_dir / f"{key}.pt" if self.cache_dir else None
        if path is not None and path.is_file():
            try:
                tensors = _unflatten(torch.load(path, weights_only=True))
            except Exception as err:  # a truncated cache file is rebuilt, not fatal
                log.warning("Ignoring unreadable cache %s (%s); rebuilding it", path, err)
            else:
                _MEMORY_CACHE[key] = tensors
                return tensors
        tensors = compute()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(_flatten(tensors), tmp)
            tmp.replace(path)
        _MEMORY_CACHE[key] = tensors
        return tensors

    def dataloader(self, split: str, shuffle: bool = False) -> DataLoader:
        dataset = self.datasets[split]
        train = split == "TRAIN" and shuffle
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size if train else self.hparams.eval_batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > self.hparams.batch_size,  # no 1-clip batch for batch norm
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            pin_memory=self.hparams.pin_memory,
            collate_fn=collate_features if dataset.kind == "features" else collate_waveforms,
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("TRAIN", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("DEV")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("TEST")


@torch.no_grad()
def featurize_all(featurizer: nn.Module, waveforms: Sequence[Tensor], batch_size: int = 256) -> list[Tensor]:
    """Each waveform's features, unpadded; batched over clips of similar length."""
    featurizer = copy.deepcopy(featurizer).cpu().eval()
    order = sorted(range(len(waveforms)), key=lambda i: waveforms[i].shape[-1])
    out: list[Tensor | None] = [None] * len(waveforms)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = collate_waveforms([(waveforms[i], 0, 0) for i in chunk])
        features, frames = featurizer(batch["waveform"], batch["lengths"])
        for i, feature, n in zip(chunk, features, frames):
            out[i] = feature[:, :n].clone()
    return out  # type: ignore[return-value]


def _flatten(tensors: Sequence[Tensor]) -> dict[str, Tensor]:
    """One contiguous tensor plus lengths: far faster to save and load than thousands of small tensors."""
    return {"data": torch.cat([t.reshape(-1, t.shape[-1]) for t in tensors], dim=-1),
            "lengths": torch.tensor([t.shape[-1] for t in tensors]),
            "squeeze": torch.tensor(tensors[0].dim() == 1)}


def _unflatten(blob: dict[str, Tensor]) -> list[Tensor]:
    parts = torch.split(blob["data"], blob["lengths"].tolist(), dim=-1)
    return [p.reshape(-1) if bool(blob["squeeze"]) else p for p in parts]


def _as_list(value) -> list[str] | None:
    if isinstance(value, str):  # data.labeled_speakers=george means [george], not its letters
        return [value]
    return None if value is None else [str(v) for v in value]
