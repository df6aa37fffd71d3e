"""Lightning callbacks and plugins for robust training: exact resume (RNG states in checkpoints), a clean stop on a
non-finite training loss (both in conf/callbacks/default.yaml), checkpoints written atomically
(AtomicCheckpointIO, in conf/trainer/default.yaml's plugins), a clean finish to augmented training (CleanFinish,
experiment=robust_cnn_clean), averages of the weights: exponential (WeightEMA, callbacks/ema) or equal over the
last epochs (WeightSWA, callbacks/swa), and labels for unlabeled speakers from clusters of their clips
(SpeakerClusterLabels, experiment=simclr_george_clusters)."""

from __future__ import annotations

import io
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EMAWeightAveraging, ModelCheckpoint, WeightAveraging
from pytorch_lightning.plugins.io import TorchCheckpointIO
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from torch import Tensor

from sdr_lightning.data.metadata import UNLABELED
from sdr_lightning.errors import ConfigError, OutputError, SdrError
from sdr_lightning.files import write_atomically

log = logging.getLogger(__name__)


class NonFiniteLossError(SdrError):
    """Training produced a NaN or infinite loss and was stopped."""


class CheckpointSaveError(OutputError):
    """A checkpoint could not be written (a full disk, say); the previous one is intact."""


def size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 2**10:.0f} KiB"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on local disks: each checkpoint goes to a temporary file in its own
    folder and is renamed over the old one once complete. (Lightning's own writer moves a temporary file from the
    system's temp folder, which across file systems is a copy that a full disk leaves truncated.) A failed save keeps
    the previous checkpoint and stops the run with CheckpointSaveError naming the path and the free space."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's fsspec writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialise first: the disk then only sees plain writes
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, buffer.getbuffer())
        except OSError as err:
            try:
                free = f"{size(shutil.disk_usage(path.parent).free)} free there"
            except OSError:
                free = "free space unknown"
            kept = "the previous one is intact" if path.is_file() else "no earlier checkpoint of that name existed"
            raise CheckpointSaveError(
                f"cannot save the checkpoint {path} ({size(buffer.getbuffer().nbytes)}; {free}): "
                f"{err.strerror or err}; {kept}. Free some space (or set hydra.run.dir to another disk) and resume "
                f"with resume_dir={path.parent.parent}.") from err


