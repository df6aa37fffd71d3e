"""SpokenDigitDataModule: clips decoded once (memory + disk cache), optional cached features, padded batches."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from sdr_lightning.audio import corrupt
from sdr_lightning.audio.io import load_audio
from sdr_lightning.data import conditions, voices
from sdr_lightning.data.cache import TensorCache, clips_key
from sdr_lightning.data.download import FSDD_URL, prepare_fsdd
from sdr_lightning.data.folder import FolderClips, add_folder_splits, read_extra_folders
from sdr_lightning.data.metadata import (
    METADATA_FILENAME,
    UNLABELED,
    Clip,
    check_files_exist,
    read_metadata,
    resolve_labeled_speakers,
    select_splits,
)
from sdr_lightning.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class ClipDataset(Dataset):
    """Items of one split: the clip's tensor (`kind`: "waveform" or "features") and its label.

    `labels` overrides the clips' own labels (UNLABELED for clips whose label training may not use).

    The split is also held as one padded tensor, so the DataLoader takes a whole batch with one `index_select`
    (`__getitems__`) instead of padding clip by clip: that per-clip loop was 17% of the linear model's step."""

    def __init__(self, clips: Sequence[Clip], tensors: Sequence[Tensor], kind: str = "waveform",
                 labels: Sequence[int] | None = None, copies: Sequence[Sequence[Tensor]] = (),
                 pair_clean: bool = False) -> None:
        self.clips, self.tensors, self.kind = list(clips), list(tensors), kind
        # with copies: each clip comes as one of its copies and, under "clean_<key>", as itself (a consistency loss)
        self.pair_clean = pair_clean and bool(copies)
        self.labels = list(labels) if labels is not None else [c.label for c in self.clips]
        self.key, self.length_key = BATCH_KEYS[kind]
        self.copies = len(copies)
        self.clean_only = False  # true: serve each clip as itself, never a copy (tasks.callbacks.CleanFinish)
        self.versions_from_sampler = False  # true: indices carry the version too (LengthGroupedSampler)
        if self.tensors:
            versions = [_pad_batch([(t, label, i) for i, (t, label) in enumerate(zip(version, self.labels))],
                                   self.key, self.length_key) for version in (self.tensors, *copies)]
            width = max(version[self.key].shape[-1] for version in versions)
            # (versions, clips, ..., frames): the clip itself, then its augmented copies (data.augment_bank)
            self.padded = torch.stack([corrupt.fit_width(v[self.key], width) for v in versions])
            self.lengths = torch.stack([v[self.length_key] for v in versions])
            self.label_tensor = versions[0]["label"]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        return self.tensors[index], self.labels[index], index

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        """A whole batch, padded to its longest clip (what `collate_batch` builds from a list of items). With
        augmented copies, each clip comes as itself or one of its copies, drawn anew every time (torch's generator);
        with `pair_clean`, as one of its copies and as itself. Under `versions_from_sampler` the sampler has drawn
        them: each index is `version * len(self) + clip` (LengthGroupedSampler)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        if self.versions_from_sampler:
            version, index = index.div(len(self), rounding_mode="floor"), index.remainder(len(self))
        else:
            version = self.draw_versions(len(index))
        batch = {**self._version(version, index), "label": self.label_tensor[index], "index": index}
        if self.copies:
            batch["augmented"] = version > 0  # already through the model's waveform augmentations
        if self.pair_clean:
            clean = self._version(torch.zeros_like(index), index)
            batch.update({f"clean_{key}": value for key, value in clean.items()})
        return batch

    def draw_versions(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """Which version `count` clips come as: 0 (the clip itself) or one of its augmented copies."""
        if not self.copies or self.clean_only:
            return torch.zeros(count, dtype=torch.long)
        return torch.randint(1 if self.pair_clean else 0, self.copies + 1, (count,), generator=generator)

    def _version(self, version: Tensor, index: Tensor) -> dict[str, Tensor]:
        lengths = self.lengths[version, index]
        return {self.key: self.padded[version, index][..., : int(lengths.max())], self.length_key: lengths}


class LengthGroupedSampler(Sampler[int]):
    """Every clip of `dataset` once an epoch, ordered so that each batch of `batch_size` holds clips of about the
    same length. A batch is padded to its longest clip, and shuffled FSDD batches are more than half padding, which
    every convolution computes. Each epoch shuffles the clips, sorts each group of `window` batches by length and
    shuffles the batches (a part batch, if any, comes last), as Hugging Face's `group_by_length` does.

    With an augmentation bank the sampler also draws which version each clip comes as, since a copy's length is not
    its clip's, and yields `version * len(dataset) + clip` for ClipDataset to decode. It is seeded by `seed`
    (torch.initial_seed(), which seed_everything sets, by default) and the epoch, so DDP ranks and a resumed run draw
    alike; an epoch nobody announces with `set_epoch` (DDP's wrapper) is the last one plus one."""

    def __init__(self, dataset: ClipDataset, batch_size: int, window: int, seed: int | None = None) -> None:
        if window < 1:  # batch_size is checked with the config (config.TRAIN_CHECKS)
            raise ConfigError(f"data.group_by_length must be a number of batches >= 1 (got {window}), or 0 for off.")
        self.dataset, self.batch_size, self.window = dataset, batch_size, window
        self.seed = torch.initial_seed() if seed is None else seed
        self.epoch = 0
        dataset.versions_from_sampler = True

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        count = len(self.dataset)
        order = torch.randperm(count, generator=generator)
        version = self.dataset.draw_versions(count, generator)
        lengths = self.dataset.lengths[version, torch.arange(count)]
        batches = [batch for group in order.split(self.batch_size * self.window)
                   for batch in group[lengths[group].argsort(stable=True)].split(self.batch_size)]
        whole = [batch for batch in batches if len(batch) == self.batch_size]
        shuffled = [whole[i] for i in torch.randperm(len(whole), generator=generator)]
        stream = torch.cat(shuffled + [batch for batch in batches if len(batch) < self.batch_size])
        return iter((version[stream] * count + stream).tolist())


BATCH_KEYS = {"waveform": ("waveform", "lengths"), "features": ("features", "feature_lengths")}


def collate_batch(batch: dict[str, Tensor] | list[tuple[Tensor, int, int]]) -> dict[str, Tensor]:
    """The DataLoader's collate: a batch from `ClipDataset.__getitems__` is ready; a list of items is padded."""
    if isinstance(batch, dict):
        return batch
    kind = "features" if batch[0][0].dim() > 1 else "waveform"
    return _pad_batch(batch, *BATCH_KEYS[kind])


def collate_waveforms(items: list[tuple[Tensor, int, int]]) -> dict[str, Tensor]:
    return _pad_batch(items, "waveform", "lengths")


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

    The model decides what a batch holds. `setup` takes it from the trainer (`trainer.fit(model, datamodule=dm)`), or
    from `setup(stage, model=model)` without one. Its featurizer computes each clip's features once per setting
    (cached in memory and on disk) and batches hold `features`, `feature_lengths`; a model with waveform augmentations
    gets raw TRAIN waveforms (`waveform`, `lengths`) to augment and featurize itself. With no model, or with
    `cache_features: false`, every batch holds waveforms.

    `fold` (0..5 on FSDD) picks a leave-one-speaker-out split instead (see metadata.loso_split).

    `robust_dev` (a suite name such as "dev_robust", or condition names; data/conditions.py) adds a second
    validation set, DEV under those corruptions, computed once and cached: the model logs val/acc_robust on it.

    `synthetic_voices` (a folder written by data/voices.py, its train set): its clips join TRAIN, labeled.

    `extra_train` / `extra_eval` (a folder of labelled clips, or its CSV; data/folder.py, data=folder): its clips join
    TRAIN, or make the split EXTRA (reported after DEV/TEST); a speaker also on the other side is refused.

    `group_by_length` (G > 0): TRAIN batches of clips of about the same length, sorted within random groups of G
    batches (LengthGroupedSampler), so they carry less padding.

    `augment_bank` (with a model that augments waveforms): that many augmented copies of each TRAIN clip, made once
    with the model's waveform augmentations and cached as features; every epoch each clip comes as itself or one of
    its copies. 0: augment on the fly, every epoch (slower: the augmentations run every step).

    Decoded clips and features are cached under `cache_dir` (data/cache.py): keyed by each clip's path, size and
    times (`verify_cache`: by a hash of its contents), at most `cache_max_gb` there, least recently used out first.

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
        download_url: str | None = None,
        cache_features: bool = True,
        fold: int | None = None,
        labeled_speakers: list[str] | None = None,
        cache_max_gb: float | None = 2.0,
        verify_cache: bool = False,
        robust_dev: str | list[str] | None = None,
        condition_seed: int = 0,
        augment_bank: int = 0,
        synthetic_voices: str | None = None,
        extra_train: str | list[str] | None = None,
        extra_eval: str | list[str] | None = None,
        group_by_length: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_dir = Path(dir)
        self.cache = TensorCache(Path(cache_dir) if cache_dir else None,
                                 None if cache_max_gb is None else int(cache_max_gb * 1e9))
        self.splits: dict[str, list[Clip]] = {}
        self.datasets: dict[str, ClipDataset] = {}
        self._served: tuple | None = None  # (featurizer cache key, raw TRAIN, bank, clean pairs) of self.datasets
        self._waveforms: dict[str, Tensor] = {}  # identifier -> decoded clip, for the conditions
        self._featurizer: nn.Module | None = None
        self._device = torch.device("cpu")
        self.folders: dict[str, FolderClips] | None = None  # extra_train / extra_eval, read (and listed) once

    def prepare_data(self) -> None:
        if self.hparams.download and not (self.data_dir / METADATA_FILENAME).is_file():
            url = self.hparams.download_url or FSDD_URL
            log.info("No %s in %s: fetching FSDD from %s", METADATA_FILENAME, self.data_dir, url)
            prepare_fsdd(self.data_dir, url=url)
        if self.cache.folder is not None:
            # Lightning calls prepare_data in one process per node: it decodes (and featurizes) once and fills the
            # disk cache, which the other DDP ranks' setup() then reads instead of all writing it at once.
            self.setup()

    def setup(self, stage: str | None = None, model: nn.Module | None = None) -> None:
        """Build the splits' datasets for `model` (default: the trainer's LightningModule); a no-op when they
        already serve the same featurizer setting."""
        if model is None and self.trainer is not None:
            model = self.trainer.lightning_module
        featurizer = getattr(model, "featurizer", None) if self.hparams.cache_features else None
        if featurizer is not None:
            self._check_sample_rate(featurizer)
        # A featurizer without a cache_key (not ours) is keyed by its repr, which shows its settings.
        feature_key = None if featurizer is None else getattr(featurizer, "cache_key", None) or repr(featurizer)
        augments = featurizer is not None and bool(getattr(model, "needs_waveforms", False))
        bank = self.hparams.augment_bank if augments else 0
        # what the datasets serve: the features' setting, raw TRAIN audio (on-the-fly augmentation), the bank's
        pairs = bool(getattr(model, "wants_clean_pairs", False))
        if pairs and not bank and stage == "fit":
            raise ConfigError("model.consistency compares each TRAIN clip with an augmented copy of it from the bank: "
                              "set data.augment_bank (e.g. 8) with waveform augmentations (augment=robust_light), "
                              "or model.consistency=0.")
        pairs = pairs and bool(bank)
        served = (feature_key, augments and not bank, _bank_key(model, bank), pairs)
        if self.datasets and served == self._served:
            return
        hp = self.hparams
        clips = read_metadata(self.data_dir)
        self.splits = select_splits(clips, _as_list(hp.train_speakers), _as_list(hp.dev_speakers),
                                    _as_list(hp.test_speakers), hp.allow_speaker_overlap, fold=hp.fold)
        if hp.synthetic_voices:  # extra TRAIN clips of voices that no evaluation uses (data/voices.py's train set)
            self.splits["TRAIN"] = self.splits["TRAIN"] + synthetic_training_clips(Path(hp.synthetic_voices))
        if hp.extra_train or hp.extra_eval:  # the user's own labelled clips (data/folder.py)
            if self.folders is None:
                self.folders = read_extra_folders(hp.extra_train, hp.extra_eval)
            self.splits = add_folder_splits(self.splits, self.folders, hp.allow_speaker_overlap)
        used = sorted({c.identifier: c for split in self.splits.values() for c in split}.values(),
                      key=lambda c: c.identifier)
        check_files_exist(used)
        waveform_key = clips_key(((c.identifier, c.path) for c in used), hp.sample_rate, verify=hp.verify_cache)
        waveforms = self.cache.get(waveform_key, lambda: decode_all(used, hp.sample_rate, self.data_dir))
        by_kind = {"waveform": dict(zip((c.identifier for c in used), waveforms))}
        if featurizer is not None:
            key = waveform_key + served[0]
            # On the trainer's accelerator (the GPU when training on one); the features are then kept on the CPU.
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            features = self.cache.get(key, lambda: featurize_all(featurizer, waveforms, device=device))
            by_kind["features"] = dict(zip((c.identifier for c in used), features))
        labeled = resolve_labeled_speakers(self.splits["TRAIN"], _as_list(hp.labeled_speakers))
        self._waveforms, self._featurizer = by_kind["waveform"], featurizer
        self._device = device if featurizer is not None else torch.device("cpu")
        self.datasets = {}
        for name, split in self.splits.items():
            raw = featurizer is None or (name == "TRAIN" and served[1])
            kind = "waveform" if raw else "features"
            labels = [c.label if c.speaker in labeled else UNLABELED for c in split] if name == "TRAIN" else None
            copies = self._augment_bank(model, split, served) if name == "TRAIN" and bank else ()
            self.datasets[name] = ClipDataset(split, [by_kind[kind][c.identifier] for c in split], kind, labels,
                                              copies, pair_clean=pairs)
        if hp.robust_dev:
            self.datasets["DEV_ROBUST"] = self.robust_dev_dataset(conditions.suite(hp.robust_dev))
        self._served = served
        log.info("Splits: %s; TRAIN labels from %s (%d clips)", {name: len(ds) for name, ds in self.datasets.items()},
                 sorted(labeled), sum(label != UNLABELED for label in self.datasets["TRAIN"].labels))

    def _augment_bank(self, model: nn.Module, clips: Sequence[Clip], served: tuple) -> list[list[Tensor]]:
        """`data.augment_bank` copies of every TRAIN clip through the model's waveform augmentations, then its
        featurizer: made once (seeded: the same bank for the same config) and cached like the features, so training
        pays for the augmentations once rather than every epoch."""
        copies = self.hparams.augment_bank
        # Keyed by the TRAIN clips themselves, in order: LOSO folds decode the same clips but train on different ones.
        train_key = clips_key(((c.identifier, c.path) for c in clips), self.hparams.sample_rate,
                              verify=self.hparams.verify_cache)
        key = "|".join([train_key, str(served[0]), str(served[2]), f"seed={self.hparams.condition_seed}"])
        waveforms = [self._waveforms[c.identifier] for c in clips]

        def make() -> list[Tensor]:
            log.info("Augmenting the %d TRAIN clips %d times for the bank (once; cached)", len(clips), copies)
            return augmented_copies(model.augmentation, self._featurizer, waveforms, copies,
                                    seed=self.hparams.condition_seed, device=self._device)

        flat = self.cache.get(key, make)
        return [flat[k * len(clips):(k + 1) * len(clips)] for k in range(copies)]

    def condition_dataset(self, split: str, condition: conditions.Condition) -> ClipDataset:
        """`split`'s clips under `condition` (data/conditions.py), computed once and cached like the clean ones: as
        features of the model set up last, or as waveforms without one. Babble is mixed from clips of speakers
        outside the split (the TRAIN speakers' for DEV and TEST)."""
        clips = self.splits[split]
        rate, seed = self.hparams.sample_rate, self.hparams.condition_seed
        speakers = {c.speaker for c in clips}
        pool = [c for name in ("TRAIN", "DEV", "TEST") for c in self.splits[name] if c.speaker not in speakers][:2000]
        # the babble pool is part of the key: the same split beside other TRAIN clips (data=george_labels, a LOSO
        # fold) mixes other talkers, which a cache keyed by the split alone would have served from the first run
        key = "|".join([clips_key(((c.identifier, c.path) for c in clips), rate, verify=self.hparams.verify_cache),
                        condition.cache_key, f"seed={seed}",
                        "pool=" + clips_key(((c.identifier, c.path) for c in pool), rate)])
        waveforms = self.cache.get(key, lambda: condition.apply(
            [self._waveforms[c.identifier] for c in clips], rate, seed,
            babble_pool=[self._waveforms[c.identifier] for c in pool]))
        if self._featurizer is None:
            return ClipDataset(clips, waveforms, "waveform")
        feature_key = getattr(self._featurizer, "cache_key", None) or repr(self._featurizer)
        features = self.cache.get(key + feature_key,
                                  lambda: featurize_all(self._featurizer, waveforms, device=self._device))
        return ClipDataset(clips, features, "features")

    def robust_dev_dataset(self, chosen: list[conditions.Condition]) -> ClipDataset:
        """DEV under each of `chosen`, one dataset: the extra validation set behind val/acc_robust."""
        parts = [self.condition_dataset("DEV", condition) for condition in chosen]
        return ClipDataset([c for part in parts for c in part.clips], [t for part in parts for t in part.tensors],
                           parts[0].kind)

    def _check_sample_rate(self, featurizer: nn.Module) -> None:
        """Clips are decoded at data.sample_rate and the featurizer assumes its own: they must be one rate."""
        rate = getattr(featurizer, "sample_rate", None)
        if rate is not None and int(rate) != int(self.hparams.sample_rate):
            raise ConfigError(f"data.sample_rate={self.hparams.sample_rate} but model.featurizer.sample_rate={rate}; "
                              "clips are decoded at the first and featurized as if at the second. Set one of them "
                              "(conf/data/reference.yaml takes the featurizer's by default).")

    def dataloader(self, split: str, shuffle: bool = False, sampler: Sampler | None = None,
                   dataset: ClipDataset | None = None) -> DataLoader:
        """The loader of a split's dataset (or of `dataset`, e.g. a split under a condition)."""
        dataset = self.datasets[split] if dataset is None else dataset
        train = split == "TRAIN" and shuffle
        if train and self.hparams.group_by_length and sampler is None and len(dataset):
            sampler = LengthGroupedSampler(dataset, self.hparams.batch_size, self.hparams.group_by_length)
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size if train else self.hparams.eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(dataset) > self.hparams.batch_size,  # no 1-clip batch for batch norm
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            pin_memory=self.hparams.pin_memory,
            collate_fn=collate_batch,
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("TRAIN", shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if "DEV_ROBUST" in self.datasets:  # dataloader 1: DEV under the conditions of data.robust_dev
            return [self._evaluation_dataloader("DEV"), self._evaluation_dataloader("DEV_ROBUST")]
        return self._evaluation_dataloader("DEV")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_dataloader("TEST")

    def _evaluation_dataloader(self, split: str) -> DataLoader:
        """Under DDP, each rank gets a disjoint share of the split, none repeated: Lightning's default
        DistributedSampler pads the shares with duplicate clips, which skews the synced accuracy."""
        sharding = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        sampler = None
        if sharding and sharding.get("num_replicas", 1) > 1:
            sampler = UnrepeatedDistributedSampler(self.datasets[split], shuffle=False, **sharding)
        return self.dataloader(split, sampler=sampler)


def decode_all(clips: Sequence[Clip], sample_rate: int, data_dir: Path) -> list[Tensor]:
    """Every clip's waveform (mono, at `sample_rate`); all unusable clips reported in one DataError.

    load_audio resamples other rates and downmixes stereo, and the featurizer pads clips shorter than one FFT
    window, so only unreadable, empty or non-finite files stop the run, and all of them are named at once."""
    waveforms, problems = [], []
    for clip in clips:
        try:
            waveforms.append(load_audio(clip.path, sample_rate))
        except DataError as err:
            problems.append(str(err))
    if len(problems) == 1:
        raise DataError(f"{problems[0]} Or remove its row from {data_dir / METADATA_FILENAME}.")
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError(f"{len(problems)} of the {len(clips)} clips listed in {data_dir / METADATA_FILENAME} cannot be "
                        f"used; replace them or remove their rows:\n{shown}{more}")
    return waveforms


@torch.no_grad()
def featurize_all(featurizer: nn.Module, waveforms: Sequence[Tensor], batch_size: int = 256,
                  device: torch.device | str = "cpu") -> list[Tensor]:
    """Each waveform's features, unpadded, as CPU tensors; computed on `device` in batches of similar lengths."""
    featurizer = copy.deepcopy(featurizer).to(device).eval()
    order = sorted(range(len(waveforms)), key=lambda i: waveforms[i].shape[-1])
    out: list[Tensor | None] = [None] * len(waveforms)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = collate_waveforms([(waveforms[i], 0, 0) for i in chunk])
        features, frames = featurizer(batch["waveform"].to(device), batch["lengths"].to(device))
        features, frames = features.cpu(), frames.cpu()  # one transfer per batch, not per clip
        for i, feature, n in zip(chunk, features, frames):
            out[i] = feature[:, :n].clone()
    return out  # type: ignore[return-value]


def synthetic_training_clips(folder: Path) -> list[Clip]:
    """The clips of a synthetic voice set (python -m sdr_lightning.data.voices: <out>/train) to add to TRAIN; its
    eval set, whose voices score models, is refused."""
    if not (folder / METADATA_FILENAME).is_file():
        raise ConfigError(f"data.synthetic_voices={folder}: no {METADATA_FILENAME} there. Write the voices first with "
                          f"`python -m sdr_lightning.data.voices --out {folder.parent}` (needs espeak-ng), or set "
                          "data.synthetic_voices to the train folder it wrote.")
    found = voices.layout(folder)
    if found != voices.LAYOUT and not (folder / voices.LAYOUT_FILENAME).is_file():  # a set that says so: on purpose
        what = "layout 1: 40 voices of 5 variants" if found == 1 else "no voices.json, nor 40 or 80 voices"
        log.warning("data.synthetic_voices=%s was written by an older sdr-lightning (%s); the CNN recipes' figures "
                    "were measured with layout 2 (80 voices of 20 variants). Rebuild it with `python -m "
                    "sdr_lightning.data.voices --out %s` (`--layout 1` writes the older set again, with its "
                    "description).", folder, what, folder.parent)
    clips = read_metadata(folder)
    if any(c.split != "TRAIN" for c in clips):
        raise ConfigError(f"data.synthetic_voices={folder}: its metadata lists clips outside TRAIN, as the voices' "
                          "eval set does; train only on the train set (python -m sdr_lightning.data.voices writes "
                          "<out>/train), so the voices a model is scored on stay unheard.")
    return clips


def _bank_key(model: nn.Module | None, copies: int) -> str | None:
    """What makes a bank: how many copies, and the waveform augmentations' config (their modules' settings)."""
    if not copies or model is None:
        return None
    settings = getattr(model, "hparams", {}).get("augment") or repr(model.augmentation.waveform)
    return f"copies={copies}|{json.dumps(settings, sort_keys=True, default=str)}"


@torch.no_grad()
def augmented_copies(augmentation: nn.Module, featurizer: nn.Module, waveforms: Sequence[Tensor], copies: int,
                     seed: int = 0, batch_size: int = 64, device: torch.device | str = "cpu") -> list[Tensor]:
    """`copies` rounds of `augmentation`'s waveform chain (in training mode) over `waveforms`, featurized: a flat
    list, round after round, each in the input order. Its random draws come from a generator of its own, seeded by
    `seed`, and leave the global one as it was."""
    augmentation = copy.deepcopy(augmentation).to(device).train()
    featurizer = copy.deepcopy(featurizer).to(device).eval()
    order = sorted(range(len(waveforms)), key=lambda i: waveforms[i].shape[-1])
    out: list[Tensor] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(copies):
            round_ = [None] * len(waveforms)
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                batch = collate_waveforms([(waveforms[i], 0, 0) for i in chunk])
                waveform, lengths = augmentation.augment_waveform(batch["waveform"].to(device),
                                                                  batch["lengths"].to(device))
                features, frames = featurizer(waveform, lengths)
                for i, feature, n in zip(chunk, features.cpu(), frames.cpu()):
                    round_[i] = feature[:, :n].clone()
            out.extend(round_)
    return out


def _as_list(value) -> list[str] | None:
    if isinstance(value, str):  # data.labeled_speakers=george means [george], not its letters
        return [value]
    return None if value is None else [str(v) for v in value]
