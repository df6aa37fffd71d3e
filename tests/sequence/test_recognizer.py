"""Digit strings: the VADs find real digits and ignore room tone, the stream gives the offline digits whatever
its chunk size, the segment search cuts run-together pieces, edit-distance scoring, and predict.py mode=sequence."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hydra.core.global_hydra import GlobalHydra

from sdr_lightning.audio.io import load_audio
from sdr_lightning.errors import ConfigError
from sdr_lightning.sequence.recognizer import (
    DigitStringRecognizer,
    SplitSettings,
    build_recognizer,
    frame_db,
    valley_cuts,
)
from sdr_lightning.sequence.strings import build_string, edit_operations, trim_edges
from sdr_lightning.sequence.vad import find_segments, make_scorer
from sdr_lightning.tasks.predict import load_model, predict
from tests.helpers import compose

RATE = 8000
TEST_CLIPS = ["4_lucas_10", "1_yweweler_3", "5_lucas_20", "0_yweweler_7"]


def predict_cfg(tmp_path: Path, *overrides: str):
    cfg = compose(tmp_path, list(overrides), config_name="predict")
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def real_string(shared_data: Path):
    clips = [load_audio(shared_data / f"{name}.wav").numpy() for name in TEST_CLIPS]
    return build_string(clips, [int(n[0]) for n in TEST_CLIPS], [0.3, 0.6, 0.25], RATE,
                        torch.Generator().manual_seed(0))


@pytest.fixture
def tiny_model(cnn_run: dict, tmp_path: Path):
    return load_model(predict_cfg(tmp_path, f"ckpt_path={cnn_run['best_checkpoint']}", "audio=x"))


def overlaps(segment, span: tuple[float, float]) -> bool:
    return segment.start / RATE < span[1] and segment.end / RATE > span[0]


@pytest.mark.parametrize("segmenter", ["silero", "energy"])
def test_each_real_digit_is_one_segment(real_string, segmenter: str) -> None:
    segments = find_segments(real_string.waveform, RATE, segmenter)
    assert len(segments) == len(TEST_CLIPS)
    for segment, span in zip(segments, real_string.spans):
        assert overlaps(segment, span)
        assert segment.end - segment.start < 1.5 * RATE


@pytest.mark.parametrize("segmenter", ["silero", "energy"])
def test_room_tone_and_silence_have_no_segments(segmenter: str) -> None:
    tone = build_string([np.zeros(1, np.float32)], [0], [], RATE, torch.Generator().manual_seed(1)).waveform
    assert find_segments(np.zeros(3 * RATE, np.float32), RATE, segmenter) == []
    quiet = tone * 0 + 0.001 * np.random.default_rng(0).standard_normal(3 * RATE + len(tone))[: len(tone)]
    assert find_segments(quiet.astype(np.float32), RATE, segmenter) == []


@pytest.mark.parametrize("chunk", [160, 37, 4000])
def test_stream_in_chunks_gives_the_offline_digits(real_string, tiny_model, chunk: int) -> None:
    recognizer = DigitStringRecognizer(tiny_model, "silero", split=SplitSettings(min_confidence=0.0))
    offline = recognizer.recognize(real_string.waveform)
    assert len(offline) >= len(TEST_CLIPS)  # with no gate, every segment gives at least one digit
    stream, streamed, emitted_at = recognizer.stream(), [], []
    for start in range(0, len(real_string.waveform), chunk):
        for digit in stream.feed(real_string.waveform[start:start + chunk]):
            streamed.append(digit)
            emitted_at.append((start + chunk) / RATE)
    streamed += stream.finish()
    assert [(d.digit, d.start_s, d.end_s) for d in streamed] == [(d.digit, d.start_s, d.end_s) for d in offline]
    assert [d.confidence for d in streamed] == pytest.approx([d.confidence for d in offline], abs=1e-5)
    # each digit comes out soon after its segment ends, not at the end of the stream
    for digit, when in zip(streamed, emitted_at):
        assert when - digit.end_s < 0.4 + chunk / RATE


def test_stream_keeps_a_bounded_buffer(tiny_model) -> None:
    stream = DigitStringRecognizer(tiny_model, "energy").stream()
    silence = np.zeros(160, np.float32)
    for _ in range(500):  # 10 s of silence in 20 ms chunks
        stream.feed(silence)
    assert len(stream.buffer) < 0.2 * RATE


def test_run_together_digits_get_cut_at_the_valley_between_them(shared_data: Path) -> None:
    first, second = (trim_edges(load_audio(shared_data / f"{n}.wav").numpy(), RATE)
                     for n in ("4_lucas_10", "7_lucas_3"))
    audio = np.concatenate([first, second])
    cuts = valley_cuts(frame_db(audio, RATE), depth_db=6.0, max_cuts=12, margin=15)
    assert any(abs(c * 80 - len(first)) < 0.08 * RATE for c in cuts)


def test_search_splits_two_confident_halves_and_keeps_a_sure_whole() -> None:
    class Halves(torch.nn.Module):
        """Says 3 for the first half second and 8 for the rest, sure of a piece within one half."""

        featurizer = type("F", (), {"sample_rate": RATE})()

        def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            logits = torch.full((len(waveform), 10), -4.0)
            for row, (x, n) in enumerate(zip(waveform, lengths)):
                marker = x[: int(n)].mean()  # the test's audio encodes which half a piece comes from
                logits[row, 3 if marker > 0 else 8] = 4.0 if abs(float(marker)) > 0.05 else 0.0
            return logits

    t = np.arange(int(0.45 * RATE)) / RATE
    word = 0.5 * np.sin(2 * np.pi * 300 * t) * np.hanning(len(t))
    audio = np.concatenate([word + 0.2, 0.002 * np.ones(400), word - 0.2]).astype(np.float32)
    digits = DigitStringRecognizer(Halves(), "energy").digits_in_segment(audio, offset=0)
    assert [d.digit for d in digits] == [3, 8]


def test_edit_operations() -> None:
    assert edit_operations([4, 1, 5], [4, 1, 5]) == (0, 0, 0)
    assert edit_operations([4, 1, 5], [4, 7, 5]) == (1, 0, 0)
    assert edit_operations([4, 1, 5], [4, 5]) == (0, 1, 0)
    assert edit_operations([4, 1, 5], [4, 1, 1, 5]) == (0, 0, 1)
    assert edit_operations([], [2]) == (0, 0, 1)


def test_bad_settings_name_the_key(tiny_model) -> None:
    with pytest.raises(ConfigError, match="segmenter='webrtc'"):
        make_scorer("webrtc", RATE)
    with pytest.raises(ConfigError, match=r"sequence.split has no key\(s\) \['max_gap'\]"):
        build_recognizer(tiny_model, split={"max_gap": 1.0})
    with pytest.raises(ConfigError, match="sequence.thresholds"):
        build_recognizer(tiny_model, "energy", thresholds={"begin": 3.0})


def test_predict_sequence_writes_each_digit(cnn_run: dict, real_string, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    call = tmp_path / "call.wav"
    soundfile.write(call, real_string.waveform, RATE)
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVE")
    out_csv, out_json = tmp_path / "digits.csv", tmp_path / "digits.json"
    results = predict(predict_cfg(tmp_path, f"ckpt_path={cnn_run['best_checkpoint']}",
                                  f"audio=[{call},{tmp_path / 'broken.wav'}]", "mode=sequence",
                                  "sequence.min_confidence=0", f"csv={out_csv}", f"json={out_json}"))
    printed = capsys.readouterr().out
    assert results[0].error is None and len(results[0].digits) >= 4 and results[1].error
    assert re.search(rf"{re.escape(str(call))} +{results[0].text}\n", printed) and "1 of 2 file(s) failed" in printed
    rows = list(csv.DictReader(out_csv.open()))
    assert [int(r["digit"]) for r in rows if r["path"] == str(call)] == [d.digit for d in results[0].digits]
    starts = [float(r["start_s"]) for r in rows if r["path"] == str(call)]
    assert starts == sorted(starts) and 0 < starts[0] < real_string.spans[0][1]
    listed = json.loads(out_json.read_text())
    assert listed[0]["digits"] == results[0].text and listed[1]["error"]
    assert set(listed[0]["segments"][0]) == {"digit", "start_s", "end_s", "confidence"}


def test_predict_refuses_an_unknown_mode(cnn_run: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mode=strings"):
        predict(predict_cfg(tmp_path, f"ckpt_path={cnn_run['best_checkpoint']}", f"audio={tmp_path}",
                            "mode=strings"))


def test_the_search_and_gate_read_the_uncalibrated_probabilities(real_string, tiny_model) -> None:
    """The recognizer's weights and gate were tuned on the raw softmax: a checkpoint's calibration temperature
    (models/calibration.py) changes what predict prints for a clip, not the digits found in a string."""
    assert float(tiny_model.calibration_temperature) != 1.0
    recognizer = DigitStringRecognizer(tiny_model, "energy", split=SplitSettings(min_confidence=0.0))
    calibrated = recognizer.recognize(real_string.waveform)
    tiny_model.calibration_temperature.fill_(1.0)
    raw = recognizer.recognize(real_string.waveform)
    assert [(d.digit, d.start_s, d.end_s, d.confidence) for d in calibrated] == [
        (d.digit, d.start_s, d.end_s, d.confidence) for d in raw]


def test_the_auto_gate_is_the_checkpoints_own(tiny_model) -> None:
    tiny_model.digit_gate.fill_(0.18)
    assert build_recognizer(tiny_model, min_confidence="auto").split.min_confidence == pytest.approx(0.18)
    assert build_recognizer(tiny_model, min_confidence=0.4).split.min_confidence == 0.4
    tiny_model.digit_gate.fill_(0.0)  # a checkpoint from before the gate was fitted: the default 0.3
    assert build_recognizer(tiny_model, min_confidence="auto").split.min_confidence == 0.3
    with pytest.raises(ConfigError, match="sequence.min_confidence='sure'"):
        build_recognizer(tiny_model, min_confidence="sure")
