"""A trained "not a digit" detector for the digit-string recognizer: logistic regression on the classifier's own
encoder embedding, telling a digit from another word, babble or a noise burst. The classifier's top probability
cannot: it is as unsure of a digit said oddly as of "coffee".

    python -m sdr_lightning.sequence.rejector <run>/checkpoints/<best>.ckpt    (writes <best>.ckpt.rejector.json)

Digits are the run's TRAIN clips: clean, and under white and babble noise at 10 dB. Not digits are espeak-ng saying
other words (RANDOM_WORDS, with the voices data/voices.py trains on), and bursts of white, pink and babble noise.
No word and no voice of benchmarks/digit_strings.py's digit-free audio is among them, so the benchmark scores the
detector on words and voices it never saw. The file holds plain numbers (standardisation and weights as JSON),
so loading one runs no code. The recognizer uses it where `sequence.rejector` finds it (`auto`: beside the
checkpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdr_lightning.audio.io import load_audio
from sdr_lightning.data.datamodule import collate_waveforms
from sdr_lightning.errors import ConfigError, DataError, SdrError

# other words, none a homophone of a digit, none in benchmarks/digit_strings.py's NON_DIGIT_WORDS
RANDOM_WORDS = ("apple", "banana", "window", "garden", "pencil", "yellow", "purple", "monday", "friday", "doctor",
                "kitchen", "rabbit", "silver", "button", "rocket", "pizza", "island", "market", "summer", "winter",
                "happy", "little", "bottle", "mother", "father", "simple", "perfect", "travel", "letter", "question",
                "hi", "bye", "sure", "right", "well", "so", "oh", "uh", "okay then", "excuse me")
TRAIN_VOICES = ("en-us+m2", "en-gb+f2", "en-gb-x-rp+m4", "en-029+f4", "en-us-nyc+m6", "en-gb-scotland+f2")
SUFFIX = ".rejector.json"


@dataclass
class Rejector:
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: float
    threshold: float = 0.5

    def not_digit_probability(self, embeddings: np.ndarray) -> np.ndarray:
        z = ((embeddings - self.mean) / self.scale) @ self.weight + self.bias
        return 1.0 / (1.0 + np.exp(-z))

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "weight": self.weight.tolist(),
                "bias": self.bias, "threshold": self.threshold}

    @classmethod
    def load(cls, path: str | Path) -> Rejector:
        """A rejector file; DataError naming it when it is not one (anything read from a file is untrusted)."""
        file = Path(path).expanduser()
        try:
            values = json.loads(file.read_text())
            rejector = cls(np.asarray(values["mean"], dtype=np.float64), np.asarray(values["scale"], dtype=np.float64),
                           np.asarray(values["weight"], dtype=np.float64), float(values["bias"]),
                           float(values.get("threshold", 0.5)))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"sequence.rejector={path}: not a rejector file ({err}); write one with python -m "
                            f"sdr_lightning.sequence.rejector <checkpoint>, or set sequence.rejector=null.") from err
        if not (rejector.mean.shape == rejector.scale.shape == rejector.weight.shape and rejector.mean.ndim == 1):
            raise DataError(f"sequence.rejector={path}: its mean, scale and weight differ in shape; write it again.")
        return rejector


def resolve(setting: str | None, checkpoint: str | Path | None) -> Rejector | None:
    """`sequence.rejector`: null (none), `auto` (the checkpoint's `<ckpt>.rejector.json` if there is one) or a path."""
    if setting in (None, "", "none", "null"):
        return None
    if setting == "auto":
        beside = Path(f"{checkpoint}{SUFFIX}") if checkpoint else None
        return Rejector.load(beside) if beside is not None and beside.is_file() else None
    return Rejector.load(setting)


@torch.inference_mode()
def embed(model: torch.nn.Module, pieces: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """(len(pieces), D) encoder embeddings of raw waveform pieces."""
    out = []
    for start in range(0, len(pieces), batch_size):
        chunk = pieces[start:start + batch_size]
        batch = collate_waveforms([(torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32)), 0, i)
                                   for i, p in enumerate(chunk)])
        features, frames = model.featurizer(batch["waveform"], batch["lengths"])
        out.append(model.encoder(features, frames).float().numpy())
    return np.concatenate(out)


