"""`hparams_search=<model>_optuna` (hydra-optuna-sweeper): a real, tiny TPE search whose objective is the DEV
accuracy train() returns, saved to the sweep folder and to an SQLite study; every search space names real keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override
from omegaconf import OmegaConf

from tests.helpers import CONFIG_DIR, ROOT

# subprocesses, DDP ranks, Optuna trials or exporters: the slow tier (pytest -m slow)
pytestmark = pytest.mark.slow

SEARCHES = {"cnn": "DigitClassifier/TemporalCNN", "linear": "DigitClassifier/DownsampledMel",
            "vit": "DigitClassifier/SpectrogramTransformer", "simclr": "SimCLR/TemporalCNN"}


def test_cnn_search_returns_dev_accuracy_and_saves_the_best(synthetic_data: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = {**os.environ, "SDR_DATA_DIR": str(synthetic_data), "SDR_LOG_DIR": str(tmp_path),
           "SDR_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "hparams_search=cnn_optuna", "hydra.sweeper.n_trials=3",
         f"hydra.sweeper.storage={storage}", "debug=limit", "data.eval_batch_size=64",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "report.projector=false",
         "report.misclassified_audio=0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    [sweep] = (tmp_path / "multirun").iterdir()
    trials = {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert sorted(trials) == [0, 1, 2]

    results = OmegaConf.load(sweep / "optimization_results.yaml")
    dev = {n: metrics["val/acc"] for n, metrics in trials.items()}
    assert results.best_value == pytest.approx(max(dev.values()))
    assert f"Best value: {results.best_value}" in output and "Best parameters: {" in output  # printed at the end

    # the study on disk: one complete trial per job, each valued at the DEV accuracy its run wrote
    study = optuna.load_study(study_name="cnn", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial in study.trials:
        assert trial.value == pytest.approx(dev[trial.number])
        overrides = dict(o.split("=", 1) for o in OmegaConf.load(sweep / str(trial.number) / ".hydra/overrides.yaml"))
        for key, value in trial.params.items():
            assert overrides[key] == str(value)
    assert set(results.best_params) == set(OmegaConf.load(CONFIG_DIR / "hparams_search/cnn_optuna.yaml")
                                           .hydra.sweeper.params)


def compose_search(name: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=[f"hparams_search={name}_optuna", "paths.root_dir=/tmp"],
                           return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_search_space_names_real_keys_and_every_choice_builds(name: str) -> None:
    cfg = compose_search(name)
    parts = (cfg.model._target_, cfg.model.encoder._target_)
    assert "/".join(target.rsplit(".", 1)[-1] for target in parts) == SEARCHES[name]
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert cfg.optimized_metric == cfg.monitor.metric == "val/acc"
    assert sweeper.direction == {"max": "maximize", "min": "minimize"}[cfg.monitor.mode]
    assert instantiate(sweeper.sampler).__class__ is optuna.samplers.TPESampler
    parser = OverridesParser.create()
    for key, space in sweeper.params.items():
        assert OmegaConf.select(cfg, key) is not None, f"{key} is not a key of the composed config"
        distribution = create_optuna_distribution_from_override(parser.parse_override(f"{key}={space}"))
        if isinstance(distribution, optuna.distributions.CategoricalDistribution) and key.startswith("model."):
            for choice in distribution.choices:  # every architecture the search may pick can be built and run
                trial_cfg = cfg.copy()
                OmegaConf.update(trial_cfg, key, choice)
                model = instantiate(trial_cfg.model, _recursive_=False, _convert_="all").eval()
                with torch.no_grad():
                    assert model(torch.randn(2, 4000), torch.tensor([4000, 2500])).shape == (2, 10)
