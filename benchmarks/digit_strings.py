"""Digit strings from one recording (issue 16): digit error rate and whole-string accuracy per condition, and false
digits per minute on digit-free audio, for a checkpoint and one or more segmenters.

    python benchmarks/digit_strings.py <run>/checkpoints/<best>.ckpt [--split TEST] [--strings 100]
        [--segmenters silero energy] [--threads 2] [--out f.json]

Strings are seeded draws of 3-10 clips of the evaluated split's speakers (TEST by default: never a training
speaker), built by sdr_lightning.sequence.strings.build_string: pauses of 0.15-1.0 s (clean, and white, pink and
babble noise at 20 and 10 dB SNR, babble mixed from TRAIN speakers' clips), short pauses of 0.05-0.15 s, and strings
run together (edges trimmed, no pause). `clean_7` is clean strings of exactly seven digits. Digit-free audio (a
minute each): room tone alone, each noise of the suite at the level it has at 10 dB SNR, and non-digit words spoken
by espeak-ng (skipped when espeak-ng is missing). Tune the recognizer's settings with --split DEV, report TEST once.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from _common import configure, find_data, machine, markdown_table, write_json  # benchmarks/_common.py

from sdr_lightning.audio.io import load_audio
from sdr_lightning.data.metadata import read_metadata
from sdr_lightning.errors import DataError
from sdr_lightning.sequence.recognizer import DigitStringRecognizer, SplitSettings, checkpoint_gate
from sdr_lightning.sequence.rejector import Rejector
from sdr_lightning.sequence.strings import ROOM_TONE_DB, build_string, edit_operations, scaled
from sdr_lightning.tasks.checkpoint import load_for_inference

# condition -> (pauses, run together, noise, SNR dB, digits per string)
CONDITIONS: dict[str, tuple[tuple[float, float], bool, str | None, float, tuple[int, int]]] = {
    "clean": ((0.15, 1.0), False, None, 0.0, (3, 10)),
    "clean_7": ((0.15, 1.0), False, None, 0.0, (7, 7)),
    "short_pauses": ((0.05, 0.15), False, None, 0.0, (3, 10)),
    "run_together": ((0.0, 0.0), True, None, 0.0, (3, 10)),
    **{f"{noise}_{snr}db": ((0.15, 1.0), False, noise, float(snr), (3, 10))
       for noise in ("white", "pink", "babble") for snr in (20, 10)},
}
TARGETS = {"clean": "DER <= 2%", "clean_7": "string acc >= 90%", "white_10db": "DER <= 5%",
           "pink_10db": "DER <= 5%", "babble_10db": "DER <= 5%", "run_together": "DER <= 10%"}
# words that sound like no digit (no "ate", "won", "to", "for", "tree", "fine", "heaven", ...)
NON_DIGIT_WORDS = ("hello", "yes", "okay", "please", "thank you", "computer", "weather", "morning", "number", "call",
                   "stop", "cancel", "again", "maybe", "the", "and", "listen", "water", "table", "money", "hmm",
                   "what", "really", "good", "music", "open", "house", "dog", "coffee", "left")
WORD_VOICES = ("en-us+m1", "en-gb+f1", "en-us+f3", "en-gb-scotland+m3")
DIGIT_FREE_S = 60.0


def clips_of(data: Path, split: str) -> tuple[list[np.ndarray], list[int], list[torch.Tensor]]:
    """The split's clips and labels, and a babble pool of TRAIN speakers' clips (outside any evaluated split)."""
    table = read_metadata(data)
    rows = [clip for clip in table if clip.split == split]
    if not rows:
        raise SystemExit(f"error: no {split} clips in {data}/SDR_metadata.tsv")
    clips = [load_audio(clip.path).numpy() for clip in rows]
    speakers = {clip.speaker for clip in rows}
    pool_rows = [clip for clip in table if clip.split == "TRAIN" and clip.speaker not in speakers]
    pool = [load_audio(clip.path) for clip in pool_rows[::10]]
    return clips, [clip.label for clip in rows], pool


def make_strings(clips: Sequence[np.ndarray], labels: Sequence[int], pool: Sequence[torch.Tensor], condition: str,
                 count: int, seed: int) -> list:
    (low, high), run_together, noise, snr, (shortest, longest) = CONDITIONS[condition]
    rng = np.random.default_rng([seed, sum(map(ord, condition))])
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    strings = []
    for _ in range(count):
        picks = rng.choice(len(clips), size=int(rng.integers(shortest, longest + 1)), replace=False)
        strings.append(build_string([clips[i] for i in picks], [labels[i] for i in picks],
                                    rng.uniform(low, high, len(picks)), 8000, generator, run_together=run_together,
                                    noise=noise, snr_db=snr, babble_pool=pool))
    return strings


def recognize_all(recognizer: DigitStringRecognizer, strings: list) -> tuple[list[list[tuple[int, float]]], float]:
    """Each string's (digit, confidence) pairs with no gate, and the seconds of CPU per second of audio."""
    started, audio_s, found = time.perf_counter(), 0.0, []
    for string in strings:
        found.append([(d.digit, d.confidence) for d in recognizer.recognize(string.waveform)])
        audio_s += len(string.waveform) / 8000
    return found, (time.perf_counter() - started) / audio_s


