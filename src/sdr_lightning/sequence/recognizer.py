"""Digit strings from one recording, offline or streamed: the energy VAD (vad.py) finds speech segments, each segment
is cut into digits at its energy valleys by a small segmental search that the isolated-digit classifier scores, and a
confidence gate rejects what is not a digit (noise, a cough, another word).

The search, for a segment with candidate cuts c_0 = 0 < c_1 < ... < c_K = end: choose the cuts that maximise the sum,
over the pieces, of log p_max(piece) (the classifier's top probability) plus a duration prior, weight * log N(piece
length; FSDD's clip length mean and spread). A digit said slowly stays whole (both halves would be unsure), two
digits run together split (each half is sure, and the whole is too long).

`DigitStringRecognizer.recognize(waveform)` is the offline mode; `stream()` gives a `DigitStream` fed chunks of any
size, which emits each digit once its segment has ended. The offline mode is the stream fed the whole recording, so
the two give the same digits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sdr_lightning.data.datamodule import collate_waveforms
from sdr_lightning.errors import ConfigError
from sdr_lightning.sequence.rejector import Rejector, embed, resolve
from sdr_lightning.sequence.vad import Segment, Vad, VadSettings, make_scorer

FRAME_S = 0.01  # the frames the segment search looks for valleys in


@dataclass(frozen=True)
class RecognizedDigit:
    digit: int
    start_s: float
    end_s: float
    confidence: float  # the classifier's probability for `digit`
    probabilities: tuple[float, ...] = field(repr=False, default=())


@dataclass(frozen=True)
class SplitSettings:
    # a piece is one digit only if it lasts this long; longer segments are searched for cuts
    min_digit_s: float = 0.15
    max_digit_s: float = 1.2
    # the duration prior: FSDD's TRAIN digits last 0.40 +- 0.12 s with their edges trimmed 30 dB down
    mean_digit_s: float = 0.40
    std_digit_s: float = 0.15
    duration_weight: float = 1.0
    # added per digit: without it the search prefers fewer pieces (each adds a log-probability below zero)
    insertion_bonus: float = 0.0
    # a cut candidate is an energy valley this deep below the peaks on both sides of it
    valley_db: float = 6.0
    max_cuts: int = 12
    # below this probability a piece is not reported as a digit
    min_confidence: float = 0.3


def frame_db(audio: np.ndarray, sample_rate: int, smooth: int = 5) -> np.ndarray:
    """Per-10 ms energy in dB, smoothed by a centred moving average of `smooth` frames."""
    frame = max(1, round(FRAME_S * sample_rate))
    count = len(audio) // frame
    if count == 0:
        return np.zeros(0)
    energy = (audio[: count * frame].reshape(count, frame).astype(np.float64) ** 2).mean(axis=1)
    db = 10 * np.log10(np.maximum(energy, 1e-10))
    kernel = np.ones(smooth) / smooth
    return np.convolve(np.pad(db, smooth // 2, mode="edge"), kernel, mode="valid")[:count]


def valley_cuts(db: np.ndarray, depth_db: float, max_cuts: int, margin: int) -> list[int]:
    """Frame indices of local minima at least `depth_db` below the highest frame on each side of them, the
    `max_cuts` deepest, each at least `margin` frames from the ends."""
    cuts = []
    for i in range(margin, len(db) - margin):
        window = db[max(0, i - 3): i + 4]
        if db[i] > window.min():
            continue
        depth = min(db[:i].max(), db[i + 1:].max()) - db[i]
        if depth >= depth_db:
            cuts.append((depth, i))
    chosen = sorted(i for _, i in sorted(cuts, reverse=True)[:max_cuts])
    return [i for n, i in enumerate(chosen) if n == 0 or i - chosen[n - 1] > 3]  # one cut per flat valley floor


class DigitStringRecognizer:
    """The isolated-digit `model` (a DigitClassifier in eval mode, raw waveforms in) turned into a digit-string
    recognizer."""

    def __init__(self, model: torch.nn.Module, segmenter: str = "silero", thresholds: dict[str, float] | None = None,
                 vad: VadSettings | None = None, split: SplitSettings | None = None,
                 rejector: Rejector | None = None) -> None:
        self.model = model.eval()
        self.rejector = rejector  # a trained "not a digit" detector (sequence/rejector.py), or confidence alone
        self.sample_rate = int(model.featurizer.sample_rate)
        self.segmenter, self.thresholds = segmenter, dict(thresholds or {})
        make_scorer(segmenter, self.sample_rate, **self.thresholds)  # a bad name or threshold fails here, not later
        self.vad_settings = vad or VadSettings()
        self.split = split or SplitSettings()

    def new_vad(self) -> Vad:
        return Vad(make_scorer(self.segmenter, self.sample_rate, **self.thresholds), self.sample_rate,
                   self.vad_settings)

    def recognize(self, waveform: np.ndarray | torch.Tensor) -> list[RecognizedDigit]:
        """The digits of a whole recording (a 1-D waveform at the model's sample rate), in order."""
        return self.recognize_with_segments(waveform)[0]

    def recognize_with_segments(self, waveform: np.ndarray | torch.Tensor) -> tuple[list[RecognizedDigit],
                                                                                      list[Segment]]:
        """The digits of a whole recording and the speech segments the VAD found in it."""
        stream = self.stream()
        digits = stream.feed(waveform) + stream.finish()
        return digits, stream.segments

    def stream(self) -> DigitStream:
        return DigitStream(self)

    @torch.inference_mode()
    def probabilities(self, pieces: list[np.ndarray]) -> np.ndarray:
        """(len(pieces), classes) softmax of the classifier for each piece of audio."""
        batch = collate_waveforms([(torch.from_numpy(np.ascontiguousarray(p)), 0, i) for i, p in enumerate(pieces)])
        # a DigitClassifier's raw logits: the search's weights and the gate were tuned on its uncalibrated softmax,
        # and calibrated probabilities rank pieces worse here (docs/digit_strings.md)
        score = getattr(self.model, "raw_logits", self.model)
        return score(batch["waveform"], batch["lengths"]).float().softmax(dim=-1).numpy()

    def digits_in_segment(self, audio: np.ndarray, offset: int) -> list[RecognizedDigit]:
        """The digits in one speech segment (`audio`, which starts at sample `offset` of the recording)."""
        s, rate = self.split, self.sample_rate
        frame = max(1, round(FRAME_S * rate))
        min_frames = max(1, round(s.min_digit_s / FRAME_S))
        cuts = valley_cuts(frame_db(audio, rate), s.valley_db, s.max_cuts, margin=min_frames)
        bounds = [0, *(c * frame for c in cuts), len(audio)]
        pieces = [(i, j) for i in range(len(bounds)) for j in range(i + 1, len(bounds))
                  if (i == 0 and j == len(bounds) - 1)
                  or s.min_digit_s <= (bounds[j] - bounds[i]) / rate <= s.max_digit_s]
        probabilities = self.probabilities([audio[bounds[i]:bounds[j]] for i, j in pieces])
        score = {}
        for (i, j), row in zip(pieces, probabilities):
            seconds = (bounds[j] - bounds[i]) / rate
            prior = -0.5 * ((seconds - s.mean_digit_s) / s.std_digit_s) ** 2
            score[i, j] = (float(np.log(max(row.max(), 1e-12))) + s.duration_weight * prior + s.insertion_bonus, row)
        # best[j]: the best score of pieces covering bounds[0]..bounds[j]; back[j]: where its last piece starts
        best, back = {0: 0.0}, {}
        for j in range(1, len(bounds)):
            options = [(best[i] + score[i, j][0], i) for i in range(j) if i in best and (i, j) in score]
            if options:
                best[j], back[j] = max(options)
        path, j = [], len(bounds) - 1
        while j > 0:
            path.append((back[j], j))
            j = back[j]
        path = [(i, j) for i, j in reversed(path) if score[i, j][1].max() >= s.min_confidence]
        if self.rejector is not None and path:
            pieces = [audio[bounds[i]:bounds[j]] for i, j in path]
            other = self.rejector.not_digit_probability(embed(self.model, pieces))
            path = [piece for piece, p in zip(path, other) if p <= self.rejector.threshold]
        digits = []
        for i, j in path:
            row = score[i, j][1]
            digits.append(RecognizedDigit(int(row.argmax()), (offset + bounds[i]) / rate, (offset + bounds[j]) / rate,
                                          float(row.max()), tuple(float(p) for p in row)))
        return digits


class DigitStream:
    """Feed audio chunks (1-D, the model's sample rate) with `feed`; each call returns the digits whose segments
    ended in it. `finish` ends the stream and returns the rest."""

    def __init__(self, recognizer: DigitStringRecognizer) -> None:
        self.recognizer = recognizer
        self.vad = recognizer.new_vad()
        self.buffer = np.zeros(0, dtype=np.float32)
        self.buffer_start = 0  # the stream sample the buffer starts at
        self.samples = 0  # samples fed so far
        self.segments: list[Segment] = []  # every speech segment found so far, ends clipped to what was fed
        # audio kept before the current point: a segment may start a pre-roll before the frame that opens it
        self.keep = (self.vad.frames(self.vad.settings.preroll_s) + 2) * self.vad.frame

    def feed(self, chunk: np.ndarray | torch.Tensor) -> list[RecognizedDigit]:
        chunk = (chunk.numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)).astype(np.float32).ravel()
        self.buffer = np.concatenate([self.buffer, chunk])
        self.samples += len(chunk)
        digits = self._recognize(self.vad.push(chunk))
        # keep what an open segment (or one that may start now) needs, and no more
        onset = self.vad.onset
        first_needed = (self.samples - self.keep if onset is None
                        else (onset - self.vad.frames(self.vad.settings.preroll_s)) * self.vad.frame)
        drop = max(0, min(first_needed, self.samples) - self.buffer_start)
        if drop:
            self.buffer = self.buffer[drop:]
            self.buffer_start += drop
        return digits

    def finish(self) -> list[RecognizedDigit]:
        return self._recognize(self.vad.finish())

    def _recognize(self, segments: list[Segment]) -> list[RecognizedDigit]:
        digits = []
        for segment in segments:
            start, end = max(segment.start, self.buffer_start), min(segment.end, self.samples)
            self.segments.append(Segment(start, end))
            audio = self.buffer[start - self.buffer_start:end - self.buffer_start]
            digits.extend(self.recognizer.digits_in_segment(audio, start))
        return digits


