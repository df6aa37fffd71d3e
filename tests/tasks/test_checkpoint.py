"""Loading a run is safe: a crafted checkpoint or run folder that names a `_target_` outside the allow-list is refused
with one error naming the file and the target, and nothing it names runs (the victim file stays as it was)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch
from omegaconf import OmegaConf

from sdr_lightning.config import UnsafeTargetError, check_target, check_targets
from sdr_lightning.tasks.checkpoint import load_checkpoint, load_for_inference
from sdr_lightning.tasks.launch import resume_arguments
from sdr_lightning.tasks.predict import predict
from tests.helpers import ROOT, compose


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


def attacks(tmp_path: Path, target: Path) -> dict[str, dict]:
    """`_target_` nodes that would truncate `target`, run a shell, start a process or delete a folder."""
    marker = tmp_path / "pwned"
    return {
        "open": {"_target_": "builtins.open", "file": str(target), "mode": "w"},
        "system": {"_target_": "os.system", "_args_": [f"touch {marker}"]},
        "popen": {"_target_": "subprocess.Popen", "args": ["touch", str(marker)]},
        # inside the allow-listed package, but a module it imports, not a class of its own
        "reexport": {"_target_": "sdr_lightning.data.download.shutil.rmtree", "path": str(target.parent)},
        "function": {"_target_": "sdr_lightning.data.download.prepare_fsdd", "target_dir": str(tmp_path / "x")},
    }


def crafted_run(cnn_run: dict, tmp_path: Path, name: str, edit_hparams=None, edit_config=None) -> Path:
    """A copy of a real run folder with its checkpoint's hyperparameters or its .hydra/config.yaml edited."""
    source = Path(cnn_run["best_checkpoint"]).parent.parent
    run = tmp_path / name
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / ".hydra", run / ".hydra")
    checkpoint = torch.load(cnn_run["best_checkpoint"], map_location="cpu", weights_only=True)
    if edit_hparams:
        edit_hparams(checkpoint["hyper_parameters"])
    torch.save(checkpoint, run / "checkpoints" / "best.ckpt")
    if edit_config:
        config = OmegaConf.load(run / ".hydra" / "config.yaml")
        edit_config(config)
        OmegaConf.save(config, run / ".hydra" / "config.yaml")
    return run / "checkpoints" / "best.ckpt"


def assert_untouched(tmp_path: Path, target: Path) -> None:
    assert target.read_text() == "precious\n"
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("attack", ["open", "system", "popen", "reexport", "function"])
@pytest.mark.parametrize("part", ["featurizer", "encoder", "augment"])
def test_crafted_checkpoint_is_refused_and_runs_nothing(cnn_run: dict, tmp_path: Path, attack: str,
                                                        part: str) -> None:
    target = victim(tmp_path)
    node = attacks(tmp_path, target)[attack]

    def edit(hparams: dict) -> None:
        if part == "augment":  # nested one level deeper, as the augmentation chains are
            hparams["augment"] = {"waveform": {"evil": node}}
        else:
            hparams[part] = node

    ckpt = crafted_run(cnn_run, tmp_path, "run", edit_hparams=edit)
    with pytest.raises(UnsafeTargetError) as raised:
        load_checkpoint(ckpt)
    message = str(raised.value)
    assert str(ckpt) in message and node["_target_"] in message and "nothing was run" in message
    assert_untouched(tmp_path, target)


@pytest.mark.parametrize("attack", ["open", "system", "popen", "reexport"])
def test_crafted_run_config_is_refused_and_runs_nothing(cnn_run: dict, tmp_path: Path, attack: str) -> None:
    target = victim(tmp_path)
    node = attacks(tmp_path, target)[attack]
    ckpt = crafted_run(cnn_run, tmp_path, "run", edit_config=lambda config: config.update({"data": node}))
    with pytest.raises(UnsafeTargetError, match=f"config.yaml: data._target_='{node['_target_']}'"):
        load_for_inference(ckpt)
    assert_untouched(tmp_path, target)