def score_strings(strings: list, found: list[list[tuple[int, float]]], gate: float) -> dict[str, float]:
    """Digit error rate and string accuracy when digits less confident than `gate` are dropped."""
    totals, exact = np.zeros(4), 0
    for string, digits in zip(strings, found):
        hypothesis = [digit for digit, confidence in digits if confidence >= gate]
        totals += [*edit_operations(string.digits, hypothesis), len(string.digits)]
        exact += hypothesis == string.digits
    return {"der": float(totals[:3].sum() / totals[3]), "substitutions": int(totals[0]), "deletions": int(totals[1]),
            "insertions": int(totals[2]), "digits": int(totals[3]), "string_acc": exact / len(strings)}


def streaming_latency(recognizer: DigitStringRecognizer, strings: list, chunk_s: float = 0.02) -> dict[str, float]:
    """Strings fed in `chunk_s` blocks as a microphone delivers them: per digit, the time from its segment's end to
    its emission (the stream time the block that emitted it ends at, plus that block's processing), and the
    process's CPU seconds per second of audio."""
    latencies, cpu, audio_s = [], 0.0, 0.0
    step = round(chunk_s * 8000)
    for string in strings:
        stream = recognizer.stream()
        for start in range(0, len(string.waveform), step):
            began, cpu_began = time.perf_counter(), time.process_time()
            digits = stream.feed(string.waveform[start:start + step])
            wall = time.perf_counter() - began
            cpu += time.process_time() - cpu_began
            latencies += [(start + step) / 8000 + wall - d.end_s for d in digits]
        stream.finish()
        audio_s += len(string.waveform) / 8000
    return {"chunk_s": chunk_s, "median_s": float(np.median(latencies)), "p90_s": float(np.percentile(latencies, 90)),
            "cpu_per_audio_s": cpu / audio_s, "digits": len(latencies)}


def digit_free_audio(clips: Sequence[np.ndarray], pool: Sequence[torch.Tensor], seed: int,
                     seconds: float = DIGIT_FREE_S) -> dict[str, np.ndarray]:
    """A minute each of room tone, white, pink and babble noise (at their 10 dB SNR level) and non-digit words."""
    from sdr_lightning.audio import corrupt

    generator = torch.Generator().manual_seed(seed)
    speech_power = float(np.mean(np.concatenate([c.astype(np.float64) ** 2 for c in clips[:200]])))
    length = int(seconds * 8000)
    tone = scaled(corrupt.pink_noise(1, length, generator)[0], speech_power, ROOM_TONE_DB)
    audio = {"room tone": tone}
    for noise in ("white", "pink", "babble"):
        source = (corrupt.babble_noise(pool, 1, length, talkers=4, generator=generator)[0] if noise == "babble"
                  else (corrupt.pink_noise if noise == "pink" else corrupt.white_noise)(1, length, generator)[0])
        audio[f"{noise} noise"] = tone + scaled(source, speech_power, -10.0)
    try:
        audio["non-digit words"] = torch.from_numpy(spoken_words(speech_power, seed, seconds))
    except DataError as err:
        print(f"non-digit words skipped: {err}")
    return {name: waveform.numpy() if isinstance(waveform, torch.Tensor) else waveform
            for name, waveform in audio.items()}


