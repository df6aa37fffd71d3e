"""predict.py: audio decoding (rates, channels, sample formats, bad files), per-file predictions and errors, CSV,
and agreement with the evaluation reports of the same checkpoint."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hydra.core.global_hydra import GlobalHydra

from sdr_lightning.analysis.predictions import read_predictions
from sdr_lightning.audio.io import load_audio
from sdr_lightning.errors import ConfigError, DataError
from sdr_lightning.tasks.predict import find_audio, load_model, predict, predict_files
from tests.helpers import ROOT, compose, train_tiny

RATE = 8000


def predict_cfg(tmp_path: Path, *overrides: str):
    cfg = compose(tmp_path, list(overrides), config_name="predict")
    GlobalHydra.instance().clear()
    return cfg


def tone(seconds: float, rate: int, freq: float = 700.0) -> np.ndarray:
    """A continuous signal sampled at `rate`: the same sound at any rate, up to resampling error."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t) * np.sin(np.pi * t / seconds)).astype(np.float32)


def write_bad_files(folder: Path) -> dict[str, str]:
    """Files predict must reject one by one, with what their error says."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("not audio\n")
    (folder / "zero_bytes.wav").write_bytes(b"")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(64))
    soundfile.write(folder / "empty.wav", np.zeros(0, dtype=np.float32), RATE)
    nan = tone(0.2, RATE)
    nan[100] = np.nan
    soundfile.write(folder / "nan.wav", nan, RATE, subtype="FLOAT")
    return {"notes.txt": "Cannot read", "zero_bytes.wav": "Cannot read", "corrupt.wav": "Cannot read",
            "empty.wav": "no samples", "nan.wav": "NaN"}


# ---- decoding -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("subtype, tolerance", [("PCM_16", 1e-4), ("PCM_32", 1e-7), ("FLOAT", 0.0), ("PCM_U8", 1e-2)])
def test_integer_and_float_wav_decode_to_the_same_scale(tmp_path: Path, subtype: str, tolerance: float) -> None:
    signal = tone(0.3, RATE)
    soundfile.write(tmp_path / "clip.wav", signal, RATE, subtype=subtype)
    waveform = load_audio(tmp_path / "clip.wav")
    assert waveform.dtype == torch.float32 and waveform.shape == (len(signal),)
    np.testing.assert_allclose(waveform.numpy(), signal, atol=tolerance)


@pytest.mark.parametrize("rate", [16000, 44100, 22050, 4000])
def test_other_sample_rates_are_resampled_to_8k(tmp_path: Path, rate: int) -> None:
    soundfile.write(tmp_path / "clip.wav", tone(0.5, rate), rate, subtype="PCM_16")
    waveform = load_audio(tmp_path / "clip.wav")
    assert abs(len(waveform) - RATE // 2) <= 1
    reference = tone(0.5, RATE)
    inner = slice(200, len(reference) - 200)  # away from the resampler's edge effects
    np.testing.assert_allclose(waveform[inner].numpy(), reference[inner], atol=0.02)


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    left, right = tone(0.3, RATE, 500.0), tone(0.3, RATE, 900.0)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "stereo.wav").numpy(), (left + right) / 2, atol=1e-6)


def test_bad_files_raise_one_data_error_naming_the_file(tmp_path: Path) -> None:
    expected = write_bad_files(tmp_path)
    expected["missing.wav"] = "does not exist"
    for name, phrase in expected.items():
        with pytest.raises(DataError, match=phrase) as error:
            load_audio(tmp_path / name)
        assert str(tmp_path / name) in str(error.value)


# ---- predictions ----------------------------------------------------------------------------------------------

def test_predictions_equal_the_evaluation_reports(cnn_run: dict, synthetic_data: Path, tmp_path: Path) -> None:
    """Raw files through predict give the probabilities the run's own DEV report holds (cached features there)."""
    report = read_predictions(Path(cnn_run["best_checkpoint"]).parent.parent / "reports" / "dev" / "predictions.csv")
    model = load_model(predict_cfg(tmp_path, f"ckpt_path={cnn_run['best_checkpoint']}", "audio=x"))
    results = predict_files(model, [synthetic_data / f"{i}.wav" for i in report.identifiers], batch_size=7,
                            files_in_memory=9)
    np.testing.assert_allclose(np.stack([r.probabilities for r in results]), report.probabilities, atol=1e-5)
    assert [r.digit for r in results] == report.predicted.tolist()


