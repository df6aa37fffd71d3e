"""Load one audio file as a mono float32 waveform at the project's sample rate."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

from sdr_lightning.errors import DataError

SAMPLE_RATE = 8000


def missing_reason(file: Path) -> str:
    """Why `file` is not a readable file, in a few words: a symbolic link loop, a broken link, a folder, or absent."""
    try:
        os.stat(file)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if file.is_symlink():
            return f"is a broken symbolic link (to {os.readlink(file)}, which does not exist)"
        return "does not exist"
    return "is not a file" if not file.is_dir() else "is a folder, not a file"


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Decode `path` (any format libsndfile reads: wav as 8/16/24/32-bit integer or float, flac, ogg, ...),
    average its channels to mono and resample it to `sample_rate`: a 1-D float32 tensor, integer formats scaled
    to [-1, 1). Raises DataError naming the file if it is missing, not audio, corrupt, empty or non-finite."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"Audio file {path} {missing_reason(file)}; check the path.")
    try:
        # Opened here, so that a file we may not read is named as such (libsndfile says only "System error").
        with file.open("rb") as handle:
            samples, source_rate = soundfile.read(handle, dtype="float32", always_2d=True)
    except PermissionError as err:
        raise DataError(f"Audio file {path} cannot be read: permission denied. Check its permissions "
                        f"(ls -l {path}).") from err
    except (RuntimeError, soundfile.LibsndfileError, OSError, ValueError) as err:
        reason = str(err).rstrip(".")
        raise DataError(f"Cannot read audio file {path}: {reason}. Replace it with a readable wav/flac file.") from err
    if samples.shape[0] == 0:
        raise DataError(f"Audio file {path} holds no samples; remove it or replace it with a real recording.")
    if not np.isfinite(samples).all():  # a float wav can hold NaN/Inf; they would turn every feature into NaN
        raise DataError(f"Audio file {path} holds NaN or infinite samples; replace it with a clean recording.")
    waveform = torch.from_numpy(samples).mean(dim=1)  # downmix first: resampling one channel is cheaper
    if source_rate != sample_rate:
        waveform = AF.resample(waveform, source_rate, sample_rate)
    return waveform.contiguous()


class StreamResampler:
    """Resample a stream block by block, as one long resampling of the whole stream would (up to float error): each
    block is resampled with `context` input samples on either side, so the output lags the input by `context`."""

    def __init__(self, source_rate: int, target_rate: int, context: int = 256) -> None:
        import math

        self.source_rate, self.target_rate = source_rate, target_rate
        divisor = math.gcd(source_rate, target_rate)
        self.unit_in, self.unit_out = source_rate // divisor, target_rate // divisor
        self.pad = math.ceil(context / self.unit_in)  # context, in whole units
        self.buffer = np.zeros(self.pad * self.unit_in, dtype=np.float32)  # silence before the stream

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if self.source_rate == self.target_rate:
            return np.asarray(block, dtype=np.float32).ravel()
        self.buffer = np.concatenate([self.buffer, np.asarray(block, dtype=np.float32).ravel()])
        units = len(self.buffer) // self.unit_in - 2 * self.pad  # whole units with context on both sides
        if units <= 0:
            return np.zeros(0, dtype=np.float32)
        window = torch.from_numpy(self.buffer[: (units + 2 * self.pad) * self.unit_in])
        out = AF.resample(window, self.source_rate, self.target_rate).numpy()
        self.buffer = self.buffer[units * self.unit_in:]
        return out[self.pad * self.unit_out:(self.pad + units) * self.unit_out]
