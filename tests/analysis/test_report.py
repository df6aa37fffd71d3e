import csv
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from sdr_lightning.analysis.predictions import Predictions, read_predictions, write_predictions
from sdr_lightning.analysis.report import build_report, format_per_class, write_split_report
from sdr_lightning.errors import DataError


def random_predictions(n: int = 300, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 9, n)  # digit 9 never occurs: zero support
    logits = rng.normal(size=(n, 10))
    logits[np.arange(n), labels] += rng.uniform(0, 3, n)  # mostly right, some mistakes
    logits[:, 4] -= 10  # digit 4 is never predicted: zero precision denominator
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Predictions([f"{d}_spk{i % 3}_{i}" for i, d in enumerate(labels)],
                       [f"spk{i % 3}" for i in range(n)], labels, probabilities)


def test_report_figures_on_a_worked_example() -> None:
    """Six clips worked out by hand: digit 0 twice right, 1 once right and once taken for 2, 2 once taken for 0;
    digit 3 is predicted but never present, digits 4-9 neither."""
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 1, 2, 0, 3])
    report = build_report("test", labels, predicted)
    assert report.confusion[0, 0] == 2 and report.confusion[1, 2] == 1 and report.confusion[2, 0] == 1
    assert report.confusion.sum() == 6 and report.accuracy == pytest.approx(3 / 6)
    np.testing.assert_allclose(report.precision[:4], [2 / 3, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(report.recall[:4], [1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(report.f1[:4], [0.8, 2 / 3, 0.0, 0.0])
    np.testing.assert_array_equal(report.support, [2, 2, 2, 0, 0, 0, 0, 0, 0, 0])
    assert report.support.dtype.kind == "i"  # printed with an integer format
    assert report.macro_f1 == pytest.approx((0.8 + 2 / 3) / 10)  # zero_division=0: absent classes count as 0


def test_report_on_random_predictions_has_the_zero_division_cases() -> None:
    predictions = random_predictions()
    report = build_report("test", predictions.labels, predictions.predicted)
    assert report.accuracy == pytest.approx(predictions.accuracy)
    assert report.precision[4] == 0 and report.support[9] == 0 and report.recall[9] == 0
    assert np.all((0 <= report.f1) & (report.f1 <= 1))


def test_the_calibration_error_is_the_gap_between_confidence_and_accuracy() -> None:
    probabilities = np.full((4, 10), 0.01)
    probabilities[:, 0] = 0.91  # four answers at 0.91, three of them right: 0.75 against 0.91
    report = build_report("dev", np.array([0, 0, 0, 1]), probabilities.argmax(1), 10, probabilities)
    assert report.calibration_error == pytest.approx(0.16, abs=1e-6)
    assert report.summary()["calibration_error"] == pytest.approx(0.16, abs=1e-6)
    assert "calibration_error" not in build_report("dev", np.array([0]), np.array([0])).summary()


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
    assert 0 <= json.loads((folder / "summary.json").read_text())["calibration_error"] <= 1
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
