import csv
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from sdr_lightning.errors import DataError
from sdr_lightning.analysis.predictions import Predictions, read_predictions, write_predictions
from sdr_lightning.analysis.report import build_report, format_per_class, write_split_report


def random_predictions(n: int = 300, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 9, n)  # digit 9 never occurs: zero support
    logits = rng.normal(size=(n, 10))
    logits[np.arange(n), labels] += rng.uniform(0, 3, n)  # mostly right, some mistakes
    logits[:, 4] -= 10  # digit 4 is never predicted: zero precision denominator
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Predictions([f"{d}_spk{i % 3}_{i}" for i, d in enumerate(labels)],
                       [f"spk{i % 3}" for i in range(n)], labels, probabilities)


def test_report_agrees_with_scikit_learn() -> None:
    predictions = random_predictions()
    labels, predicted = predictions.labels, predictions.predicted
    report = build_report("test", labels, predicted)
    np.testing.assert_array_equal(report.confusion, confusion_matrix(labels, predicted, labels=range(10)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(10), zero_division=0)
    np.testing.assert_allclose(report.precision, precision)
    np.testing.assert_allclose(report.recall, recall)
    np.testing.assert_allclose(report.f1, f1)
    np.testing.assert_array_equal(report.support, support)
    assert report.accuracy == pytest.approx((labels == predicted).mean())
    assert report.macro_f1 == pytest.approx(f1.mean())
    assert report.precision[4] == 0 and report.support[9] == 0


def test_split_report_files(tmp_path: Path) -> None:
    predictions = random_predictions(n=120)
    report = write_split_report(predictions, tmp_path / "test", "test")
    folder = tmp_path / "test"
    assert {p.name for p in folder.iterdir()} == {
        "predictions.csv", "confusion_matrix.csv", "confusion_matrix.png", "per_class.csv", "summary.json"}
    with (folder / "confusion_matrix.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0][1:] == [str(d) for d in range(10)]
    np.testing.assert_array_equal(np.array([r[1:] for r in rows[1:]], dtype=int), report.confusion)
    with (folder / "per_class.csv").open() as handle:
        per_class = list(csv.DictReader(handle))
    assert [r["digit"] for r in per_class] == [*map(str, range(10)), "macro"]
    assert float(per_class[-1]["f1"]) == pytest.approx(report.macro_f1, abs=1e-6)
    image = imread(folder / "confusion_matrix.png")
    assert image.shape[0] > 400 and image.shape[1] > 400
    table = format_per_class(report)
    assert "precision" in table and table.count("\n") == 12


def test_predictions_round_trip(tmp_path: Path) -> None:
    predictions = random_predictions(n=50)
    path = write_predictions(predictions, tmp_path / "predictions.csv")
    with path.open() as handle:
        header = next(csv.reader(handle))
    assert header == ["identifier", "speaker", "label", "prediction", *(f"prob_{d}" for d in range(10))]
    back = read_predictions(path)
    assert back.identifiers == predictions.identifiers and back.speakers == predictions.speakers
    np.testing.assert_array_equal(back.predicted, predictions.predicted)
    np.testing.assert_allclose(back.probabilities, predictions.probabilities, atol=1e-6)


def test_read_predictions_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_predictions(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("identifier,label\nx,1\n")
    with pytest.raises(DataError, match="bad.csv: missing column"):
        read_predictions(bad)
