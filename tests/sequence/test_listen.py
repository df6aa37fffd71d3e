"""sdr-listen: a recording streamed block by block gives the offline digits; no microphone is one clear error."""

import sys
import types
from pathlib import Path

import pytest
import soundfile
import torch
from hydra.core.global_hydra import GlobalHydra

from sdr_lightning.audio.io import load_audio
from sdr_lightning.errors import ConfigError, DataError
from sdr_lightning.sequence.recognizer import build_recognizer
from sdr_lightning.sequence.strings import build_string
from sdr_lightning.tasks.listen import listen
from sdr_lightning.tasks.predict import load_model
from tests.helpers import compose

RATE = 8000


def listen_cfg(tmp_path: Path, *overrides: str):
    cfg = compose(tmp_path, list(overrides), config_name="listen")
    GlobalHydra.instance().clear()
    return cfg


def test_listening_to_a_file_gives_the_offline_digits(cnn_run: dict, shared_data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    names = ["7_lucas_3", "2_yweweler_30", "9_lucas_12"]
    string = build_string([load_audio(shared_data / f"{n}.wav").numpy() for n in names], [7, 2, 9], [0.4, 0.3],
                          RATE, torch.Generator().manual_seed(0))
    call = tmp_path / "call.wav"
    soundfile.write(call, string.waveform, RATE, subtype="FLOAT")
    cfg = listen_cfg(tmp_path, f"ckpt_path={cnn_run['best_checkpoint']}", f"audio={call}",
                     "sequence.min_confidence=0")
    heard = listen(cfg)
    offline = build_recognizer(load_model(cfg), min_confidence=0.0).recognize(load_audio(call).numpy())
    assert [(d.digit, d.start_s, d.end_s) for d in heard] == [(d.digit, d.start_s, d.end_s) for d in offline]
    printed = capsys.readouterr().out
    assert "heard: " + " ".join(str(d.digit) for d in offline) in printed and "after its end" in printed


def test_no_input_device_is_one_clear_error(cnn_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class PortAudioError(Exception):
        pass

    def query_devices(device=None, kind=None):
        raise PortAudioError("Error querying device -1")

    fake = types.SimpleNamespace(PortAudioError=PortAudioError, query_devices=query_devices)
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    with pytest.raises(DataError, match="no audio input device .*Connect a microphone.*audio=<file>"):
        listen(listen_cfg(tmp_path, f"ckpt_path={cnn_run['best_checkpoint']}"))


def test_missing_sounddevice_says_how_to_install(cnn_run: dict, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install -e '.\[listen\]'"):
        listen(listen_cfg(tmp_path, f"ckpt_path={cnn_run['best_checkpoint']}"))
