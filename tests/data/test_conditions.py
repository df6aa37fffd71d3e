"""The robustness suite: every condition is deterministic and well-formed, computed once per setting and cached, and
DEV under a subset of them is a second validation set (val/acc_robust)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import sdr_lightning.data.cache as cache_module
from sdr_lightning.audio.features import LogMel
from sdr_lightning.data import conditions
from sdr_lightning.data.datamodule import SpokenDigitDataModule
from sdr_lightning.tasks.train import train
from tests.helpers import FeatureConsumer


@pytest.fixture(autouse=True)
def empty_memory_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "_MEMORY", {})


def clips() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(6000) / 8000
    return [0.3 * torch.sin(2 * torch.pi * (200 + 150 * i) * t[: 2000 + 1000 * i])
            + 0.01 * torch.randn(2000 + 1000 * i, generator=generator) for i in range(4)]


@pytest.mark.parametrize("name", sorted(conditions.CONDITIONS))
def test_every_condition_is_deterministic_and_well_formed(name: str) -> None:
    condition = conditions.CONDITIONS[name]
    pool = clips()
    first = condition.apply(clips(), 8000, seed=0, babble_pool=pool)
    again = condition.apply(clips(), 8000, seed=0, babble_pool=pool)
    other_seed = condition.apply(clips(), 8000, seed=1, babble_pool=pool)
    assert len(first) == 4 and all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(torch.isfinite(c).all() and c.dim() == 1 and len(c) >= 1 for c in first)
    if name != "clean":
        assert any(not torch.equal(c, x) for c, x in zip(first, clips()) if c.shape == x.shape) or \
            any(c.shape != x.shape for c, x in zip(first, clips()))
    random = name.split("_")[0] in ("white", "pink", "babble") or name in ("reverb", "pauses")
    assert random == any(not torch.equal(a, b) for a, b in zip(first, other_seed))  # the seed matters iff it draws


def test_suites_name_known_conditions() -> None:
    assert set(conditions.SUITES["robustness"]) == set(conditions.CONDITIONS) - {"clean"}
    assert [c.name for c in conditions.suite("dev_robust")] == conditions.SUITES["dev_robust"]
    assert [c.name for c in conditions.suite(["telephone", "quiet"])] == ["telephone", "quiet"]
    with pytest.raises(ValueError, match="unknown condition"):
        conditions.suite(["telephon"])
    with pytest.raises(ValueError, match="unknown suite"):
        conditions.suite("robustnes")


def test_condition_datasets_are_computed_once_and_cached(synthetic_data: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    dm = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), download=False)
    dm.setup("test", model=FeatureConsumer(LogMel()))
    telephone = conditions.CONDITIONS["telephone"]
    first = dm.condition_dataset("TEST", telephone)
    assert first.kind == "features" and [c.identifier for c in first.clips] == [
        c.identifier for c in dm.splits["TEST"]]
    assert not torch.equal(first.tensors[0], dm.datasets["TEST"].tensors[0])
    monkeypatch.setattr(cache_module, "_MEMORY", {})
    monkeypatch.setattr(conditions.Condition, "apply", lambda *a, **k: pytest.fail("computed again"))
    second = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), download=False)
    second.setup("test", model=FeatureConsumer(LogMel()))
    cached = second.condition_dataset("TEST", telephone)  # from the disk cache
    assert all(torch.equal(a, b) for a, b in zip(first.tensors, cached.tensors))


def test_babble_mixes_speakers_outside_the_split(synthetic_data: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    dm = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=None, download=False)
    dm.setup("test")
    seen = {}

    def record(self, waveforms, rate, seed=0, babble_pool=(), batch_size=64):
        seen["pool"] = list(babble_pool)
        return list(waveforms)

    monkeypatch.setattr(conditions.Condition, "apply", record)
    dm.condition_dataset("TEST", conditions.CONDITIONS["babble_10db"])
    train_clips = {id(dm._waveforms[c.identifier]) for c in dm.splits["TRAIN"]}
    test_clips = {id(dm._waveforms[c.identifier]) for c in dm.splits["TEST"]}
    pool = {id(w) for w in seen["pool"]}
    assert pool and pool <= train_clips and not pool & test_clips  # TRAIN speakers only: not lucas or yweweler


def test_the_babble_pool_is_part_of_the_cache_key(synthetic_data: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    babble = conditions.CONDITIONS["babble_10db"]
    calls = []
    original = conditions.Condition.apply

    def counted(self, *args, **kwargs):
        calls.append(len(kwargs["babble_pool"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(conditions.Condition, "apply", counted)
    for keep in (None, None, 5):  # the same TRAIN twice (one computation), then TEST beside fewer TRAIN clips
        monkeypatch.setattr(cache_module, "_MEMORY", {})
        dm = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), download=False)
        dm.setup("test")
        if keep is not None:
            dm.splits["TRAIN"] = dm.splits["TRAIN"][:keep]
        dm.condition_dataset("TEST", babble)
    assert len(calls) == 2 and calls[1] < calls[0]


def test_robust_dev_is_dev_under_each_condition(synthetic_data: Path, tmp_path: Path) -> None:
    dm = SpokenDigitDataModule(dir=str(synthetic_data), cache_dir=str(tmp_path), download=False,
                               robust_dev=["white_10db", "telephone"])
    dm.setup("fit", model=FeatureConsumer(LogMel()))
    assert len(dm.datasets["DEV_ROBUST"]) == 2 * len(dm.datasets["DEV"])
    assert len(dm.val_dataloader()) == 2


def test_robust_dev_is_a_second_validation_set(make_cfg, tmp_path: Path) -> None:
    value = train(make_cfg("model=linear", "debug=limit", "data.robust_dev=[white_10db,telephone]",
                           "monitor.metric=val/acc_combined", "report.projector=false"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"val/acc", "val/acc_robust", "val/loss_robust", "val/acc_combined"} <= set(metrics)
    assert metrics["val/acc_combined"] == pytest.approx((metrics["val/acc"] + metrics["val/acc_robust"]) / 2, abs=1e-6)
    assert value == pytest.approx(metrics["val/acc_combined"])  # what checkpoints followed, returned to sweepers
