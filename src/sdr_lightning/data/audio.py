"""Load one audio file as a mono float32 waveform at the project's sample rate."""

from __future__ import annotations

from pathlib import Path

import soundfile
import torch
import torchaudio.functional as AF

from sdr_lightning.errors import DataError

SAMPLE_RATE = 8000


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Decode `path` (any format libsndfile reads), downmix to mono and resample: a 1-D float32 tensor."""
    try:
        samples, source_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, OSError) as err:
        raise DataError(f"Cannot read audio file {path}: {err}. Replace it with a readable wav/flac file.") from err
    if samples.shape[0] == 0:
        raise DataError(f"Audio file {path} holds no samples; remove it or replace it with a real recording.")
    waveform = torch.from_numpy(samples).mean(dim=1)
    if source_rate != sample_rate:
        waveform = AF.resample(waveform, source_rate, sample_rate)
    return waveform.contiguous()