def checkpoint_gate(model: torch.nn.Module) -> float:
    """`sequence.min_confidence=auto`: the gate a trained DigitClassifier saved (models/calibration.py:
    confidence_gate, fitted on its validation clips), or SplitSettings' 0.3 for a model without one."""
    gate = float(getattr(model, "digit_gate", 0.0))
    return gate if gate > 0 else SplitSettings.min_confidence


def build_recognizer(model: torch.nn.Module, segmenter: str = "silero", min_confidence: float | str | None = None,
                     thresholds: dict[str, float] | None = None, vad: dict | None = None,
                     split: dict | None = None, rejector: str | None = None,
                     checkpoint: str | Path | None = None) -> DigitStringRecognizer:
    """A recognizer from plain values (a config's `sequence:` block): unknown keys are a ConfigError naming them.
    `rejector`: null, `auto` (`<checkpoint>.rejector.json` when there is one) or a rejector file's path.
    `min_confidence`: a probability, or `auto` for the model's own gate (`checkpoint_gate`)."""
    if isinstance(min_confidence, str):
        if min_confidence != "auto":
            raise ConfigError(f"sequence.min_confidence={min_confidence!r}; use a probability from 0 to 1, or auto "
                              "(the gate the checkpoint fitted on its validation clips).")
        min_confidence = checkpoint_gate(model)

    def settings(kind: type, values: dict | None, key: str, **extra: object) -> object:
        values = {**dict(values or {}), **{k: v for k, v in extra.items() if v is not None}}
        known = set(kind.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"sequence.{key} has no key(s) {unknown}; use {sorted(known)}.")
        return kind(**values)

    return DigitStringRecognizer(model, segmenter, thresholds,
                                 settings(VadSettings, vad, "vad"),
                                 settings(SplitSettings, split, "split", min_confidence=min_confidence),
                                 resolve(rejector, checkpoint))
