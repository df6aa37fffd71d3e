"""Spoken digit strings built from isolated clips, and their scoring: what benchmarks/digit_strings.py measures.

A string is a seeded draw of 3-10 clips of the evaluated speakers, with pauses between them, lead-in and tail, room
tone under all of it (as in a recording started early and stopped late) and optionally noise of the robustness
suite's kinds, scaled against the speech's own power. Scoring is the digit error rate: substitutions, deletions and
insertions over the reference digits, by edit distance (as TIDIGITS is scored).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sdr_lightning.audio import corrupt

ROOM_TONE_DB = -40.0  # pink room tone this far below the speech's power (the suite's `pauses` condition uses it too)
LEAD_S = 0.3


@dataclass
class DigitString:
    waveform: np.ndarray
    digits: list[int]
    spans: list[tuple[float, float]]  # each digit's clip, in seconds


def trim_edges(clip: np.ndarray, sample_rate: int, below_db: float = 30.0) -> np.ndarray:
    """`clip` without its leading and trailing stretches quieter than `below_db` under its loudest 10 ms: how a
    digit sounds run into its neighbours."""
    frame = max(1, sample_rate // 100)
    count = len(clip) // frame
    if count == 0:
        return clip
    db = 10 * np.log10(np.maximum((clip[: count * frame].reshape(count, frame) ** 2).mean(axis=1), 1e-12))
    active = np.flatnonzero(db > db.max() - below_db)
    return clip[active[0] * frame:(active[-1] + 1) * frame]


def build_string(clips: Sequence[np.ndarray], digits: Sequence[int], pauses_s: Sequence[float], sample_rate: int,
                 generator: torch.Generator, run_together: bool = False, noise: str | None = None,
                 snr_db: float = 20.0, babble_pool: Sequence[torch.Tensor] = ()) -> DigitString:
    """The clips in order with `pauses_s[i]` seconds between clip i and i+1 (`run_together`: edges trimmed and no
    pause), `LEAD_S` before and after, room tone throughout, and `noise` (white, pink or babble) at `snr_db` below
    the speech's power."""
    lead = int(LEAD_S * sample_rate)
    parts, spans, position = [np.zeros(lead, np.float32)], [], lead
    for index, clip in enumerate(clips):
        clip = trim_edges(clip, sample_rate) if run_together else clip
        spans.append((position / sample_rate, (position + len(clip)) / sample_rate))
        parts.append(clip.astype(np.float32))
        position += len(clip)
        if index < len(clips) - 1 and not run_together:
            gap = int(pauses_s[index] * sample_rate)
            parts.append(np.zeros(gap, np.float32))
            position += gap
    parts.append(np.zeros(lead, np.float32))
    speech = torch.from_numpy(np.concatenate(parts))
    speech_power = float(np.mean(np.concatenate([c.astype(np.float64) ** 2 for c in clips])))
    length = len(speech)
    tone = corrupt.pink_noise(1, length, generator)[0]
    mixed = speech + scaled(tone, speech_power, ROOM_TONE_DB)
    if noise is not None:
        if noise == "babble":
            source = corrupt.babble_noise(babble_pool, 1, length, talkers=4, generator=generator)[0]
        else:
            source = (corrupt.pink_noise if noise == "pink" else corrupt.white_noise)(1, length, generator)[0]
        mixed = mixed + scaled(source, speech_power, -snr_db)
    return DigitString(mixed.numpy(), list(digits), spans)


def scaled(noise: torch.Tensor, speech_power: float, level_db: float) -> torch.Tensor:
    return noise * float(np.sqrt(speech_power * 10 ** (level_db / 10) / max(float(noise.square().mean()), 1e-12)))


def edit_operations(reference: Sequence[int], hypothesis: Sequence[int]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of a minimal edit turning `reference` into `hypothesis`."""
    n, m = len(reference), len(hypothesis)
    # cost[i][j]: (edits, substitutions, deletions, insertions) for reference[:i] -> hypothesis[:j]
    cost = [[(0, 0, 0, 0)] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        cost[i][0] = (i, 0, i, 0)
    for j in range(1, m + 1):
        cost[0][j] = (j, 0, 0, j)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            e, s, d, k = cost[i - 1][j - 1]
            same = reference[i - 1] == hypothesis[j - 1]
            options = [(e + (not same), s + (not same), d, k)]
            e, s, d, k = cost[i - 1][j]
            options.append((e + 1, s, d + 1, k))
            e, s, d, k = cost[i][j - 1]
            options.append((e + 1, s, d, k + 1))
            cost[i][j] = min(options)
    return cost[n][m][1:]