def spoken_words(speech_power: float, seed: int, seconds: float) -> np.ndarray:
    """Non-digit words by espeak-ng, 0.3-1.0 s apart, over room tone, about `seconds` long."""
    import torchaudio.functional as AF

    from sdr_lightning.audio import corrupt
    from sdr_lightning.data.voices import espeak, speak, trim

    program, rng = espeak(), np.random.default_rng(seed)
    parts, total = [np.zeros(2400, np.float32)], 0.0
    while total < seconds:
        word, voice = NON_DIGIT_WORDS[rng.integers(len(NON_DIGIT_WORDS))], WORD_VOICES[rng.integers(len(WORD_VOICES))]
        samples, rate = speak(program, voice, word, 160)
        clip = AF.resample(torch.from_numpy(trim(samples, rate)), rate, 8000).numpy()
        clip = clip * np.sqrt(speech_power / max(float(np.mean(clip.astype(np.float64) ** 2)), 1e-12))
        parts += [clip.astype(np.float32), np.zeros(int(rng.uniform(0.3, 1.0) * 8000), np.float32)]
        total += (len(parts[-1]) + len(parts[-2])) / 8000
    words = np.concatenate(parts)
    tone = scaled(corrupt.pink_noise(1, len(words), torch.Generator().manual_seed(seed))[0], speech_power,
                  ROOM_TONE_DB).numpy()
    return words + tone


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", default=None, help="folder with SDR_metadata.tsv and the clips")
    parser.add_argument("--split", default="TEST", help="whose clips make the strings (DEV to tune, TEST to report)")
    parser.add_argument("--strings", type=int, default=100, help="strings per condition")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--segmenters", nargs="+", default=["silero", "energy"], choices=["silero", "energy"])
    parser.add_argument("--min-confidence", default=str(SplitSettings.min_confidence),
                        help="the confidence gate of the main table: a probability (default: SplitSettings'), or auto "
                             "(the checkpoint's own, as sequence.min_confidence=auto)")
    parser.add_argument("--gates", type=float, nargs="*", default=[0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                        help="gates of the trade-off table (digits are found once, with no gate, then filtered)")
    parser.add_argument("--digit-free-s", type=float, default=DIGIT_FREE_S, help="seconds of each digit-free audio")
    parser.add_argument("--rejector", type=Path, default=None,
                        help="a trained 'not a digit' detector (python -m sdr_lightning.sequence.rejector); default: "
                             "the confidence gate alone")
    parser.add_argument("--stream-strings", type=int, default=20, help="strings streamed for the latency figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    configure(args.threads)
    data = find_data(args.data)
    model = load_for_inference(args.checkpoint, data_dir=str(data)).model
    args.min_confidence = (checkpoint_gate(model) if args.min_confidence == "auto"
                           else float(args.min_confidence))
    clips, labels, pool = clips_of(data, args.split)
    print(f"{machine()}; {args.checkpoint}; strings of {args.split} clips; gate {args.min_confidence:.3f}; rejector "
          f"{args.rejector or 'none'}\n", flush=True)
    strings = {c: make_strings(clips, labels, pool, c, args.strings, args.seed) for c in args.conditions}
    free = digit_free_audio(clips, pool, args.seed, args.digit_free_s)
    results: dict[str, dict] = {}
    gates = sorted({*args.gates, args.min_confidence})
    for segmenter in args.segmenters:
        recognizer = DigitStringRecognizer(model, segmenter, split=SplitSettings(min_confidence=0.0),
                                           rejector=Rejector.load(args.rejector) if args.rejector else None)
        figures: dict[str, dict] = {"real_time_factor": {}}
        for condition, batch in strings.items():
            found, figures["real_time_factor"][condition] = recognize_all(recognizer, batch)
            figures[condition] = {str(g): score_strings(batch, found, g) for g in gates}
            print(f"  {segmenter} {condition}: DER {figures[condition][str(args.min_confidence)]['der']:.3f}",
                  flush=True)
        for name, waveform in free.items():
            confidences = [d.confidence for d in recognizer.recognize(waveform)]
            minutes = len(waveform) / 8000 / 60
            figures[name] = {str(g): {"false_per_minute": sum(c >= g for c in confidences) / minutes} for g in gates}
        figures["streaming"] = streaming_latency(recognizer, strings[args.conditions[0]][:args.stream_strings])
        results[segmenter] = figures
    main_gate = str(args.min_confidence)
    rows = []
    for condition in args.conditions:
        cells = []
        for segmenter in args.segmenters:
            f = results[segmenter][condition][main_gate]
            cells += [f"{f['der']:.1%} (S{f['substitutions']} D{f['deletions']} I{f['insertions']})",
                      f"{f['string_acc']:.1%}"]
        rows.append([condition, *cells, TARGETS.get(condition, "")])
    for name in free:
        rows.append([f"{name} (false digits / min)",
                     *(c for s in args.segmenters for c in (f"{results[s][name][main_gate]['false_per_minute']:.1f}",
                                                           "")), "<= 1 per minute"])
    headers = ["condition", *(h for s in args.segmenters for h in (f"{s}: DER", f"{s}: string acc")), "target"]
    print(f"\ngate {args.min_confidence} (digits less probable are dropped)")
    print(markdown_table(headers, rows))
    for segmenter in args.segmenters:
        print(f"\n{segmenter}: the confidence gate's trade-off (DER per condition; false digits per minute)")
        trade = [[str(g), *(f"{results[segmenter][c][str(g)]['der']:.1%}" for c in args.conditions),
                  *(f"{results[segmenter][n][str(g)]['false_per_minute']:.1f}" for n in free)] for g in gates]
        print(markdown_table(["gate", *args.conditions, *free], trade))
    speed = {s: float(np.mean(list(results[s]["real_time_factor"].values()))) for s in args.segmenters}
    print("\noffline, seconds per second of audio: " + ", ".join(f"{s} {v:.3f}" for s, v in speed.items()))
    for segmenter in args.segmenters:
        f = results[segmenter]["streaming"]
        print(f"streaming ({segmenter}, {f['chunk_s'] * 1000:.0f} ms blocks, {f['digits']} digits of "
              f"{args.conditions[0]}): a digit comes out {f['median_s']:.3f} s (median; 90th percentile "
              f"{f['p90_s']:.3f} s) after its segment ends; {f['cpu_per_audio_s']:.3f} s of CPU per second of audio")
    write_json(args.out, {"machine": machine(), "checkpoint": str(args.checkpoint), "split": args.split,
                          "rejector": str(args.rejector) if args.rejector else None,
                          "strings": args.strings, "min_confidence": args.min_confidence, "results": results})


if __name__ == "__main__":
    main()
