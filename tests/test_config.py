import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sdr_lightning.audio.augment import AugmentationPipeline
from sdr_lightning.config import validate_train_config
from sdr_lightning.errors import ConfigError
from sdr_lightning.tasks.train import train
from tests.helpers import CONFIG_DIR, ROOT, compose


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("override", [f"{g}={o}" for g in ("model", "encoder", "featurizer", "optimizer", "scheduler",
                                                            "data", "trainer", "logger", "callbacks", "experiment",
                                                            "debug", "augment")
                                      for o in options(g)])
def test_every_option_composes_and_builds(tmp_path: Path, override: str) -> None:
    cfg = compose(tmp_path, [override])
    assert cfg.model._target_ and cfg.data._target_ and cfg.trainer._target_
    for node in [*(cfg.callbacks or {}).values(), *(cfg.logger or {}).values()]:
        instantiate(node)
    if cfg.model.get("augment"):
        AugmentationPipeline(OmegaConf.to_container(cfg.model.augment, resolve=True))
    model = instantiate(cfg.model, _recursive_=False, _convert_="all")  # every part of the model builds
    assert model.encoder.output_dim > 0


def test_experiment_sets_several_groups(tmp_path: Path) -> None:
    cfg = compose(tmp_path, ["experiment=study_linear"])
    assert cfg.model.encoder._target_.endswith("DownsampledMel") and cfg.model.featurizer.n_mels == 13
    cfg = compose(tmp_path, ["experiment=study_cnn_george"])
    assert list(cfg.data.train_speakers) == ["george"]


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDR_DATA_DIR", "/somewhere/clips")
    assert compose(tmp_path).data.dir == "/somewhere/clips"


def test_unknown_option_lists_valid_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose(tmp_path, ["model=resnet"])
    assert "cnn" in str(err.value) and "vit" in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("trainer.max_epochs=-1", r"trainer.max_epochs=-1 cannot work; use an integer >= 1"),
    ("trainer.max_epochs=0", r"trainer.max_epochs=0 cannot work"),
    ("data.batch_size=0", r"data.batch_size=0 cannot work; use an integer >= 1"),
    ("data.group_by_length=-1", r"data.group_by_length=-1 cannot work; use an integer >= 0"),
    ("data.eval_batch_size=-3", r"data.eval_batch_size=-3 cannot work"),
    ("model.optimizer.lr=abc", r"model.optimizer.lr='abc' cannot work; use a number > 0"),
    ("model.optimizer.lr=0", r"model.optimizer.lr=0 cannot work"),
    ("seed=None", r"seed='None' cannot work; use an integer, or null"),
    ("model.label_smoothing=1.5", r"model.label_smoothing=1.5 cannot work; use a number in \[0, 1\)"),
    ("data.num_workers=-1", r"data.num_workers=-1 cannot work"),
    ("data.cache_max_gb=0", r"data.cache_max_gb=0 cannot work"),
])
def test_values_that_cannot_work_are_refused_before_any_work(make_cfg, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        train(make_cfg(override))


def test_valid_values_pass(make_cfg) -> None:
    for cfg in (make_cfg(), make_cfg("seed=null", "model=simclr"), make_cfg("model=linear", "data.cache_max_gb=null")):
        validate_train_config(cfg)


@pytest.mark.slow
def test_a_refused_config_leaves_no_run_folder(synthetic_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SDR_DATA_DIR": str(synthetic_data)}
    for override in ("trainer.max_epochs=-1", "model.featurizer.cepstra=41", "data.train_speakers=[lucas]"):
        run = tmp_path / "run"
        result = subprocess.run([sys.executable, "train.py", override, f"hydra.run.dir={run}"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")
        assert not run.exists(), override
