from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sdr_lightning.audio.augment import AugmentationPipeline
from tests.helpers import CONFIG_DIR, compose


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("override", [f"{g}={o}" for g in ("model", "data", "trainer", "logger", "callbacks",
                                                            "experiment", "debug", "augment")
                                      for o in options(g)])
def test_every_option_composes_and_builds(tmp_path: Path, override: str) -> None:
    cfg = compose(tmp_path, [override])
    assert cfg.model._target_ and cfg.data._target_ and cfg.trainer._target_
    for node in [*(cfg.callbacks or {}).values(), *(cfg.logger or {}).values()]:
        instantiate(node)
    if cfg.model.get("augment"):
        AugmentationPipeline(OmegaConf.to_container(cfg.model.augment, resolve=True))


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