def test_short_clip_is_predicted_the_same_alone_and_in_a_batch(cnn_run: dict, tmp_path: Path) -> None:
    soundfile.write(tmp_path / "ten.wav", 0.3 * np.random.default_rng(0).standard_normal(10), RATE)  # < 1 window
    soundfile.write(tmp_path / "long.wav", tone(1.0, RATE), RATE)
    model = load_model(predict_cfg(tmp_path, f"ckpt_path={cnn_run['best_checkpoint']}", "audio=x"))
    alone = predict_files(model, [tmp_path / "ten.wav"])[0]
    together = predict_files(model, [tmp_path / "long.wav", tmp_path / "ten.wav"])[1]
    assert alone.error is None and np.isfinite(alone.probabilities).all()
    assert alone.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(together.probabilities, alone.probabilities, atol=1e-5)


def test_mixed_folder_predicts_good_files_and_reports_each_bad_one(cnn_run: dict, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "mixed"
    expected_errors = write_bad_files(folder)
    good = {"8k_int16.wav": (RATE, 1, "PCM_16"), "16k_int32.wav": (16000, 1, "PCM_32"),
            "44k_stereo_float.wav": (44100, 2, "FLOAT"), "ten_samples.wav": (RATE, 1, "PCM_16")}
    for name, (rate, channels, subtype) in good.items():
        signal = tone(0.6, rate) if name != "ten_samples.wav" else tone(0.6, rate)[:10]
        soundfile.write(folder / name, np.stack([signal] * channels, axis=1), rate, subtype=subtype)
    out = tmp_path / "out" / "predictions.csv"
    results = predict(predict_cfg(tmp_path, f"ckpt_path={cnn_run['best_checkpoint']}", f"audio={folder}",
                                      f"csv={out}", "batch_size=2"))
    by_name = {Path(r.path).name: r for r in results}
    assert set(by_name) == set(good) | set(expected_errors)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["path", "digit", "probability"]
    for name in good:
        assert by_name[name].error is None and by_name[name].digit in range(10)
        line = next(line for line in printed if line.startswith(str(folder / name)))
        assert line.split()[1:] == [str(by_name[name].digit), f"{by_name[name].probability:.4f}"]
    for name, phrase in expected_errors.items():
        assert phrase in by_name[name].error and str(folder / name) in by_name[name].error
        assert any(line.startswith(str(folder / name)) and "error:" in line for line in printed)
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "prediction", "probability", *(f"prob_{k}" for k in range(10)), "error",
                            "warning"]
    for row in rows:
        result = by_name[Path(row["path"]).name]
        if result.error is None:
            assert int(row["prediction"]) == result.digit and row["error"] == ""
            assert sum(float(row[f"prob_{k}"]) for k in range(10)) == pytest.approx(1.0, abs=1e-4)
        else:
            assert row["prediction"] == "" and row["error"] == result.error


def test_every_file_failing_is_an_error(cnn_run: dict, tmp_path: Path) -> None:
    write_bad_files(tmp_path / "bad")
    cfg = predict_cfg(tmp_path, f"ckpt_path={cnn_run['best_checkpoint']}", f"audio={tmp_path / 'bad'}")
    with pytest.raises(DataError, match="none of the 5 file"):
        predict(cfg)


