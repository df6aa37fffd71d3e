"""Digits as they are spoken: `sdr-listen ckpt_path=...` streams the default microphone (sounddevice) through a
`DigitStream` and prints each digit once its segment ends, with how long after the digit's end it came out.
`audio=<file>` streams a recording instead, chunk by chunk, as the microphone's blocks would arrive."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
from omegaconf import DictConfig, OmegaConf

from sdr_lightning.audio.io import StreamResampler, load_audio
from sdr_lightning.errors import ConfigError, DataError
from sdr_lightning.sequence.recognizer import RecognizedDigit, build_recognizer
from sdr_lightning.tasks.predict import load_model

log = logging.getLogger(__name__)


def microphone_blocks(device: int | str | None, chunk_s: float, sample_rate: int) -> Iterator[np.ndarray]:
    """Blocks of the input device's audio at `sample_rate` (resampled from the device's own rate when it cannot
    record at that rate). DataError when there is no input device or sounddevice/PortAudio is missing."""
    try:
        import sounddevice
    except ImportError as err:
        raise ConfigError("sdr-listen needs sounddevice: pip install -e '.[listen]'.") from err
    except OSError as err:  # sounddevice is there, the PortAudio library is not
        raise ConfigError(f"sdr-listen needs the PortAudio library ({err}): apt-get install libportaudio2 (Debian, "
                          f"Ubuntu) or brew install portaudio (macOS).") from err
    try:
        info = sounddevice.query_devices(device, kind="input")
    except (ValueError, sounddevice.PortAudioError) as err:
        raise DataError(f"no audio input device{'' if device is None else f' {device!r}'} ({err}). Connect a "
                        f"microphone, name one with device=<index or name> (python -m sounddevice lists them), or "
                        f"stream a recording with audio=<file>.") from err
    try:
        sounddevice.check_input_settings(device, channels=1, samplerate=sample_rate, dtype="float32")
        rate = sample_rate
    except (ValueError, sounddevice.PortAudioError):
        rate = int(info["default_samplerate"])  # the device's own rate, resampled here
    resample = StreamResampler(rate, sample_rate)
    block = max(1, round(chunk_s * rate))
    log.info("listening on %s at %d Hz (Ctrl+C stops)", info["name"], rate)
    with sounddevice.InputStream(device=device, channels=1, samplerate=rate, blocksize=block, dtype="float32") as s:
        while True:
            samples, overflowed = s.read(block)
            if overflowed:
                log.warning("audio input overflowed: some audio was lost (the machine is too busy)")
            yield resample(samples[:, 0])


def file_blocks(path: str, chunk_s: float, sample_rate: int) -> Iterator[np.ndarray]:
    waveform = load_audio(path, sample_rate).numpy()
    step = max(1, round(chunk_s * sample_rate))
    for start in range(0, len(waveform), step):
        yield waveform[start:start + step]


def format_digit(digit: RecognizedDigit, heard_at_s: float) -> str:
    return (f"{digit.digit}  ({digit.start_s:6.2f}-{digit.end_s:6.2f} s, p={digit.confidence:.2f}, "
            f"out {heard_at_s - digit.end_s:.2f} s after its end)")


def listen(cfg: DictConfig) -> list[RecognizedDigit]:
    """Print digits as they are recognized until the audio ends, `cfg.seconds` pass or Ctrl+C; returns them."""
    if cfg.chunk_s <= 0:
        raise ConfigError(f"chunk_s={cfg.chunk_s}: give the block length in seconds, e.g. chunk_s=0.02.")
    model = load_model(cfg)
    settings = OmegaConf.to_container(cfg.sequence, resolve=True)
    recognizer = build_recognizer(model, **settings, checkpoint=cfg.ckpt_path)
    rate = recognizer.sample_rate
    blocks = (file_blocks(cfg.audio, cfg.chunk_s, rate) if cfg.audio
              else microphone_blocks(cfg.device, cfg.chunk_s, rate))
    stream, heard, received, cpu = recognizer.stream(), [], 0, 0.0
    try:
        for block in blocks:
            received += len(block)
            started = time.process_time()
            digits = stream.feed(block)
            cpu += time.process_time() - started
            for digit in digits:
                print(format_digit(digit, received / rate), flush=True)
            heard += digits
            if cfg.seconds is not None and received >= cfg.seconds * rate:
                break
    except KeyboardInterrupt:
        pass
    finally:
        for digit in stream.finish():
            print(format_digit(digit, received / rate), flush=True)
            heard.append(digit)
    seconds = received / rate
    print(f"heard: {' '.join(str(d.digit) for d in heard) or '(no digits)'} in {seconds:.1f} s of audio; "
          f"{cpu / max(seconds, 1e-9):.3f} s of CPU per second of audio")
    return heard
