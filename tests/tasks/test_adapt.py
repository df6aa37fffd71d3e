"""adapt.py: BatchNorm statistics re-estimated on unlabeled clips (models/adapt.py), written as a checkpoint that the
other commands load like any other."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hydra.core.global_hydra import GlobalHydra

from sdr_lightning.audio.io import load_audio
from sdr_lightning.errors import ConfigError, DataError
from sdr_lightning.models.adapt import adapt_batchnorm, batchnorm_layers, waveform_batches
from sdr_lightning.tasks.adapt import adapt
from sdr_lightning.tasks.checkpoint import load_checkpoint, read_checkpoint
from sdr_lightning.tasks.predict import predict_files
from tests.helpers import compose


def adapt_cfg(tmp_path: Path, *overrides: str):
    cfg = compose(tmp_path, list(overrides), config_name="adapt")
    GlobalHydra.instance().clear()
    return cfg


def shifted_clips(source: Path, folder: Path, count: int = 12, gain: float = 4.0) -> Path:
    """`count` of the synthetic clips, louder and with a hum: a setting whose statistics differ from training's."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.wav"))[:count]:
        wave, rate = soundfile.read(path, dtype="float32")
        hum = 0.05 * np.sin(2 * np.pi * 120 * np.arange(len(wave)) / rate)
        soundfile.write(folder / path.name, np.clip(gain * wave + hum, -1, 1).astype(np.float32), rate)
    return folder


@pytest.fixture
def run_copy(cnn_run: dict, tmp_path: Path) -> Path:
    """The tiny CNN run's folder copied, so the adapted checkpoint written into it leaves the shared run alone."""
    source = Path(cnn_run["best_checkpoint"]).parent.parent
    copy = tmp_path / "run"
    shutil.copytree(source, copy)
    return copy / "checkpoints" / Path(cnn_run["best_checkpoint"]).name


def test_adapt_batchnorm_gives_the_batches_statistics_and_changes_nothing_else(cnn_run: dict, synthetic_data: Path
                                                                              ) -> None:
    model = load_checkpoint(cnn_run["best_checkpoint"]).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    waveforms = [load_audio(p) for p in sorted(synthetic_data.glob("*.wav"))[:40]]
    batches = waveform_batches(model, waveforms, batch_size=16)
    assert [len(b["feature_lengths"]) for b in batches] == [16, 16, 8]
    first = batchnorm_layers(model)[0]
    inputs = []
    hook = first.register_forward_hook(lambda module, args, output: inputs.append(args[0].detach()))
    assert adapt_batchnorm(model, batches) == 40
    hook.remove()
    assert not model.training and all(not m.training for m in model.modules())
    # the cumulative average of each batch's mean and unbiased variance over (clips, frames), padding included
    means = torch.stack([x.mean(dim=(0, 2)) for x in inputs]).mean(0)
    variances = torch.stack([x.var(dim=(0, 2), unbiased=True) for x in inputs]).mean(0)
    torch.testing.assert_close(first.running_mean, means)
    torch.testing.assert_close(first.running_var, variances)
    name = next(n for n, m in model.named_modules() if m is first)
    assert not torch.allclose(first.running_mean, before[f"{name}.running_mean"])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    # the same clips again give the same statistics: the old ones are replaced, not blended
    again = {k: v.clone() for k, v in model.state_dict().items()}
    adapt_batchnorm(model, batches)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, again[key])


def test_a_prior_blends_the_checkpoints_statistics_in_as_that_many_clips(cnn_run: dict, synthetic_data: Path) -> None:
    waveforms = [load_audio(p) for p in sorted(synthetic_data.glob("*.wav"))[:24]]
    plain, blended = (load_checkpoint(cnn_run["best_checkpoint"]).model for _ in range(2))
    own = [(m.running_mean.clone(), m.running_var.clone()) for m in batchnorm_layers(blended)]
    adapt_batchnorm(plain, waveform_batches(plain, waveforms, 8))
    assert adapt_batchnorm(blended, waveform_batches(blended, waveforms, 8), prior=24) == 24
    for (mean, var), alone, mixed in zip(own, batchnorm_layers(plain), batchnorm_layers(blended)):
        torch.testing.assert_close(mixed.running_mean, (mean + alone.running_mean) / 2)  # 24 clips each way
        torch.testing.assert_close(mixed.running_var, (var + alone.running_var) / 2)

