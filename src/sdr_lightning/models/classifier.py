"""DigitClassifier: the one LightningModule, built from config parts.

    waveform -> featurizer -> (augmentation, training only) -> encoder -> head -> logits

Every part is a `_target_` config composed from its own group (conf/featurizer/, conf/augment/, conf/encoder/,
conf/optimizer/, conf/scheduler/), so a new architecture is an `nn.Module` plus `conf/encoder/<name>.yaml` and no
Lightning code (docs/architecture.md). The parts arrive as plain dicts, never modules: `save_hyperparameters` then
keeps checkpoints loadable with `torch.load(weights_only=True)`, and the class rebuilds itself from them.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from sdr_lightning.audio.augment import AugmentationPipeline
from sdr_lightning.audio.corrupt import fit_width
from sdr_lightning.config import instantiate_part
from sdr_lightning.data.metadata import METRIC_PREFIXES, UNLABELED
from sdr_lightning.errors import ConfigError
from sdr_lightning.models.calibration import confidence_gate, fit_temperature
from sdr_lightning.models.normalization import set_clip_weight

NUM_CLASSES = 10

log = logging.getLogger(__name__)


def mix_batch(features: Tensor, frames: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor, float]:
    """Mixup (Zhang et al., ICLR 2018) on a batch of spectrograms: each clip plus a shuffled partner,
    `weight * own + (1 - weight) * partner`, with one weight ~ Beta(alpha, alpha) per batch, kept >= 0.5 so the own
    label stays the larger share. Padding is zero, so the mix's valid frames are the longer clip's.
    Returns (mixed features, mixed frame counts, each clip's partner index, weight)."""
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    weight = float(beta.sample())
    weight = max(weight, 1.0 - weight)
    partner = torch.randperm(features.shape[0], device=features.device)
    mixed = weight * features + (1.0 - weight) * features[partner]
    return mixed, torch.maximum(frames, frames[partner]), partner, weight


def consistency_loss(first: Tensor, second: Tensor) -> Tensor:
    """Jensen-Shannon divergence between the predictions on two views of the same clips (AugMix's consistency,
    Hendrycks et al., ICLR 2020), averaged over clips (and ensemble members: (B, members, classes) logits)."""
    log_p, log_q = first.log_softmax(dim=-1), second.log_softmax(dim=-1)
    log_mean = torch.logaddexp(log_p, log_q) - math.log(2.0)
    kl = nn.functional.kl_div
    return 0.5 * (kl(log_mean, log_p, log_target=True, reduction="none").sum(-1)
                  + kl(log_mean, log_q, log_target=True, reduction="none").sum(-1)).mean()


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Knowledge distillation (Hinton et al., 2015): KL(teacher || student) between the two softened predictions,
    times temperature^2 so its gradients keep their scale as the temperature changes; averaged over clips.
    `student`: (B, classes) logits. `teacher`: (B, classes), or (teachers, B, classes) for several teachers, whose
    softened probabilities are averaged (an ensemble's prediction, as Hinton et al. distil one)."""
    log_student = (student / temperature).log_softmax(dim=-1)
    log_teacher = (teacher / temperature).log_softmax(dim=-1)
    if log_teacher.dim() == 3:
        log_teacher = log_teacher.logsumexp(dim=0) - math.log(log_teacher.shape[0])
    kl = nn.functional.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def combine_members(logits: Tensor) -> Tensor:
    """(B, members, classes) logits of an ensemble head -> (B, classes) log of the members' mean probability;
    (B, classes) logits pass through."""
    if logits.dim() == 2:
        return logits
    return torch.logsumexp(logits.log_softmax(dim=-1), dim=1) - math.log(logits.shape[1])


class MemberHeads(nn.Module):
    """One linear classifier per ensemble member, each reading its own slice of the embedding:
    (B, members * dim) -> (B, members, classes)."""

    def __init__(self, members: int, dim: int, num_classes: int) -> None:
        super().__init__()
        self.members = members
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default initialisation, per member
        self.weight = nn.Parameter(torch.empty(members, dim, num_classes).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, num_classes).uniform_(-bound, bound))

    def forward(self, embedding: Tensor) -> Tensor:
        x = embedding.reshape(embedding.shape[0], self.members, -1)
        return torch.einsum("bmd,mdk->bmk", x, self.weight) + self.bias


def classifier_head(encoder: nn.Module, num_classes: int) -> nn.Module:
    """A linear layer on the encoder's embedding; one per member for a packed ensemble (`encoder.members`)."""
    members = getattr(encoder, "members", 1)
    if members > 1:
        return MemberHeads(members, encoder.output_dim // members, num_classes)
    return nn.Linear(encoder.output_dim, num_classes)


def split_metrics(split: str, num_classes: int = NUM_CLASSES, postfix: str = "") -> MetricCollection:
    """Accuracy and macro-F1, logged as `<prefix>/acc<postfix>` with the split's metric prefix (DEV -> val/)."""
    return MetricCollection(
        {"acc": MulticlassAccuracy(num_classes, average="micro"),
         "f1_macro": MulticlassF1Score(num_classes, average="macro")},
        prefix=f"{METRIC_PREFIXES[split]}/", postfix=postfix or None,
    )


class DigitClassifier(pl.LightningModule):
    """`featurizer`: waveforms -> (B, n_mels, T) features (e.g. sdr_lightning.audio.features.LogMel).
    `encoder`: built with `n_mels=featurizer.n_mels`; (B, n_mels, T) features + (B,) frame counts -> (B, output_dim).
    `augment`: {"waveform": {name: config}, "spectrogram": {...}}, training-only (conf/augment/).
    `optimizer`, `scheduler`: `_partial_` configs, given the parameters (and OneCycleLR the run's length) here.
    `init_from`: a checkpoint of a run with the same encoder, whose encoder and head start this one (a fine-tune,
    e.g. on clean clips after augmented training); a resumed run keeps its own weights.
    `mixup`: Beta(alpha, alpha) of mixup on the training spectrograms (`mix_batch`); 0: none.
    `consistency`: with an augmentation bank (data.augment_bank), each training clip comes as itself and as one of its
    augmented copies, and this weighs the Jensen-Shannon divergence between the two predictions (`consistency_loss`)
    beside both views' cross entropy; 0: none (one version per clip).
    `teacher`: the checkpoint of a trained run whose predictions this one learns too (knowledge distillation), or a
    list of them (an ensemble: their softened probabilities averaged): on every training clip, labeled or not,
    `distill_weight` of the loss is `distillation_loss` against the teachers' prediction on the same augmented
    features at `distill_temperature`, and the rest the cross entropy. A teacher (any encoder; SimCLR's too) must have
    this run's featurizer. Teachers are used in training only and never saved with this model, so a distilled
    checkpoint loads and predicts on its own.
    `clip_norm`: at inference, the encoder's BatchNorm layers that can (the CNN's, models/normalization.py) blend
    each clip's own statistics into the training ones at this weight; 0: plain BatchNorm. Training is unchanged.
    `calibrate`: after every validation pass, fit the temperature that divides the logits at inference (`forward`
    and `classify`: predict, eval and export) to the clean validation clips (models/calibration.py): the
    probabilities become calibrated and the predictions stay the same. It is a buffer, saved with each checkpoint;
    a checkpoint from before it loads with 1 (the raw logits). Training, every logged metric and the digit-string
    recognizer (`raw_logits`) are unchanged.
    """

    def __init__(
        self,
        featurizer: Mapping[str, Any],
        encoder: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        augment: Mapping[str, Any] | None = None,
        scheduler_interval: str = "step",
        label_smoothing: float = 0.0,
        num_classes: int = NUM_CLASSES,
        init_from: str | None = None,
        mixup: float = 0.0,
        consistency: float = 0.0,
        teacher: str | Sequence[str] | None = None,
        distill_weight: float = 0.5,
        distill_temperature: float = 2.0,
        clip_norm: float = 0.0,
        calibrate: bool = True,
    ) -> None:
        if not 0.0 <= clip_norm <= 1.0:
            raise ConfigError(f"model.clip_norm={clip_norm}; use a weight from 0 (off) to 1 (each clip's own "
                              "statistics only).")
        if teacher and not 0.0 < distill_weight <= 1.0:
            raise ConfigError(f"model.distill_weight={distill_weight}; with model.teacher set, use a weight in (0, 1] "
                              "(the share of the loss that follows the teacher).")
        if teacher and distill_temperature <= 0:
            raise ConfigError(f"model.distill_temperature={distill_temperature}; use a temperature > 0, e.g. 2.")
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.featurizer = instantiate_part("model.featurizer", featurizer)
        self.augmentation = AugmentationPipeline(augment)
        self.encoder = instantiate_part("model.encoder", encoder, n_mels=self.featurizer.n_mels)
        if not isinstance(getattr(self.encoder, "output_dim", None), int):
            raise ConfigError(f"model.encoder: {encoder['_target_']} has no integer `output_dim` attribute; an encoder "
                              "sets self.output_dim to the size of the embedding it returns.")
        set_clip_weight(self.encoder, clip_norm)
        self.build_heads()
        # Unlabeled TRAIN clips (data.labeled_speakers) carry UNLABELED; supervised_loss also drops them itself.
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing, ignore_index=UNLABELED)
        self.train_metrics = split_metrics("TRAIN", num_classes)
        self.val_metrics = split_metrics("DEV", num_classes)
        self.test_metrics = split_metrics("TEST", num_classes)
        # DEV under corruptions (data.robust_dev), the second validation set when the datamodule has one
        self.val_robust_metrics = split_metrics("DEV", num_classes, postfix="_robust")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_robust_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        self.register_buffer("calibration_temperature", torch.ones(()))
        self.register_buffer("digit_gate", torch.zeros(()))  # sequence.min_confidence=auto; 0: none fitted
        self._calibration_batches: list[tuple[Tensor, Tensor]] = []  # (raw logits, labels) of this validation pass

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # checkpoints from before calibration have no temperature (theirs is 1, the logits as they were) and no gate
        state_dict.setdefault(prefix + "calibration_temperature", torch.ones(()))
        state_dict.setdefault(prefix + "digit_gate", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def build_heads(self) -> None:
        """The layers on top of the encoder: the classifier head (SimCLR adds its projection head)."""
        self.head = classifier_head(self.encoder, self.hparams.num_classes)

    def classify(self, embedding: Tensor, calibrated: bool = True) -> Tensor:
        """(B, classes) logits from an encoder embedding (ensemble members combined), divided by the calibration
        temperature unless `calibrated` is false."""
        logits = combine_members(self.head(embedding))
        return logits / self.calibration_temperature if calibrated else logits

    # ---- inference: a raw waveform batch in, logits out (what predict/export use) ----
    def forward(self, waveform: Tensor, lengths: Tensor) -> Tensor:
        return self.classify(self.encoder(*self.featurizer(waveform, lengths)))

    def raw_logits(self, waveform: Tensor, lengths: Tensor) -> Tensor:
        """`forward` without the calibration temperature: what the digit-string search and its gate were tuned on."""
        return self.classify(self.encoder(*self.featurizer(waveform, lengths)), calibrated=False)

    # ---- starting from another run's weights ----
    def setup(self, stage: str) -> None:
        # Before Lightning restores a checkpoint (resuming), so a resumed run keeps its own weights.
        if stage == "fit" and self.hparams.get("init_from"):
            self.load_parts(self.hparams.init_from, ("encoder", "head"), key="model.init_from")
        if stage == "fit" and self.hparams.get("teacher") and not self.teachers:
            self.load_teachers(self.hparams.teacher)

    @property
    def teachers(self) -> tuple[DigitClassifier, ...]:
        """The distillation teachers, once loaded (`model.teacher`); kept outside the module tree, so they are neither
        trained nor saved, and stay in eval mode."""
        return self.__dict__.get("_teachers", ())

    def load_teachers(self, paths: str | Sequence[str]) -> None:
        """Load `model.teacher` (one or several runs' checkpoints, as eval.py loads one) and check that each reads
        these features."""
        from sdr_lightning.tasks.checkpoint import load_for_inference  # tasks builds on models, not the reverse

        paths = [paths] if isinstance(paths, str) else list(paths)
        teachers = []
        for path in paths:
            try:
                teacher = load_for_inference(path).model
            except ConfigError as err:
                raise ConfigError(f"model.teacher={path}: {err}") from err
            mine, theirs = dict(self.hparams.featurizer), dict(teacher.hparams.featurizer)
            differing = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            if differing:
                raise ConfigError(
                    f"model.teacher={path}: its featurizer differs from this run's in {', '.join(differing)} "
                    f"({', '.join(f'{k}={theirs.get(k)} vs {mine.get(k)}' for k in differing)}). A teacher reads "
                    "this run's features, so train it with the same model.featurizer settings.")
            teacher.requires_grad_(False)
            teachers.append(teacher.to(self.device).eval())
        self.__dict__["_teachers"] = tuple(teachers)
        log.info("Distilling from %s (%s, weight %.2f, temperature %.1f)", ", ".join(paths),
                 ", ".join(type(t.encoder).__name__ for t in teachers), self.hparams.distill_weight,
                 self.hparams.distill_temperature)

    def on_fit_start(self) -> None:
        for teacher in self.teachers:
            teacher.to(self.device)

    def with_distillation(self, loss: Tensor, logits: Tensor, views: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        """In training with teachers: (1 - w) * `loss` + w * the distillation loss of `logits` (B, classes), the
        predictions on `views` (features, frames) in order, against the teachers' on the same views. Else `loss`."""
        if not self.teachers or not self.training:
            return loss
        with torch.no_grad():
            targets = torch.stack([
                # the raw logits: distill_temperature softens them, and a teacher's calibration stays out of it
                torch.cat([teacher.classify(teacher.encoder(features, frames), calibrated=False)
                           for features, frames in views])
                for teacher in self.teachers])
        distill = distillation_loss(logits, targets, self.hparams.distill_temperature)
        self.log("train/distill_loss", distill, on_step=False, on_epoch=True)
        weight = self.hparams.distill_weight
        return (1.0 - weight) * loss + weight * distill

    def load_parts(self, path: str, parts: Sequence[str], key: str) -> None:
        """Copy the named submodules' weights from a checkpoint (`key` names the setting in errors)."""
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"{key}={path}: no such checkpoint; give the .ckpt of an earlier run, or null.")
        try:
            state = torch.load(file, map_location="cpu", weights_only=True).get("state_dict", {})
        except Exception as err:  # a truncated or foreign file: say which, in one line
            raise ConfigError(f"{key}={path}: not a readable checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}).") from err
        for name in parts:
            part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(f"{name}.")}
            try:
                getattr(self, name).load_state_dict(part)
            except RuntimeError as err:
                raise ConfigError(f"{key}={path}: its {name} does not match this model's (model.encoder must be "
                                  f"that run's): {str(err).splitlines()[0]}") from err
        log.info("%s initialised from %s", " and ".join(parts), file)

    @property
    def needs_probe_refit(self) -> bool:
        """Whether evaluation first fits part of the model on the run's TRAIN clips (SimCLR's linear probe)."""
        return False

    def prepare_for_evaluation(self, datamodule: pl.LightningDataModule) -> None:
        """Fit what the model learns from training data outside gradient descent (SimCLR's probe) before evaluation."""

    @property
    def needs_waveforms(self) -> bool:
        """Whether training batches must carry raw waveforms (a waveform augmentation is configured)."""
        return self.augmentation.needs_waveforms

    @property
    def wants_clean_pairs(self) -> bool:
        """Whether training batches should carry each clip's clean version beside an augmented copy (`consistency`)."""
        return bool(self.hparams.get("consistency"))

    def batch_features(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Cached features when the datamodule supplies them, else featurize the waveforms here."""
        if "features" in batch:
            return batch["features"], batch["feature_lengths"]
        return self.featurizer(batch["waveform"], batch["lengths"])

    def augmented_features(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Waveform augmentations, featurizer, spectrogram augmentations; the same as batch_features in eval mode.

        Every call draws afresh, so two calls give two views of a batch (SimCLR)."""
        if "features" in batch:
            # "augmented": a bank of copies made once with these waveform augmentations (data.augment_bank)
            if self.training and self.needs_waveforms and "augmented" not in batch:
                raise ConfigError(
                    "this model has waveform augmentations (model.augment.waveform), but its training batches hold "
                    "precomputed features. Let the datamodule see the model: trainer.fit(model, datamodule=dm), or "
                    "dm.setup('fit', model=model).")
            features, frames = batch["features"], batch["feature_lengths"]
        else:
            waveform, lengths = self.augmentation.augment_waveform(batch["waveform"], batch["lengths"])
            features, frames = self.featurizer(waveform, lengths)
        return self.augmentation.augment_spectrogram(features, frames)

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        return self.encoder(*self.augmented_features(batch))

    def train_embeddings(self, datamodule: pl.LightningDataModule) -> tuple[Tensor, Tensor]:
        """Encoder outputs (eval mode, no augmentation) of every TRAIN clip as itself (never a bank copy), and their
        batch labels. Callable inside Lightning's loops (SimCLR's probe refit at test time)."""
        dataset = datamodule.datasets["TRAIN"]
        was_training, clean_only = self.training, getattr(dataset, "clean_only", False)
        self.eval()
        dataset.clean_only = True
        embeddings, labels = [], []
        try:
            with torch.inference_mode(False), torch.no_grad():
                for batch in datamodule.dataloader("TRAIN"):
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    embeddings.append(self.embed(batch).cpu())
                    labels.append(batch["label"].cpu())
        finally:
            self.train(was_training)
            dataset.clean_only = clean_only
        return torch.cat(embeddings), torch.cat(labels)

    # ---- shared steps ----
    def supervised_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross entropy over the labeled clips; a batch without any gives 0 (not NaN, as a mean over none would).
        (B, members, classes) logits: the mean of the members' losses, so each member learns on its own."""
        if logits.dim() == 3:
            members = logits.shape[1]
            logits, labels = logits.flatten(0, 1), labels.repeat_interleave(members)
        labeled = labels != UNLABELED
        if not labeled.any():
            return logits.sum() * 0.0  # keeps the graph, so every parameter still gets a (zero) gradient
        return self.criterion(logits[labeled], labels[labeled])

    @staticmethod
    def update_metrics(metrics: MetricCollection, loss_metric: MeanMetric, logits: Tensor, labels: Tensor,
                       loss: Tensor) -> None:
        """Accuracy, F1 and the mean loss over the labeled clips only."""
        labeled = labels != UNLABELED
        count = int(labeled.sum())
        if count:
            loss_metric.update(loss.detach(), weight=count)
            metrics.update(logits.detach()[labeled], labels[labeled])

    def _step(self, batch: dict[str, Tensor], metrics: MetricCollection, loss_metric: MeanMetric,
              mixup: float = 0.0, keep: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """Loss and metrics on a batch; `mixup` > 0 (training only) mixes its clips (`mix_batch`): the loss weighs
        both labels, the metrics count the larger share's. `keep`: a list that the (logits, labels) are appended to."""
        features, frames = self.augmented_features(batch)
        labels = batch["label"]
        paired = self.training and "clean_features" in batch
        if paired:  # the clean clips as a second view, through the spectrogram augmentations of their own
            clean, clean_frames = self.augmentation.augment_spectrogram(batch["clean_features"],
                                                                        batch["clean_feature_lengths"])
            width = max(features.shape[-1], clean.shape[-1])
            features = torch.cat([fit_width(features, width), fit_width(clean, width)])
            frames, labels = torch.cat([frames, clean_frames]), torch.cat([labels, labels])
        if mixup:
            features, frames, partner, weight = mix_batch(features, frames, mixup)
        outputs = self.head(self.encoder(features, frames))
        loss = self.supervised_loss(outputs, labels)
        if mixup:
            loss = weight * loss + (1 - weight) * self.supervised_loss(outputs, labels[partner])
        if paired:
            augmented_view, clean_view = outputs.chunk(2)
            loss = loss + self.hparams.consistency * consistency_loss(augmented_view, clean_view)
        logits = combine_members(outputs)
        loss = self.with_distillation(loss, logits, [(features, frames)])
        self.update_metrics(metrics, loss_metric, logits, labels, loss)
        if keep is not None:
            keep.append((logits.detach(), labels))
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, self.train_metrics, self.train_loss, mixup=self.hparams.get("mixup") or 0.0)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # drop values from the sanity check

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 1:  # DEV under corruptions: val/acc_robust
            self._step(batch, self.val_robust_metrics, self.val_robust_loss)
            self.log("val/loss_robust", self.val_robust_loss, on_step=False, on_epoch=True, add_dataloader_idx=False)
            self.log_dict(self.val_robust_metrics, on_step=False, on_epoch=True, add_dataloader_idx=False)
            return
        self._step(batch, self.val_metrics, self.val_loss, keep=self._calibration_batches)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True, add_dataloader_idx=False)
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=True, add_dataloader_idx=False)

    def on_validation_epoch_start(self) -> None:
        self._calibration_batches.clear()

    def on_validation_epoch_end(self) -> None:
        self.calibrate()
        clean = self.val_metrics["acc"].compute()
        self.val_acc_best.update(clean)
        # The same value on every DDP rank (val/acc is synced); sync_dist keeps Lightning's check satisfied.
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=False, sync_dist=True)
        if self.val_robust_metrics["acc"].update_called:  # the mean of clean and corrupted DEV, to select on both
            combined = (clean + self.val_robust_metrics["acc"].compute()) / 2
            self.log("val/acc_combined", combined, prog_bar=True, sync_dist=True)

    def calibrate(self) -> None:
        """From this validation pass's clean clips: the calibration temperature (`calibrate`) and the digit-string
        gate (models/calibration.py). In training only, not in Lightning's sanity check, and not for a model whose
        head is refit before evaluation (SimCLR's probe)."""
        batches, self._calibration_batches = self._calibration_batches, []
        trainer = self.trainer
        if self.needs_probe_refit or not batches or trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        logits, labels = (torch.cat(parts) for parts in zip(*batches))
        if trainer.world_size > 1:  # every rank fits the same values, on every rank's clips
            logits, labels = self.all_gather(logits).flatten(0, 1), self.all_gather(labels).flatten(0, 1)
        labeled = labels != UNLABELED
        logits, labels = logits[labeled].float().cpu(), labels[labeled].cpu()
        # a weight average (callbacks=ema or swa) validated here and is what checkpoints save: it gets the values too
        models = [self, *(callback._average_model.module for callback in trainer.callbacks
                          if isinstance(callback, WeightAveraging) and callback._average_model is not None)]
        gate = confidence_gate(logits, labels)
        temperature = fit_temperature(logits, labels) if self.hparams.get("calibrate") else None
        for model in models:
            model.digit_gate.fill_(gate)
            if temperature is not None:
                model.calibration_temperature.fill_(temperature)
        if temperature is not None:
            self.log("val/temperature", temperature, sync_dist=False)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, self.test_metrics, self.test_loss)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.classify(self.embed(batch)).softmax(dim=-1)

    # ---- optimisation ----
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate_part("model.optimizer", self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        make_scheduler = instantiate_part("model.scheduler", self.hparams.scheduler)
        extra = {}
        # Schedules defined over the whole run (OneCycleLR) learn its length from the trainer.
        parameters = inspect.signature(make_scheduler.func).parameters
        if "total_steps" in parameters and "total_steps" not in make_scheduler.keywords:
            extra["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = make_scheduler(optimizer=optimizer, **extra)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}}