def test_audio_argument_forms(tmp_path: Path) -> None:
    for name in ("b.wav", "a.wav", "c.flac", ".hidden.wav"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.wav").write_bytes(b"")
    assert [p.name for p in find_audio(str(tmp_path))] == ["a.wav", "b.wav", "c.flac"]  # not hidden, not sub/
    assert [p.name for p in find_audio(f"{tmp_path}/*.wav")] == ["a.wav", "b.wav"]
    assert [p.name for p in find_audio(f"{tmp_path}/**/*.wav")] == ["a.wav", "b.wav", "d.wav"]
    assert [p.name for p in find_audio([str(tmp_path / "c.flac"), str(tmp_path / "a.wav")])] == ["c.flac", "a.wav"]
    assert find_audio(str(tmp_path / "typo.wav")) == [tmp_path / "typo.wav"]  # reported later, as a failed file
    with pytest.raises(ConfigError, match="no file there"):
        find_audio(f"{tmp_path}/*.mp3")


def test_a_symlink_loop_predicts_each_file_once(cnn_run: dict, tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    soundfile.write(clips / "a.wav", tone(0.5, RATE), RATE)
    (clips / "again").symlink_to(clips, target_is_directory=True)  # ** would follow it round and round
    (clips / "same.wav").symlink_to(clips / "a.wav")
    found = find_audio(f"{clips}/**/*.wav")
    assert found == [clips / "a.wav"]  # one file, however many paths reach it
    results = predict(predict_cfg(tmp_path, f"ckpt_path={cnn_run['best_checkpoint']}", f"audio='{clips}/**/*.wav'"))
    assert [r.path for r in results] == [str(clips / "a.wav")]


def test_broken_and_looping_links_get_their_own_error_line(cnn_run: dict, tmp_path: Path, capsys) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    soundfile.write(clips / "good.wav", tone(0.5, RATE), RATE)
    (clips / "broken.wav").symlink_to(tmp_path / "gone.wav")
    (clips / "loop.wav").symlink_to(clips / "loop.wav")
    results = predict(predict_cfg(tmp_path, f"ckpt_path={cnn_run['best_checkpoint']}", f"audio={clips}"))
    errors = {Path(r.path).name: r.error for r in results}
    assert errors["good.wav"] is None
    assert "is a broken symbolic link (to " in errors["broken.wav"] and "gone.wav" in errors["broken.wav"]
    assert "is a symbolic link loop" in errors["loop.wav"]
    printed = capsys.readouterr().out
    assert "broken.wav  error:" in printed and "loop.wav    error:" in printed


def test_an_unreadable_file_says_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.wav"
    soundfile.write(path, tone(0.5, RATE), RATE)
    if os.geteuid() != 0:  # a real unreadable file, where permissions bind (root reads anything)
        path.chmod(0)
    else:
        real_open = Path.open

        def refuse(self, *args, **kwargs):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(DataError, match=r"locked.wav cannot be read: permission denied\. Check its permissions"):
        load_audio(path)


def test_a_long_recording_gets_a_warning(cnn_run: dict, tmp_path: Path, capsys) -> None:
    soundfile.write(tmp_path / "long.wav", tone(5.0, RATE), RATE)
    soundfile.write(tmp_path / "short.wav", tone(0.8, RATE), RATE)
    results = predict(predict_cfg(tmp_path, f"ckpt_path={cnn_run['best_checkpoint']}", f"audio={tmp_path}",
                                  f"csv={tmp_path / 'out.csv'}"))
    by_name = {Path(r.path).name: r for r in results}
    assert by_name["long.wav"].digit is not None and "5.0 s long" in by_name["long.wav"].warning
    assert by_name["short.wav"].warning is None
    assert "warning: 5.0 s long" in capsys.readouterr().out
    rows = {Path(row["path"]).name: row for row in csv.DictReader((tmp_path / "out.csv").open())}
    assert "one digit for the whole recording" in rows["long.wav"]["warning"] and rows["short.wav"]["warning"] == ""


def test_missing_checkpoint_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such checkpoint"):
        load_model(predict_cfg(tmp_path, f"ckpt_path={tmp_path / 'nope.ckpt'}", "audio=x"))


@pytest.mark.slow
def test_predict_command_line(cnn_run: dict, tmp_path: Path) -> None:
    soundfile.write(tmp_path / "one.wav", tone(0.5, 16000), 16000)
    (tmp_path / "two.wav").write_text("not audio")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "predict.py"), f"ckpt_path={cnn_run['best_checkpoint']}",
               f"audio={tmp_path}/*.wav", f"csv={tmp_path / 'out.csv'}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith(str(tmp_path / "one.wav")) and line.split()[1].isdigit() for line in lines)
    assert any(line.startswith(str(tmp_path / "two.wav")) and "error: Cannot read" in line for line in lines)
    assert (tmp_path / "out.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.wav", "out.csv", "two.wav"]  # nothing else written


def test_simclr_predictions_use_the_refit_probe_as_eval_does(synthetic_data: Path, tmp_path: Path) -> None:
    metrics = train_tiny(tmp_path / "run", synthetic_data, "model=simclr")
    report = read_predictions(tmp_path / "run" / "reports" / "dev" / "predictions.csv")
    files = [synthetic_data / f"{i}.wav" for i in report.identifiers]
    ckpt = f"ckpt_path={metrics['best_checkpoint']}"
    refit = predict_files(load_model(predict_cfg(tmp_path, ckpt, "audio=x", f"data_dir={synthetic_data}")), files)
    np.testing.assert_allclose(np.stack([r.probabilities for r in refit]), report.probabilities, atol=1e-4)
    online = load_model(predict_cfg(tmp_path, ckpt, "audio=x", "refit_probe=false"))
    saved = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(online.head.weight, saved["head.weight"])  # the checkpoint's own head, untouched
    unrefit = np.stack([r.probabilities for r in predict_files(online, files)])
    assert not np.allclose(unrefit, report.probabilities, atol=1e-3)  # so the refit above is what matched
