"""The model's augmentation chains, built from the plain `augment` config dict that `conf/augment/` composes.

    {"waveform": {"speed": {"_target_": ...}, "noise": {...}}, "spectrogram": {"specaugment": {...}}}

Waveform augmentations run before the featurizer and spectrogram augmentations after it, each chain in
config order. The config stays a dict in the model's hyperparameters (checkpoints load with
weights_only=True); the modules hold no weights, so they add nothing to the state dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import Tensor, nn

from sdr_lightning.audio.augment.base import Augmentation
from sdr_lightning.errors import ConfigError

STAGES = ("waveform", "spectrogram")


class AugmentationPipeline(nn.Module):
    def __init__(self, config: Mapping[str, Mapping[str, Any] | None] | None = None) -> None:
        super().__init__()
        config = dict(config or {})
        unknown = sorted(set(config) - set(STAGES))
        if unknown:
            raise ConfigError(f"model.augment has unknown key(s) {unknown}; it holds {list(STAGES)}, each mapping "
                              "names to _target_ configs. Select options with augment=[speed,noise,specaugment].")
        self.waveform = nn.ModuleDict(build_stage("waveform", config.get("waveform")))
        self.spectrogram = nn.ModuleDict(build_stage("spectrogram", config.get("spectrogram")))
        # false: the waveform chain passes clips through (the clean epochs of tasks.callbacks.CleanFinish)
        self.waveform_enabled = True

    @property
    def needs_waveforms(self) -> bool:
        """True if training batches must hold raw waveforms rather than precomputed features."""
        return len(self.waveform) > 0

    def augment_waveform(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if not self.waveform_enabled:
            return waveform, lengths
        for augmentation in self.waveform.values():
            waveform, lengths = augmentation(waveform, lengths)
        return waveform, lengths

    def augment_spectrogram(self, features: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        for augmentation in self.spectrogram.values():
            features, frames = augmentation(features, frames)
        return features, frames


def build_stage(stage: str, nodes: Mapping[str, Any] | None) -> dict[str, Augmentation]:
    """name -> module for every non-null entry (null switches an option off: model.augment.waveform.gain=null)."""
    modules = {}
    for name, node in (nodes or {}).items():
        if not node:
            continue
        where = f"model.augment.{stage}.{name}"
        if not isinstance(node, Mapping) or "_target_" not in node:
            raise ConfigError(f"{where} needs a _target_ (an sdr_lightning.audio.augment class), e.g. "
                              f"_target_: sdr_lightning.audio.augment.SpeedPerturb; got {node!r}.")
        try:
            module = instantiate(node)
        except InstantiationException as err:  # a bad value or a misspelt argument: name the entry at fault
            raise ConfigError(f"{where}: {err.__cause__ or err}") from err
        if not isinstance(module, Augmentation):
            raise ConfigError(f"{where}: {node['_target_']} is not an sdr_lightning.audio.augment.Augmentation; use "
                              "one of the classes in sdr_lightning/audio/augment/ (or subclass Augmentation).")
        modules[name] = module
    return modules
