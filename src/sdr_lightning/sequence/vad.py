"""Voice-activity detection, causal and frame by frame, so that a stream fed in chunks of any size finds the same
segments as the whole file.

A frame scorer gives each frame a speech score, and one state machine turns scores into segments: a segment opens
when a score passes `start`, stays open while scores pass `stop` (hysteresis), survives gaps shorter than
`min_gap_s` (the closures inside "six" or "eight"), and gets a pre- and post-roll. Two scorers:

- `EnergyScorer`: dB above a noise floor (a low percentile of the last two seconds), 10 ms frames. No dependency;
  good in quiet rooms, weak in noise (the floor rises with the noise, and speech barely clears it).
- `SileroScorer`: the silero-vad network's speech probability, 32 ms frames (the `silero-vad` package, which ships
  its weights; only its torch core is used). Holds up in noise and babble.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from sdr_lightning.errors import ConfigError

SILENT_DB = -100.0  # a frame of digital silence


@dataclass(frozen=True)
class Segment:
    """Samples [start, end) of the stream."""

    start: int
    end: int


@dataclass(frozen=True)
class VadSettings:
    # a gap shorter than this does not end a segment (stop closures inside a digit last up to ~0.1 s)
    min_gap_s: float = 0.12
    # kept before the first and after the last speech frame
    preroll_s: float = 0.05
    postroll_s: float = 0.05
    # shorter bursts are clicks, not digits; a longer segment is cut here (it bounds a stream's buffer)
    min_speech_s: float = 0.08
    max_segment_s: float = 8.0


class EnergyScorer:
    """dB of a 10 ms frame (averaged over the last three) above the noise floor; frames quieter than
    `absolute_db` (dB of full scale) score -inf, so a near-silent recording's floor cannot make hiss speech."""

    def __init__(self, sample_rate: int, start: float = 12.0, stop: float = 8.0, absolute_db: float = -60.0,
                 floor_percentile: float = 10.0, floor_window_s: float = 2.0) -> None:
        self.frame = max(1, round(0.01 * sample_rate))
        self.start, self.stop = start, stop
        self.absolute_db, self.floor_percentile = absolute_db, floor_percentile
        self.history: deque[float] = deque(maxlen=max(1, round(floor_window_s / 0.01)))
        self.recent: deque[float] = deque(maxlen=3)

    def __call__(self, frame: np.ndarray) -> float:
        energy = float(np.mean(frame.astype(np.float64) ** 2))
        self.recent.append(max(10 * np.log10(max(energy, 1e-30)), SILENT_DB))
        level = sum(self.recent) / len(self.recent)
        floor = float(np.percentile(self.history, self.floor_percentile)) if self.history else level
        self.history.append(level)
        return level - floor if level > self.absolute_db else float("-inf")


class SileroScorer:
    """silero-vad's speech probability of each 32 ms frame (256 samples at 8 kHz, 512 at 16 kHz)."""

    def __init__(self, sample_rate: int, start: float = 0.5, stop: float = 0.35) -> None:
        if sample_rate not in (8000, 16000):
            raise ConfigError(f"segmenter=silero works at 8 or 16 kHz, not {sample_rate} Hz; use segmenter=energy.")
        self.model = load_silero()  # its own copy: the network keeps the stream's state
        self.sample_rate = sample_rate
        self.frame = 256 if sample_rate == 8000 else 512
        self.start, self.stop = start, stop

    @torch.inference_mode()
    def __call__(self, frame: np.ndarray) -> float:
        return float(self.model(torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32)), self.sample_rate))


def load_silero() -> torch.nn.Module:
    """A fresh copy of silero-vad's TorchScript model (a 2 MB file inside the package)."""
    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    except ImportError as err:
        raise ConfigError("segmenter=silero needs the silero-vad package (pip install -e . installs it), or use "
                          "segmenter=energy.") from err
    try:
        return load_silero_vad()
    finally:
        torch.set_num_threads(threads)  # importing silero_vad sets one thread for the whole process


SCORERS = {"energy": EnergyScorer, "silero": SileroScorer}


def make_scorer(name: str, sample_rate: int, **thresholds: float) -> EnergyScorer | SileroScorer:
    if name not in SCORERS:
        raise ConfigError(f"segmenter={name!r}: use one of {sorted(SCORERS)}.")
    try:
        return SCORERS[name](sample_rate, **thresholds)
    except TypeError as err:  # an unknown threshold name
        raise ConfigError(f"sequence.thresholds={thresholds}: segmenter={name} takes start and stop ({err}).") from err


class Vad:
    """Feed samples with `push`; it returns the segments that ended. `finish` ends the stream."""

    def __init__(self, scorer: EnergyScorer | SileroScorer, sample_rate: int,
                 settings: VadSettings | None = None) -> None:
        self.scorer, self.sample_rate = scorer, sample_rate
        self.settings = settings or VadSettings()
        self.frame = scorer.frame
        self.pending = np.zeros(0, dtype=np.float32)
        self.index = 0  # frames seen
        self.onset: int | None = None  # first speech frame of the open segment
        self.last_speech = -1

    def frames(self, seconds: float) -> int:
        return max(1, round(seconds * self.sample_rate / self.frame))

    def push(self, samples: np.ndarray) -> list[Segment]:
        samples = np.concatenate([self.pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        whole = len(samples) // self.frame
        self.pending = samples[whole * self.frame:]
        ended = []
        for k in range(whole):
            segment = self._step(self.scorer(samples[k * self.frame:(k + 1) * self.frame]))
            if segment is not None:
                ended.append(segment)
        return ended

    def finish(self) -> list[Segment]:
        """The open segment, if any, ends with the stream."""
        if self.onset is None:
            return []
        segment = self._close(self.last_speech)
        return [segment] if segment else []

    def _step(self, score: float) -> Segment | None:
        frame, self.index = self.index, self.index + 1
        if self.onset is None:
            if score > self.scorer.start:
                self.onset = self.last_speech = frame
            return None
        if score > self.scorer.stop:
            self.last_speech = frame
        if frame - self.last_speech >= self.frames(self.settings.min_gap_s):
            return self._close(self.last_speech)
        if frame - self.onset + 1 >= self.frames(self.settings.max_segment_s):
            return self._close(frame, postroll=False)  # nothing after this frame has arrived: no post-roll
        return None

    def _close(self, last: int, postroll: bool = True) -> Segment | None:
        s = self.settings
        onset, self.onset = self.onset, None
        if (last - onset + 1) * self.frame / self.sample_rate < s.min_speech_s:
            return None
        start = max(0, (onset - self.frames(s.preroll_s)) * self.frame)
        end = (last + 1 + (self.frames(s.postroll_s) if postroll else 0)) * self.frame
        return Segment(start, min(end, self.index * self.frame))


def find_segments(waveform: np.ndarray, sample_rate: int, segmenter: str = "silero",
                  settings: VadSettings | None = None) -> list[Segment]:
    """The speech segments of a whole recording (what a stream of it finds), ends clipped to the recording."""
    vad = Vad(make_scorer(segmenter, sample_rate), sample_rate, settings)
    segments = vad.push(waveform) + vad.finish()
    return [Segment(seg.start, min(seg.end, len(waveform))) for seg in segments]
