"""Fixtures: a small synthetic FSDD-like dataset, the real config composed onto tmp paths, the real clips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from tests.helpers import SHARED_DATA, compose, train_tiny, write_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("speech_data"))


@pytest.fixture
def make_cfg(tmp_path: Path, synthetic_data: Path):
    """Compose the real config on the synthetic data: make_cfg("model=vit", "debug=fast_dev_run")."""

    def make(*overrides: str) -> DictConfig:
        return compose(tmp_path, [f"data.dir={synthetic_data}", "data.batch_size=16", *overrides])

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "SDR_metadata.tsv").is_file():
        message = f"real FSDD clips not found at {SHARED_DATA} (set SDR_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI always has the data: never let these tests silently vanish there
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory: pytest.TempPathFactory, synthetic_data: Path) -> dict:
    """A tiny trained CNN run on the synthetic clips (its metrics.json), shared by the tests that load one."""
    return train_tiny(tmp_path_factory.mktemp("cnn_run"), synthetic_data, "model=cnn", "model.encoder.channels=32")