def test_run_config_model_class_must_be_allowed(cnn_run: dict, tmp_path: Path) -> None:
    """The model class comes from the run config (it used to go straight to hydra's get_class)."""
    target = victim(tmp_path)
    ckpt = crafted_run(cnn_run, tmp_path, "run",
                       edit_config=lambda config: OmegaConf.update(config, "model._target_", "subprocess.Popen"))
    with pytest.raises(UnsafeTargetError, match="model._target_='subprocess.Popen'"):
        load_checkpoint(ckpt)
    assert_untouched(tmp_path, target)


@pytest.mark.slow
@pytest.mark.slow
def test_predict_command_refuses_the_exploit(cnn_run: dict, tmp_path: Path) -> None:
    """The measured defect: predict.py on a checkpoint whose featurizer is builtins.open(mode='w') truncated a file."""
    target = victim(tmp_path)
    ckpt = crafted_run(cnn_run, tmp_path, "run", edit_hparams=lambda h: h.update(
        featurizer={"_target_": "builtins.open", "file": str(target), "mode": "w"}))
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, torch.zeros(4000).numpy(), 8000)
    with pytest.raises(UnsafeTargetError, match="builtins.open"):
        predict(compose(tmp_path, [f"ckpt_path={ckpt}", f"audio={clip}"], config_name="predict"))
    result = subprocess.run([sys.executable, "predict.py", f"ckpt_path={ckpt}", f"audio={clip}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().startswith("error:") and "builtins.open" in result.stderr
    assert target.read_text() == "precious\n"


def test_resume_refuses_replayed_target_overrides(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    marker = tmp_path / "pwned"
    for override in ("model.featurizer._target_=os.system",
                     f"+model.evil={{_target_:os.system,_args_:[touch {marker}]}}"):
        (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create([override])))
        with pytest.raises(UnsafeTargetError, match="overrides.yaml"):
            resume_arguments(["train.py", f"resume_dir={run}"])
    # a target override naming one of our classes is replayed as usual
    allowed = "model.featurizer._target_=sdr_lightning.audio.features.LogMel"
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create([allowed])))
    assert allowed in resume_arguments(["train.py", f"resume_dir={run}"])
    assert not marker.exists()


def test_allow_list_accepts_the_project_own_targets(tmp_path: Path) -> None:
    cfg = compose(tmp_path, ["model=simclr", "augment=all"])
    for section in ("model", "data"):
        check_targets(cfg[section], "composed config")
    assert check_target("torch.optim.lr_scheduler.OneCycleLR", "x") is torch.optim.lr_scheduler.OneCycleLR
    for bad in ("os.system", "torch.load", "sdr_lightning", "sdr_lightning.nothing.Here", "torch.optimizer.X", 3):
        with pytest.raises(UnsafeTargetError):
            check_target(bad, "x")


def test_scoring_a_run_needs_none_of_the_synthetic_voices_it_trained_on(cnn_run: dict, synthetic_data: Path,
                                                                        tmp_path: Path) -> None:
    """A run trained with data.synthetic_voices is scored without them (moved, deleted, another working folder);
    only a stage that reads TRAIN (SimCLR's probe refit) still needs them, and says how to write them."""
    from sdr_lightning.errors import ConfigError
    from sdr_lightning.tasks.checkpoint import run_datamodule
    from sdr_lightning.tasks.evaluate import predict_split

    source = Path(cnn_run["best_checkpoint"]).parent.parent
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    config.data.synthetic_voices = str(tmp_path / "gone" / "train")
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")
    checkpoint = run_dir / "checkpoints" / Path(cnn_run["best_checkpoint"]).name
    datamodule = run_datamodule(load_checkpoint(checkpoint), data_dir=str(synthetic_data))
    assert datamodule.hparams.synthetic_voices is None
    assert 0 <= predict_split(load_checkpoint(checkpoint).model, datamodule, "TEST").accuracy <= 1
    with pytest.raises(ConfigError, match=r"data.synthetic_voices=.*gone.*python -m sdr_lightning.data.voices"):
        run_datamodule(load_checkpoint(checkpoint), data_dir=str(synthetic_data), stage="fit")