class RngStateCheckpoint(Callback):
    """Stores the global random generators (torch CPU and CUDA, numpy, Python) in every checkpoint and restores
    them when training resumes from one.

    Lightning restores weights, optimizer, scheduler and loop counters but not these generators, so after a
    resume the shuffling (the train DataLoader draws its permutation from torch's generator), augmentations and
    dropout would draw differently from the uninterrupted run. Lightning calls `load_state_dict` before it
    builds the train DataLoader's iterator, and isolates the sanity check's draws, so a run resumed from an
    end-of-epoch checkpoint replays the uninterrupted run exactly (on CPU; see README, Reproducibility).
    Every value is a tensor, number or tuple, so checkpoints still load with `torch.load(weights_only=True)`.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        states: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, keys, position, has_gauss, cached_gaussian = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        elif cuda is not None:  # e.g. a GPU checkpoint resumed on CPU: the CPU-side draws still replay
            log.warning("Checkpoint holds %d CUDA generator state(s); this machine has %d GPU(s): not restored.",
                        len(cuda), torch.cuda.device_count() if torch.cuda.is_available() else 0)


class StopOnNonFiniteLoss(Callback):
    """Stops training at the first step whose training loss is NaN or infinite, before that step's backward pass
    and optimizer update, with one message naming the epoch, the step and the last checkpoint saved before it.

    Raises NonFiniteLossError (an SdrError, so train.py prints it without a traceback). Lightning then finalises
    the loggers and leaves every checkpoint already written in place. Under DDP the decision is shared, so all
    ranks stop together. The check costs one device-to-host sync per step.
    """

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(not finite, all=False):
            return
        value = loss.detach().float().cpu()
        shown = "NaN" if value.isnan().any() else "infinite"
        where = (f"epoch {trainer.current_epoch}, global step {trainer.global_step} "
                 f"(batch {trainer.fit_loop.epoch_loop.batch_idx} of the epoch)")
        raise NonFiniteLossError(
            f"the training loss is {shown} at {where}; training stopped before that step changed the weights. "
            f"{_last_checkpoint_note(trainer)} Lower model.optimizer.lr, set trainer.gradient_clip_val, "
            f"or check the TRAIN clips of that batch.")


def _last_checkpoint_note(trainer: pl.Trainer) -> str:
    """Where the newest checkpoint of this run is (the state to resume from or inspect), or that there is none."""
    paths = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            paths += [callback.last_model_path, callback.best_model_path]
    existing = [Path(p) for p in paths if p and Path(p).is_file()]
    if not existing:
        return "No checkpoint was saved before it (the loss went non-finite in the first epoch)."
    newest = max(existing, key=lambda p: p.stat().st_mtime_ns)
    return f"The last checkpoint saved before it is {newest} (resume from it with ckpt_path={newest})."


class CleanFinish(Callback):
    """The last `epochs` epochs train on the clean clips: the augmentation bank's copies are no longer drawn
    (data.augment_bank) and waveform augmentations made on the fly stop; spectrogram ones go on. A robust recipe
    otherwise spends most of its steps on corrupted clips; finishing on clean ones, at the end of the learning-rate
    schedule, is the one-run form of a clean fine-tune (experiment=robust_cnn_tune). Decided from the epoch number
    alone, so a resumed run finishes the same way."""

    def __init__(self, epochs: int) -> None:
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise ConfigError(f"callbacks.clean_finish.epochs={epochs!r}; use an integer >= 0 (0: never clean).")
        self.epochs = epochs

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        clean = trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs - self.epochs
        dataset = getattr(getattr(trainer, "datamodule", None), "datasets", {}).get("TRAIN")
        if dataset is not None and hasattr(dataset, "clean_only"):
            dataset.clean_only = clean
        augmentation = getattr(pl_module, "augmentation", None)
        if augmentation is not None:
            augmentation.waveform_enabled = not clean
        if clean and trainer.current_epoch == trainer.max_epochs - self.epochs:
            log.info("Epoch %d: the last %d epochs train on clean clips", trainer.current_epoch, self.epochs)


class WeightEMA(EMAWeightAveraging):
    """Lightning's EMAWeightAveraging: validation, the monitored metric and every checkpoint's `state_dict` use an
    exponential moving average of the weights (`decay` per optimizer step), and the raw weights travel in the
    checkpoint for an exact resume. Made for one thing more: once fit ends, the average is the model. Lightning's
    own callback, still attached to the Trainer, reloads the raw weights whenever a checkpoint is loaded and swaps
    in its last average at every validation, so train.py's TEST after fit (trainer.test(ckpt_path=best)) scored the
    best epoch's raw weights while DEV and eval.py scored its average."""

    def __init__(self, decay: float = 0.999, **kwargs: Any) -> None:
        if not isinstance(decay, float | int) or isinstance(decay, bool) or not 0.0 <= decay < 1.0:
            raise ConfigError(f"callbacks.ema.decay={decay!r}; use a number in [0, 1), e.g. 0.995 "
                              "(the average spans about 1 / (1 - decay) optimizer steps).")
        super().__init__(decay=float(decay), **kwargs)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._average_model = None  # later validate/test: the loaded checkpoint's state_dict, the average, as it is

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:  # resuming a fit: the average and the raw weights both come back
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


