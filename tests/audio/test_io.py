"""audio/io.py: the stream resampler gives what resampling the whole recording gives."""

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from sdr_lightning.audio.io import StreamResampler


@pytest.mark.parametrize(("source", "target", "block"), [(44100, 8000, 882), (48000, 8000, 960), (16000, 8000, 37)])
def test_stream_resampler_matches_resampling_the_whole(source: int, target: int, block: int) -> None:
    x = np.random.default_rng(0).standard_normal(source).astype(np.float32)
    resample = StreamResampler(source, target)
    out = np.concatenate([resample(x[i:i + block]) for i in range(0, len(x), block)])
    whole = AF.resample(torch.from_numpy(x), source, target).numpy()
    assert len(out) > 0.95 * len(whole)
    np.testing.assert_allclose(out, whole[: len(out)], atol=1e-5)