def fit(model: torch.nn.Module, digits: Sequence[np.ndarray], others: Sequence[np.ndarray],
        threshold: float = 0.5) -> Rejector:
    """Logistic regression (scikit-learn, classes balanced) telling `others` (1) from `digits` (0)."""
    from sklearn.linear_model import LogisticRegression

    x = embed(model, [*digits, *others]).astype(np.float64)
    y = np.r_[np.zeros(len(digits)), np.ones(len(others))]
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    classifier = LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000).fit((x - mean) / scale, y)
    return Rejector(mean, scale, classifier.coef_[0], float(classifier.intercept_[0]), threshold)


def training_pieces(train_waveforms: Sequence[torch.Tensor], sample_rate: int, seed: int = 0
                    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Digits (TRAIN clips with 50 ms of room tone each side: clean, white and babble 10 dB) and not digits
    (espeak-ng's RANDOM_WORDS in TRAIN_VOICES, noise bursts of 0.2-0.8 s)."""
    import torchaudio.functional as AF

    from sdr_lightning.audio import corrupt
    from sdr_lightning.data.voices import espeak, speak, trim
    from sdr_lightning.sequence.strings import ROOM_TONE_DB, scaled

    generator, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    pad = int(0.05 * sample_rate)
    power = float(np.mean([float(w.square().mean()) for w in train_waveforms]))

    def with_tone(clip: torch.Tensor) -> np.ndarray:
        padded = torch.nn.functional.pad(clip, (pad, pad))
        return (padded + scaled(corrupt.pink_noise(1, len(padded), generator)[0], power, ROOM_TONE_DB)).numpy()

    def noisy(clip: torch.Tensor, kind: str) -> torch.Tensor:
        length = torch.tensor([len(clip)])
        source = (corrupt.babble_noise(train_waveforms, 1, len(clip), generator=generator) if kind == "babble"
                  else corrupt.white_noise(1, len(clip), generator))
        return corrupt.mix_at_snr(clip[None], length, source, 10.0)[0]

    digits = [with_tone(w) for w in train_waveforms]
    digits += [with_tone(noisy(w, kind)) for kind in ("white", "babble") for w in train_waveforms[::4]]
    program, others = espeak(), []
    for voice in TRAIN_VOICES:
        for word in RANDOM_WORDS:
            samples, rate = speak(program, voice, word, int(rng.choice([130, 175])))
            clip = AF.resample(torch.from_numpy(trim(samples, rate)), rate, sample_rate)
            others.append(with_tone(clip * float(np.sqrt(power / max(float(clip.square().mean()), 1e-12)))))
    for kind in ("white", "pink", "babble"):
        for _ in range(100):
            length = int(rng.uniform(0.2, 0.8) * sample_rate)
            source = (corrupt.babble_noise(train_waveforms, 1, length, generator=generator)[0] if kind == "babble"
                      else (corrupt.pink_noise if kind == "pink" else corrupt.white_noise)(1, length, generator)[0])
            others.append(with_tone(scaled(source, power, float(rng.uniform(-20, 0)))))
    return digits, others


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", default=None, help="where the run's clips are (default: the run's data.dir)")
    parser.add_argument("--out", type=Path, default=None, help=f"default: <checkpoint>{SUFFIX}")
    parser.add_argument("--threshold", type=float, default=0.5, help="not a digit above this probability")
    args = parser.parse_args(argv)
    from sdr_lightning.tasks.checkpoint import load_for_inference, run_datamodule

    try:
        run = load_for_inference(args.checkpoint, data_dir=args.data)
        datamodule = run_datamodule(run, data_dir=args.data, stage="fit")
        rate = int(run.model.featurizer.sample_rate)
        waveforms = [load_audio(c.path, rate) for c in datamodule.splits["TRAIN"]]
        if not waveforms:
            raise ConfigError(f"{args.checkpoint}: its run has no TRAIN clips to learn digits from.")
        digits, others = training_pieces(waveforms, rate)
        rejector = fit(run.model, digits, others, args.threshold)
    except SdrError as err:
        sys.exit(f"error: {err}")
    out = args.out or Path(f"{args.checkpoint}{SUFFIX}")
    out.write_text(json.dumps(rejector.to_json()) + "\n")
    print(f"rejector: {len(digits)} digit and {len(others)} other pieces -> {out}")


if __name__ == "__main__":
    main()
