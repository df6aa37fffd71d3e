"""The "not a digit" detector: fitted on embeddings it tells noise bursts from digits, its file is plain numbers
(a bad one is one clear error), `auto` finds it beside the checkpoint, and the recognizer drops what it rejects."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from sdr_lightning.audio.io import load_audio
from sdr_lightning.errors import DataError
from sdr_lightning.sequence import rejector as rejector_module
from sdr_lightning.sequence.recognizer import DigitStringRecognizer, SplitSettings
from sdr_lightning.sequence.rejector import Rejector, fit, resolve
from sdr_lightning.sequence.strings import build_string
from sdr_lightning.tasks.predict import load_model
from tests.helpers import compose

RATE = 8000


@pytest.fixture
def tiny_model(cnn_run: dict, tmp_path: Path):
    cfg = compose(tmp_path, [f"ckpt_path={cnn_run['best_checkpoint']}", "audio=x"], config_name="predict")
    GlobalHydra.instance().clear()
    return load_model(cfg)


def tones(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        t = np.arange(int(rng.uniform(0.3, 0.5) * RATE)) / RATE
        out.append((0.5 * np.sin(2 * np.pi * rng.uniform(300, 1700) * t) * np.hanning(len(t))).astype(np.float32))
    return out


def bursts(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(rng.uniform(0.2, 0.8) * RATE))).astype(np.float32) for _ in range(count)]


def test_fitted_detector_rejects_unseen_bursts_and_keeps_unseen_digits(tiny_model) -> None:
    detector = fit(tiny_model, tones(60, 0), bursts(60, 1))
    from sdr_lightning.sequence.rejector import embed

    assert (detector.not_digit_probability(embed(tiny_model, bursts(20, 2))) > 0.5).mean() >= 0.9
    assert (detector.not_digit_probability(embed(tiny_model, tones(20, 3))) < 0.5).mean() >= 0.9


def test_file_round_trip_and_bad_files(tmp_path: Path) -> None:
    detector = Rejector(np.zeros(3), np.ones(3), np.array([1.0, -2.0, 0.5]), 0.25, 0.6)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(detector.to_json()))
    again = Rejector.load(path)
    x = np.random.default_rng(0).standard_normal((4, 3))
    np.testing.assert_allclose(again.not_digit_probability(x), detector.not_digit_probability(x))
    assert again.threshold == 0.6
    (tmp_path / "bad.json").write_text('{"mean": [0, 1], "scale": [1], "weight": [1, 2], "bias": 0}')
    with pytest.raises(DataError, match=r"bad.json: its mean, scale and weight differ"):
        Rejector.load(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(DataError, match=r"junk.json: not a rejector file .*python -m sdr_lightning.sequence.rejector"):
        Rejector.load(tmp_path / "junk.json")


def test_auto_finds_the_file_beside_the_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "epoch_001.ckpt"
    assert resolve("auto", checkpoint) is None and resolve(None, checkpoint) is None
    Path(f"{checkpoint}.rejector.json").write_text(json.dumps(
        Rejector(np.zeros(2), np.ones(2), np.ones(2), 0.0).to_json()))
    assert isinstance(resolve("auto", checkpoint), Rejector)


def test_recognizer_drops_what_the_detector_rejects(tiny_model, shared_data: Path) -> None:
    clips = [load_audio(shared_data / f"{n}.wav").numpy() for n in ("4_lucas_10", "1_yweweler_3")]
    string = build_string(clips, [4, 1], [0.4], RATE, torch.Generator().manual_seed(0)).waveform
    dim = len(rejector_module.embed(tiny_model, [clips[0]])[0])
    keep_all = Rejector(np.zeros(dim), np.ones(dim), np.zeros(dim), 0.0, threshold=0.9)  # p = 0.5 everywhere
    reject_all = Rejector(np.zeros(dim), np.ones(dim), np.zeros(dim), 0.0, threshold=0.1)
    gate = SplitSettings(min_confidence=0.0)
    plain = DigitStringRecognizer(tiny_model, split=gate).recognize(string)
    assert len(plain) >= 2
    assert DigitStringRecognizer(tiny_model, split=gate, rejector=keep_all).recognize(string) == plain
    assert DigitStringRecognizer(tiny_model, split=gate, rejector=reject_all).recognize(string) == []


@pytest.mark.slow
def test_the_command_writes_a_detector_beside_the_checkpoint(cnn_run: dict, synthetic_data: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rejector_module, "RANDOM_WORDS", ("apple", "window"))
    monkeypatch.setattr(rejector_module, "TRAIN_VOICES", ("en-us+m2",))
    checkpoint = Path(cnn_run["best_checkpoint"])
    out = checkpoint.parent / "probe.rejector.json"
    rejector_module.main([str(checkpoint), "--data", str(synthetic_data), "--out", str(out)])
    detector = Rejector.load(out)
    assert detector.weight.shape == detector.mean.shape and detector.threshold == 0.5
