"""SimCLR: an encoder trained with NT-Xent on two augmented views of each clip, judged by a linear probe.

A view is the model's own augmentations (`augment=...`: waveform ones redrawn per view, then the featurizer
and spectrogram ones) followed by the `views` SpecAugment masks, so `augment=[speed,pitch]` adds speaker-like
variation to the contrastive pairs.

During fit an online probe (a linear head on detached embeddings) tracks `val/acc` for checkpointing.
For validate/test after fit, the probe is refit on frozen embeddings of the training clips (logistic
regression), so the reported accuracy is a true linear probe of the pretrained encoder.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from sdr_lightning.augment import SpecAugment
from sdr_lightning.models.classifier import DigitClassifier


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Normalised-temperature cross entropy: each view must pick its partner among the 2B-1 others."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.T / temperature
    similarity = similarity.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), -torch.inf)
    batch = len(z1)
    targets = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
    return F.cross_entropy(similarity, targets)


class SimCLR(DigitClassifier):
    def __init__(
        self,
        backbone: dict[str, Any],
        views: dict[str, Any],
        projection_dim: int = 128,
        temperature: float = 0.1,
        probe_regularization: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.encoder = instantiate(backbone, n_mels=self.featurizer.n_mels)
        width = self.encoder.output_dim
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, projection_dim))
        self.view = SpecAugment(**views)
        self.attach_head()

    def contrastive_view(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.view(*self.augmented_features(batch))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        h1 = self.encoder(*self.contrastive_view(batch))
        h2 = self.encoder(*self.contrastive_view(batch))
        contrastive = nt_xent(self.projector(h1), self.projector(h2), self.hparams.temperature)
        logits = self.head(h1.detach())  # online probe: no gradient reaches the encoder
        probe_loss = self.criterion(logits, batch["label"])
        self.train_loss.update(probe_loss.detach(), weight=len(logits))
        self.train_metrics.update(logits.detach(), batch["label"])
        self.log("train/contrastive_loss", contrastive, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, prog_bar=True)
        return contrastive + probe_loss

    def on_validation_start(self) -> None:
        if self.trainer.state.fn != "fit":
            self.fit_probe(self.trainer.datamodule)

    def on_test_start(self) -> None:
        self.fit_probe(self.trainer.datamodule)

    def prepare_for_evaluation(self, datamodule: pl.LightningDataModule) -> None:
        self.fit_probe(datamodule)

    def fit_probe(self, datamodule: pl.LightningDataModule) -> None:
        """Logistic regression on frozen embeddings of the (unaugmented) training clips, copied into the head."""
        with torch.inference_mode(False), torch.no_grad():
            was_training = self.training
            self.eval()
            embeddings, labels = [], []
            for batch in datamodule.dataloader("TRAIN"):
                batch = {k: v.to(self.device) for k, v in batch.items()}
                embeddings.append(self.embed(batch).cpu())
                labels.append(batch["label"].cpu())
            self.train(was_training)
            x = torch.cat(embeddings).double().numpy()
            y = torch.cat(labels).numpy()
            scaler = StandardScaler().fit(x)
            probe = LogisticRegression(C=self.hparams.probe_regularization, max_iter=2000)
            probe.fit(scaler.transform(x), y)
            # Fold the scaler into the linear layer: w' = w / s, b' = b - w' . m
            coef = np.zeros((self.hparams.num_classes, x.shape[1]))
            bias = np.full(self.hparams.num_classes, -1e4)  # classes absent from training are never predicted
            coef[probe.classes_] = probe.coef_ / scaler.scale_
            bias[probe.classes_] = probe.intercept_ - coef[probe.classes_] @ scaler.mean_
            self.head.weight.copy_(torch.as_tensor(coef, dtype=self.head.weight.dtype))
            self.head.bias.copy_(torch.as_tensor(bias, dtype=self.head.bias.dtype))
