"""A model's predictions on one split, one row per clip, and their CSV form (`predictions.csv`)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdr_lightning.errors import DataError

BASE_COLUMNS = ("identifier", "speaker", "label", "prediction")


@dataclass
class Predictions:
    identifiers: list[str]
    speakers: list[str]
    labels: np.ndarray  # (n,) int
    probabilities: np.ndarray  # (n, classes)
    # (n, d) last hidden layer, and (n, d') downsampled log-Mel input; kept only in memory
    embeddings: np.ndarray | None = None
    input_vectors: np.ndarray | None = None

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    def __len__(self) -> int:
        return len(self.identifiers)


def write_predictions(predictions: Predictions, path: Path) -> Path:
    classes = predictions.probabilities.shape[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*BASE_COLUMNS, *(f"prob_{c}" for c in range(classes))])
        for i, identifier in enumerate(predictions.identifiers):
            writer.writerow([identifier, predictions.speakers[i], int(predictions.labels[i]),
                             int(predictions.predicted[i]), *(f"{p:.6f}" for p in predictions.probabilities[i])])
    return path


def read_predictions(path: Path) -> Predictions:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Predictions file {path} not found; evaluate the run first (python eval.py ckpt_path=...).")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        prob_columns = [c for c in header if c.startswith("prob_")]
        missing = [c for c in BASE_COLUMNS if c not in header]
        if missing or not prob_columns:
            raise DataError(f"{path}: missing column(s) {missing or ['prob_*']}; is it a predictions.csv?")
        rows = list(reader)
    return Predictions(
        identifiers=[r["identifier"] for r in rows],
        speakers=[r["speaker"] for r in rows],
        labels=np.array([int(r["label"]) for r in rows], dtype=int),
        probabilities=np.array([[float(r[c]) for c in prob_columns] for r in rows]).reshape(len(rows), -1),
    )