class WeightSWA(WeightAveraging):
    """Stochastic weight averaging (Izmailov et al., 2018) without its learning-rate schedule: the equal-weight
    average of the weights after every optimizer step of the last `epochs` epochs (dense, as SWAD averages; Cha et
    al., 2021), BatchNorm's running statistics averaged alike. Once fit ends, the average is the model, as with
    WeightEMA. Before those epochs, validation and checkpoints see the raw weights; from the first, the average.
    Lightning's StochasticWeightAveraging would replace the run's one-cycle schedule with its own."""

    def __init__(self, epochs: int = 20, **kwargs: Any) -> None:
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise ConfigError(f"callbacks.swa.epochs={epochs!r}; use a whole number of final epochs to average, "
                              "at least 1 (e.g. 20).")
        super().__init__(use_buffers=True, **kwargs)
        self.epochs = epochs
        self._averaging = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not (trainer.max_epochs or 0) > 0:  # checked before any training work
            raise ConfigError("callbacks.swa averages the last epochs of a run, so it needs trainer.max_epochs.")
        super().setup(trainer, pl_module, stage)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._averaging = trainer.current_epoch >= trainer.max_epochs - self.epochs

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and self._averaging

    def started(self) -> bool:
        """Whether the average holds any weights yet (before that it is only the initial model's copy)."""
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.started():
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.started():
            super().on_validation_epoch_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self.started():  # else the raw weights, as they are
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.started():
            super().on_train_end(trainer, pl_module)
        self._average_model = None  # later validate/test: the loaded checkpoint's state_dict, the average, as it is

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # resuming a fit from an averaging epoch: the average and the raw weights both come back
        if self._average_model is not None and "averaging_state" in checkpoint:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def cluster_labels(embeddings: np.ndarray, log_probs: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray:
    """One speaker's clips, labeled by cluster: k-means with one cluster per class on the L2-normalised embeddings,
    then each cluster gets a different class, the assignment that maximises the summed mean log-probabilities of the
    clusters' clips (the Hungarian method). A speaker's clips of one digit sit far closer together than the same digit
    said by two speakers, so a weak classifier's mistakes on an unheard voice average out over a cluster. It assumes
    the speaker says every class (FSDD: 50 clips of each digit). (n, d) embeddings, (n, classes) log-probabilities
    -> (n,) labels."""
    if len(embeddings) < num_classes:
        raise ValueError(f"{len(embeddings)} clips cannot form {num_classes} clusters, one per class.")
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    clusters = KMeans(num_classes, n_init=10, random_state=seed).fit_predict(x)
    score = np.stack([log_probs[clusters == k].mean(axis=0) for k in range(num_classes)])
    rows, classes = linear_sum_assignment(score, maximize=True)
    return classes[np.argsort(rows)][clusters]


class SpeakerClusterLabels(Callback):
    """Labels for the unlabeled TRAIN speakers (data.labeled_speakers), from clusters of each speaker's clips
    (`cluster_labels`), drawn at the start of epoch `start` and again every `every` epochs after it (0: only once).
    The embeddings and log-probabilities are the model's on the clean clips (eval mode). From then on the supervised
    loss also trains on those clips; the labeled speakers' own labels never change. Clustering a learned embedding and
    labeling the clusters is SCAN's idea (Van Gansbeke et al., 2020); grouping by speaker is this task's: one
    speaker's clips of a digit lie far closer together than two speakers' clips of it. `pseudo_labels/accuracy` logs
    how many drawn labels match the clips' withheld ones (a diagnostic: training never reads them)."""

    def __init__(self, start: int = 10, every: int = 2) -> None:
        for key, value, least in (("start", start, 0), ("every", every, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"callbacks.cluster_labels.{key}={value!r}; use a whole number >= {least}.")
        self.start, self.every = start, every
        self.drawn: dict[str, int] = {}  # clip identifier -> its drawn label (saved in checkpoints, for a resume)
        self._dataset, self._unlabeled = None, np.zeros(0, dtype=bool)  # which rows the datamodule left unlabeled

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        workers = getattr(getattr(trainer, "datamodule", None), "hparams", {}).get("num_workers", 0)
        if stage == "fit" and workers:  # worker processes keep their own copy of the dataset's labels
            raise ConfigError(f"callbacks.cluster_labels relabels the TRAIN dataset between epochs, which loader "
                              f"workers would not see: set data.num_workers=0 (it is {workers}).")

    def state_dict(self) -> dict[str, Any]:
        return {"drawn": dict(self.drawn)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.drawn = {str(k): int(v) for k, v in state_dict.get("drawn", {}).items()}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        dataset = datamodule.datasets["TRAIN"]
        if dataset is not self._dataset:  # a dataset as built, before any label was drawn into it
            self._dataset, self._unlabeled = dataset, np.array(dataset.labels) == UNLABELED
        epoch = trainer.current_epoch
        if epoch == self.start or (self.every and epoch > self.start and (epoch - self.start) % self.every == 0):
            self.drawn = self.draw(datamodule, pl_module, seed=epoch)
        if self.drawn:
            self.apply(dataset)

    def draw(self, datamodule: pl.LightningDataModule, model: pl.LightningModule, seed: int) -> dict[str, int]:
        dataset = datamodule.datasets["TRAIN"]
        embeddings, _ = model.train_embeddings(datamodule)
        with torch.no_grad():
            scores = model.head(embeddings.to(model.device)).float().log_softmax(-1).cpu()
        log_probs = (scores.mean(1) if scores.dim() == 3 else scores).numpy()  # packed members: their mean
        embeddings = embeddings.float().numpy()
        speakers = np.array([clip.speaker for clip in dataset.clips])
        unlabeled = self._unlabeled
        drawn, right, scored = {}, 0, 0
        for speaker in sorted(set(speakers[unlabeled])):
            rows = np.flatnonzero(unlabeled & (speakers == speaker))
            if len(rows) < model.hparams.num_classes:
                log.warning("Speaker %s has %d unlabeled clips, fewer than %d classes: left unlabeled.", speaker,
                            len(rows), model.hparams.num_classes)
                continue
            labels = cluster_labels(embeddings[rows], log_probs[rows], model.hparams.num_classes, seed)
            for row, label in zip(rows, labels):
                clip = dataset.clips[row]
                drawn[clip.identifier] = int(label)
                if clip.label != UNLABELED:
                    right, scored = right + int(clip.label == label), scored + 1
        if scored:
            model.log("pseudo_labels/accuracy", right / scored)
            log.info("Epoch %d: labels drawn for %d unlabeled clips by cluster (%.3f match their withheld labels)",
                     seed, len(drawn), right / scored)
        return drawn

    def apply(self, dataset: Any) -> None:
        for row, clip in enumerate(dataset.clips):
            if clip.identifier in self.drawn:
                dataset.labels[row] = self.drawn[clip.identifier]
                dataset.label_tensor[row] = self.drawn[clip.identifier]
