"""SimCLR: an encoder trained with NT-Xent on two augmented views of each clip, judged by a linear probe.

A view is the model's own augmentations (`augment=...`: waveform ones redrawn per view, then the featurizer
and spectrogram ones) followed by the `views` SpecAugment masks, so `augment=[speed,fade,crop]` makes the
contrastive pairs differ in speaker-like and timing ways the digit does not depend on.

Labels may be scarce (`data.labeled_speakers`): the contrastive loss uses every TRAIN clip, anything supervised
only the labeled ones (unlabeled clips carry label -1). Three ways to use the labels, by two weights:

- `supervised_weight: 0` (pure SimCLR): an online probe, a linear head on detached embeddings, tracks
  `val/acc` for checkpointing; no label reaches the encoder.
- `supervised_weight > 0` (joint training, as CLAR, Al-Tahan and Mohsenzadeh 2021): the head's cross entropy
  on the labeled clips of both views flows into the encoder, added to the contrastive loss.
- `contrastive_weight: 0` with `supervised_weight > 0`: plain supervised training of the same encoder on the
  same views (the baseline to compare with); `pretrained=<SimCLR checkpoint>` makes it a fine-tune.

With `refit_probe` (the default), validate/test after fit refit the head as a logistic regression on frozen
embeddings of the labeled TRAIN clips, so the reported accuracy is a true linear probe of the encoder;
`refit_probe: false` evaluates the trained head as it is (for joint or supervised training).

`train/embedding_std` guards against collapse: the per-dimension spread of the L2-normalised embeddings times
sqrt(dim), about 1 for vectors spread evenly over the sphere and 0 when every clip maps to the same point.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn
from torchmetrics import MeanMetric

from sdr_lightning.audio.augment import SpecAugment
from sdr_lightning.data.metadata import UNLABELED
from sdr_lightning.errors import ConfigError
from sdr_lightning.models.classifier import DigitClassifier

log = logging.getLogger(__name__)

# Below this train/embedding_std the embeddings have (nearly) collapsed to one point: warn.
COLLAPSE_THRESHOLD = 0.05


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Normalised-temperature cross entropy: each view must pick its partner among the 2B-1 others."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.T / temperature
    similarity = similarity.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), -torch.inf)
    batch = len(z1)
    targets = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
    return F.cross_entropy(similarity, targets)


def embedding_spread(x: Tensor) -> Tensor:
    """Mean per-dimension std of the L2-normalised rows, times sqrt(dim): ~1 spread out, 0 collapsed."""
    if len(x) < 2:
        return x.new_ones(())
    return F.normalize(x.detach().float(), dim=1).std(dim=0).mean() * math.sqrt(x.shape[1])


class SimCLR(DigitClassifier):
    """DigitClassifier's parts (featurizer, augmentation, encoder, head) plus a projection head, trained with NT-Xent;
    the arguments after `views` are SimCLR's own (see the module docstring)."""

    def __init__(
        self,
        featurizer: dict[str, Any],
        encoder: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        augment: dict[str, Any] | None = None,
        views: dict[str, Any] | None = None,
        projection_dim: int = 128,
        temperature: float = 0.1,
        probe_regularization: float = 1.0,
        supervised_weight: float = 0.0,
        contrastive_weight: float = 1.0,
        refit_probe: bool = True,
        pretrained: str | None = None,
        **kwargs: Any,
    ) -> None:
        for key, value in (("supervised_weight", supervised_weight), ("contrastive_weight", contrastive_weight)):
            if value < 0:
                raise ConfigError(f"model.{key}={value}; use a weight >= 0 (0 switches that loss off).")
        if supervised_weight == 0 and contrastive_weight == 0:
            raise ConfigError("model.supervised_weight and model.contrastive_weight are both 0, so nothing trains "
                              "the encoder; set contrastive_weight > 0 (SimCLR) or supervised_weight > 0 (supervised).")
        if temperature <= 0:
            raise ConfigError(f"model.temperature={temperature}; NT-Xent needs a temperature > 0, e.g. 0.5.")
        if kwargs.get("teacher") and supervised_weight == 0:
            raise ConfigError("model.teacher is set but model.supervised_weight=0: the head is a detached probe, so "
                              "nothing would learn from the teacher; set supervised_weight > 0, or teacher=null.")
        super().__init__(featurizer, encoder, optimizer, scheduler, augment, **kwargs)
        self.view = SpecAugment(**views) if views else None  # null: the model's augmentations alone
        self.embedding_std = MeanMetric()

    def build_heads(self) -> None:
        width = self.encoder.output_dim
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(),
                                       nn.Linear(width, self.hparams.projection_dim))
        super().build_heads()

    @property
    def joint(self) -> bool:
        """Whether the supervised loss trains the encoder (else the head is a detached online probe)."""
        return self.hparams.supervised_weight > 0

    def contrastive_view(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        features, frames = self.augmented_features(batch)
        return self.view(features, frames) if self.view is not None else (features, frames)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        hp = self.hparams
        labels = batch["label"]
        views = [self.contrastive_view(batch)]
        h1 = self.encoder(*views[0])
        hidden, targets = h1, labels
        loss = h1.new_zeros(())
        if hp.contrastive_weight > 0:
            views.append(self.contrastive_view(batch))
            h2 = self.encoder(*views[1])
            contrastive = nt_xent(self.projector(h1), self.projector(h2), hp.temperature)
            loss = loss + hp.contrastive_weight * contrastive
            self.log("train/contrastive_loss", contrastive, on_step=False, on_epoch=True, prog_bar=True)
            if self.joint:  # both views are labeled examples
                hidden, targets = torch.cat([h1, h2]), torch.cat([labels, labels])
        # Joint: gradient into the encoder. Otherwise an online probe: no gradient reaches the encoder.
        logits = self.head(hidden if self.joint else hidden.detach())
        supervised = self.supervised_loss(logits, targets)
        # With model.teacher (joint or supervised): the head's predictions also follow the teacher's on every clip
        supervised_part = self.with_distillation(supervised, logits, views) if self.joint else supervised
        loss = loss + (hp.supervised_weight if self.joint else 1.0) * supervised_part
        self.update_metrics(self.train_metrics, self.train_loss, logits, targets, supervised)
        self.embedding_std.update(embedding_spread(h1), weight=len(h1))
        self.log("train/embedding_std", self.embedding_std, on_step=False, on_epoch=True)
        if (labels != UNLABELED).any():  # an epoch of unlabeled batches only has no accuracy to log
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        spread = float(self.embedding_std.compute())  # before Lightning resets it for the next epoch
        if spread < COLLAPSE_THRESHOLD:
            log.warning("SimCLR embeddings have collapsed (train/embedding_std %.3f < %.2f): every clip maps to "
                        "nearly the same point. Try a higher model.temperature, a lower model.optimizer.lr or "
                        "weaker views.", spread, COLLAPSE_THRESHOLD)

    # ---- pretrained weights (fine-tuning) ----
    def setup(self, stage: str) -> None:
        super().setup(stage)  # model.init_from
        # Before Lightning restores a checkpoint (resuming), so a resumed run keeps its own weights.
        if stage == "fit" and self.hparams.pretrained:
            self.load_pretrained(self.hparams.pretrained)
        # self._trainer: setup() may be called by hand, with no Trainer attached.
        bank = getattr(getattr(self._trainer, "datamodule", None), "hparams", {}).get("augment_bank", 0)
        if stage == "fit" and bank and self.hparams.contrastive_weight > 0 and self.needs_waveforms:
            log.warning("data.augment_bank=%d: a batch holds one copy of each clip, so SimCLR's two views share its "
                        "waveform augmentations and differ only in the spectrogram ones. Set data.augment_bank=0 for "
                        "views drawn afresh each step.", bank)

    def load_pretrained(self, path: str) -> None:
        """Copy the encoder and projector of a SimCLR checkpoint (the featurizer and head stay as built)."""
        self.load_parts(path, ("encoder", "projector"), key="model.pretrained")

    # ---- the linear probe ----
    @property
    def needs_probe_refit(self) -> bool:
        return bool(self.hparams.refit_probe)

    def on_validation_start(self) -> None:
        if self.trainer.state.fn != "fit":
            self.fit_probe(self.trainer.datamodule)

    def on_test_start(self) -> None:
        self.fit_probe(self.trainer.datamodule)

    def prepare_for_evaluation(self, datamodule: pl.LightningDataModule) -> None:
        self.fit_probe(datamodule)

    def fit_probe(self, datamodule: pl.LightningDataModule) -> None:
        """Logistic regression on frozen embeddings of the labeled (unaugmented) training clips, copied into
        the head. A no-op with refit_probe=false: the trained head is evaluated instead."""
        if not self.hparams.refit_probe:
            return
        embeddings, labels = self.train_embeddings(datamodule)
        labeled = labels != UNLABELED
        if not labeled.any():
            raise ConfigError("The linear probe has no labeled TRAIN clip to fit on; check data.labeled_speakers.")
        x = embeddings[labeled].double().numpy()
        y = labels[labeled].numpy()
        log.info("Linear probe: %d labeled of %d TRAIN clips; embedding std %.3f", len(y), len(labels),
                 float(embedding_spread(embeddings)))
        scaler = StandardScaler().fit(x)
        probe = LogisticRegression(C=self.hparams.probe_regularization, max_iter=2000)
        probe.fit(scaler.transform(x), y)
        # Fold the scaler into the linear layer: w' = w / s, b' = b - w' . m
        coef = np.zeros((self.hparams.num_classes, x.shape[1]))
        bias = np.full(self.hparams.num_classes, -1e4)  # classes absent from training are never predicted
        coef[probe.classes_] = probe.coef_ / scaler.scale_
        bias[probe.classes_] = probe.intercept_ - coef[probe.classes_] @ scaler.mean_
        with torch.inference_mode(False), torch.no_grad():  # called inside Lightning's test loop too
            self.head.weight.copy_(torch.as_tensor(coef, dtype=self.head.weight.dtype))
            self.head.bias.copy_(torch.as_tensor(bias, dtype=self.head.bias.dtype))
