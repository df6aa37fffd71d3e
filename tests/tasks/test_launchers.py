"""Hydra launchers: `hydra/launcher=joblib` runs a multirun's jobs in worker processes, a share of the threads each;
`hydra/launcher=slurm` composes into a valid submitit SLURM launcher (nothing is submitted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import joblib
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from tests.helpers import CONFIG_DIR, ROOT


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_with_a_share_of_threads_each(synthetic_data: Path,
                                                                               tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # let joblib share the cores out
    env.update(SDR_DATA_DIR=str(synthetic_data), SDR_LOG_DIR=str(tmp_path), SDR_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=linear",
         "seed=1,2", "debug=limit", "data.batch_size=16", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "report.projector=false", "report.misclassified_audio=0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr  # Hydra's joblib launcher ran the sweep
    jobs = sorted(p.parent for p in tmp_path.glob("multirun/*/*/metrics.json"))
    assert [job.name.split("_")[0] for job in jobs] == ["0", "1"]
    models = {json.loads((job / "metrics.json").read_text())["model"] for job in jobs}
    assert models == {"DigitClassifier/DownsampledMel"}
    # each job in its own process, with cores / n_jobs torch threads (joblib sets OMP_NUM_THREADS in its workers)
    threads = max(joblib.cpu_count() // 2, 1)
    for job in jobs:
        assert f"torch uses {threads} CPU threads" in (job / "train.log").read_text()
    events = [event.name for job in jobs for event in job.glob("tensorboard/events.out.tfevents.*")]
    # <time>.<host>.<pid>.<n>: two worker processes (the basic launcher runs every job in the launching process).
    # Whether the two tiny jobs also overlap in time depends on the machine's load, so it is not asserted.
    assert len({name.rsplit(".", 2)[-2] for name in events}) == 2


def compose_hydra(*overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_slurm_launcher_config_composes_into_submitit() -> None:
    cfg = compose_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
                        "trainer=ddp", "trainer.devices=4", "hydra.launcher.array_parallelism=4")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.timeout_min == 30 and launcher.array_parallelism == 4
    # one SLURM task per GPU, both following trainer.devices, so SLURM starts the DDP ranks
    assert launcher.gpus_per_node == launcher.tasks_per_node == 4
    assert launcher.nodes == 1 and launcher.cpus_per_task == 4 and launcher.mem_gb == 16
    assert launcher.submitit_folder.endswith("/.submitit/%j")
    # the real launcher class accepts every key (it only submits when a sweep launches, which this never does)
    slurm = instantiate(launcher)
    assert type(slurm).__name__ == "SlurmLauncher"
    assert slurm.params["gpus_per_node"] == 4 and slurm.params["partition"] == "gpu"


def test_slurm_launcher_defaults_to_one_gpu_task_per_job() -> None:
    launcher = compose_hydra("hydra/launcher=slurm", "trainer=gpu").hydra.launcher
    assert launcher.gpus_per_node == launcher.tasks_per_node == 1 and launcher.partition is None
