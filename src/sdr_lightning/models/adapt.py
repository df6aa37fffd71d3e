"""Test-time adaptation of a trained model's BatchNorm statistics to new recordings (AdaBN: Li et al., 2016).

A BatchNorm layer normalises with the mean and variance it saw in training. Another voice, microphone or room shifts
those statistics, and a model that never heard the shift normalises its features wrongly. Re-estimating them on a
few unlabeled clips of the new setting (a user's voice through their phone, the clips of a noisy room) puts the
features back where the layers after them expect them; no label and no weight changes. docs/adaptation.md measures
it on held-out speakers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from sdr_lightning.data.datamodule import collate_batch, featurize_all


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of `model` that keeps running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, batches: Iterable[dict[str, Tensor]], prior: float = 0.0) -> int:
    """Replace the running mean and variance of every BatchNorm layer of `model` (a DigitClassifier) by those of
    `batches` (batches as the datamodule gives them, features or waveforms; labels are not read), each batch weighted
    equally, and return how many clips they held. `prior` > 0 keeps the model's own statistics in the blend as if
    they came from that many clips (Schneider et al., 2020): (prior * old + clips * new) / (prior + clips). Nothing
    else changes: the weights, dropout and augmentation stay as in evaluation, and the model is left in eval mode. A
    model without BatchNorm is left as it is (0 layers)."""
    layers = batchnorm_layers(model)
    old = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in layers]
    model.eval()
    saved_momentum = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches instead of an exponential one
        layer.train()
    clips = 0
    try:
        for batch in batches:
            features, frames = model.batch_features(batch)
            model.encoder(features, frames)
            clips += len(frames)
    finally:
        for layer, momentum in zip(layers, saved_momentum):
            layer.momentum = momentum
        model.eval()
    if prior > 0 and clips:
        weight = prior / (prior + clips)
        for layer, (mean, var) in zip(layers, old):
            layer.running_mean.lerp_(mean, weight)
            layer.running_var.lerp_(var, weight)
    return clips


def waveform_batches(model: nn.Module, waveforms: Sequence[Tensor], batch_size: int, seed: int = 0
                     ) -> list[dict[str, Tensor]]:
    """`waveforms` as the training batches were made: each clip's features computed alone, the clips shuffled
    (seeded) into batches of `batch_size` and padded to each batch's longest, since BatchNorm's statistics in
    training counted the padded frames of such batches."""
    features = featurize_all(model.featurizer, waveforms)
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed)).tolist()
    return [collate_batch([(features[i], 0, i) for i in order[start:start + batch_size]])
            for start in range(0, len(order), batch_size)]


def dataset_batches(dataset: Dataset, batch_size: int, clips: int = 0, seed: int = 0) -> DataLoader:
    """`clips` of a datamodule dataset (a split, or a split under a condition), drawn without replacement (seeded;
    0: all of them), in batches of `batch_size` as training made them: what adapt_batchnorm takes to adapt a model
    to that set's setting."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = order[:clips] if clips else order
    return DataLoader(Subset(dataset, chosen), batch_size=batch_size, collate_fn=collate_batch)