def test_adapt_command_writes_a_checkpoint_that_predict_loads(run_copy: Path, synthetic_data: Path,
                                                              tmp_path: Path, capsys) -> None:
    clips = shifted_clips(synthetic_data, tmp_path / "my_voice")
    out = adapt(adapt_cfg(tmp_path, f"ckpt_path={run_copy}", f"audio={clips}"))
    assert out == run_copy.parent.parent / "adapted" / "my_voice.ckpt"
    assert "adapted checkpoint:" in capsys.readouterr().out
    saved = read_checkpoint(out)
    assert saved["adapted"]["clips"] == 12 and saved["adapted"]["from"] == str(run_copy.resolve())
    original, adapted = load_checkpoint(run_copy).model, load_checkpoint(out).model
    bn = batchnorm_layers(adapted)[0]
    assert not torch.allclose(bn.running_mean, batchnorm_layers(original)[0].running_mean)
    # what the file holds is what adapting in memory gives, with conf/adapt.yaml's prior
    assert saved["adapted"]["prior"] == 30
    expected = load_checkpoint(run_copy).model
    adapt_batchnorm(expected, waveform_batches(expected, [load_audio(p) for p in sorted(clips.iterdir())], 16),
                    prior=30)
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(adapted.state_dict()[key], value)
    results = predict_files(adapted, sorted(clips.iterdir()))
    assert all(r.error is None and r.digit is not None for r in results)
    # never where training looks for a checkpoint to resume from
    assert not list((run_copy.parent).glob("*my_voice*"))


def test_clips_named_as_few_digits_get_a_warning(run_copy: Path, synthetic_data: Path, tmp_path: Path,
                                                 capsys) -> None:
    ones = tmp_path / "ones"
    ones.mkdir()
    for n, path in enumerate(sorted(synthetic_data.glob("1_*.wav"))[:10]):
        shutil.copy(path, ones / f"1_me_{n}.wav")
    adapt(adapt_cfg(tmp_path, f"ckpt_path={run_copy}", f"audio={ones}"))
    assert "only 1 different digit(s) (1)" in capsys.readouterr().out
    varied = shifted_clips(synthetic_data, tmp_path / "varied", count=30)  # the first 30 names: digits 0-2 only
    adapt(adapt_cfg(tmp_path, f"ckpt_path={run_copy}", f"audio={varied}"))
    assert "only 3 different digit(s) (0, 1, 2)" in capsys.readouterr().out
    takes = tmp_path / "takes"
    takes.mkdir()
    for n, path in enumerate(sorted(ones.iterdir())):
        shutil.copy(path, takes / f"take_{n}.wav")  # unlabeled: nothing to count, no warning
    adapt(adapt_cfg(tmp_path, f"ckpt_path={run_copy}", f"audio={takes}"))
    assert "warning" not in capsys.readouterr().out

def test_a_long_recording_counts_as_its_spoken_digits(run_copy: Path, synthetic_data: Path, tmp_path: Path) -> None:
    """Someone counting with a pause after each digit: one file, cut by voice-activity detection into one clip per
    digit."""
    rng = np.random.default_rng(0)
    gap = np.zeros(int(0.6 * 8000), dtype=np.float32)
    pieces = [gap]
    for path in sorted(synthetic_data.glob("*_lucas_0.wav")):
        pieces += [soundfile.read(path, dtype="float32")[0], gap]
    recording = np.concatenate(pieces) + 0.001 * rng.standard_normal(sum(len(p) for p in pieces)).astype(np.float32)
    folder = tmp_path / "counting"
    folder.mkdir()
    soundfile.write(folder / "me_counting.wav", recording, 8000)
    out = adapt(adapt_cfg(tmp_path, f"ckpt_path={run_copy}", f"audio={folder}", "segmenter=energy"))
    assert read_checkpoint(out)["adapted"]["clips"] == 10  # lucas's digits 0-9, take 0
    # the file itself: named by its stem, me_counting.ckpt, not me_counting.wav.ckpt
    single = adapt(adapt_cfg(tmp_path, f"ckpt_path={run_copy}", f"audio={folder / 'me_counting.wav'}",
                             "segmenter=energy"))
    assert single == out.with_name("me_counting.ckpt") and read_checkpoint(single)["adapted"]["clips"] == 10
    with pytest.raises(DataError, match="fewer than min_clips=11"):
        adapt(adapt_cfg(tmp_path, f"ckpt_path={run_copy}", f"audio={folder}", "segmenter=energy", "min_clips=11",
                        "overwrite=true"))

def test_adapt_refuses_too_few_clips_and_an_existing_output(run_copy: Path, synthetic_data: Path,
                                                            tmp_path: Path, capsys) -> None:
    few = shifted_clips(synthetic_data, tmp_path / "few", count=3)
    (few / "labels.csv").write_text("file,label\n")  # not a clip: skipped without a word
    (few / "broken.wav").write_bytes(b"")  # a clip that does not decode: listed, left out
    with pytest.raises(DataError, match=r"3 clip\(s\) decoded, fewer than min_clips=10"):
        adapt(adapt_cfg(tmp_path, f"ckpt_path={run_copy}", f"audio={few}"))
    printed = capsys.readouterr().out
    assert "left out:" in printed and "broken.wav" in printed and "labels.csv" not in printed
    assert not (run_copy.parent.parent / "adapted").exists()
    out = adapt(adapt_cfg(tmp_path, f"ckpt_path={run_copy}", f"audio={few}", "min_clips=3"))
    written = out.stat().st_mtime_ns
    with pytest.raises(ConfigError, match="exists already; give another out=, or overwrite=true"):
        adapt(adapt_cfg(tmp_path, f"ckpt_path={run_copy}", f"audio={few}", "min_clips=3"))
    assert out.stat().st_mtime_ns == written
    with pytest.raises(ConfigError, match=r"prior=-1, .*the prior counts clips"):
        adapt(adapt_cfg(tmp_path, f"ckpt_path={run_copy}", f"audio={few}", "prior=-1", "overwrite=true"))
    elsewhere = adapt(adapt_cfg(tmp_path, f"ckpt_path={run_copy}", f"audio={few}", "min_clips=3",
                                f"out={tmp_path / 'mine.ckpt'}"))
    assert load_checkpoint(elsewhere, run_copy.parent.parent).model is not None


def test_a_model_without_batchnorm_has_nothing_to_adapt(make_cfg) -> None:
    from hydra.utils import instantiate

    vit = instantiate(make_cfg("model=vit").model, _recursive_=False, _convert_="all")
    assert batchnorm_layers(vit) == []
    assert len(batchnorm_layers(instantiate(make_cfg().model, _recursive_=False, _convert_="all"))) > 0



def test_an_adapted_checkpoint_exports_beside_itself_not_over_the_runs_export(tmp_path: Path) -> None:
    run = tmp_path / "run"
    own = compose(tmp_path, [f"ckpt_path={run}/checkpoints/last.ckpt"], config_name="export")
    GlobalHydra.instance().clear()
    adapted = compose(tmp_path, [f"ckpt_path={run}/adapted/my_voice.ckpt"], config_name="export")
    GlobalHydra.instance().clear()
    assert own.output_dir == str(run.resolve() / "export")
    assert adapted.output_dir == str(run.resolve() / "adapted" / "my_voice_export")


@pytest.mark.slow
def test_the_adapt_command_runs_and_refuses_with_one_line(run_copy: Path, synthetic_data: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT

    clips = shifted_clips(synthetic_data, tmp_path / "room")
    done = subprocess.run([sys.executable, str(ROOT / "adapt.py"), f"ckpt_path={run_copy}", f"audio={clips}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (run_copy.parent.parent / "adapted" / "room.ckpt").is_file() and "adapted checkpoint:" in done.stdout
    refused = subprocess.run([sys.executable, str(ROOT / "adapt.py"), f"ckpt_path={run_copy}", f"audio={clips}",
                              "min_clips=50", "overwrite=true"], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "error: audio=" in refused.stderr and "fewer than min_clips=50" in refused.stderr
