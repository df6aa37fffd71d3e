"""Per-split evaluation report: accuracy, confusion matrix (CSV + PNG), per-class precision/recall/F1 (scikit-learn's,
with 0 where a class was never predicted or never present), and how far the top probability is from the accuracy it
promises (expected calibration error, torchmetrics')."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torchmetrics.functional.classification import multiclass_calibration_error

from sdr_lightning.analysis.predictions import Predictions, write_predictions


@dataclass
class SplitReport:
    name: str
    confusion: np.ndarray  # (classes, classes): rows true digit, columns predicted digit
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    calibration_error: float | None = None  # top-label ECE over 15 bins; None without probabilities

    @property
    def n(self) -> int:
        return int(self.support.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.n, 1))

    @property
    def macro_f1(self) -> float:
        return float(self.f1.mean())

    def summary(self) -> dict[str, float | int]:
        figures = {"accuracy": round(self.accuracy, 6), "macro_f1": round(self.macro_f1, 6), "clips": self.n}
        if self.calibration_error is not None:
            figures["calibration_error"] = round(self.calibration_error, 6)
        return figures


def build_report(name: str, labels: np.ndarray, predicted: np.ndarray, num_classes: int = 10,
                 probabilities: np.ndarray | None = None) -> SplitReport:
    classes = list(range(num_classes))
    confusion = confusion_matrix(labels, predicted, labels=classes)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes,
                                                                     zero_division=0)
    error = None
    if probabilities is not None and len(labels):
        error = float(multiclass_calibration_error(torch.as_tensor(probabilities, dtype=torch.float32),
                                                   torch.as_tensor(labels, dtype=torch.long), num_classes,
                                                   n_bins=15))
    return SplitReport(name, confusion, precision, recall, f1, support.astype(int), error)


def format_per_class(report: SplitReport) -> str:
    lines = [f"{report.name}: accuracy {report.accuracy:.4f}, macro-F1 {report.macro_f1:.4f}, {report.n} clips",
             "digit  precision  recall     F1  support"]
    for digit in range(len(report.support)):
        lines.append(f"{digit:>5}  {report.precision[digit]:9.3f}  {report.recall[digit]:6.3f}  "
                     f"{report.f1[digit]:5.3f}  {report.support[digit]:7d}")
    lines.append(f"{'macro':>5}  {report.precision.mean():9.3f}  {report.recall.mean():6.3f}  "
                 f"{report.macro_f1:5.3f}  {report.n:7d}")
    return "\n".join(lines)


def confusion_figure(report: SplitReport, title: str = "") -> Figure:
    """Counts in each cell, shaded by the row's share (recall), digits as tick labels."""
    confusion = report.confusion
    classes = len(confusion)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(6.4, 5.6), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for true in range(classes):
        for predicted in range(classes):
            count = confusion[true, predicted]
            if count:
                axes.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                          color="white" if shares[true, predicted] > 0.5 else "black")
    axes.set_xticks(range(classes), [str(c) for c in range(classes)])
    axes.set_yticks(range(classes), [str(c) for c in range(classes)])
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("true digit")
    axes.set_title(title or f"{report.name}: accuracy {report.accuracy:.3f} ({report.n} clips)")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true digit's clips")
    figure.tight_layout()
    return figure


def write_split_report(predictions: Predictions, out_dir: Path, name: str, title: str = "") -> SplitReport:
    """Write predictions.csv, confusion_matrix.{csv,png}, per_class.csv and summary.json into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = predictions.probabilities.shape[1]
    report = build_report(name, predictions.labels, predictions.predicted, classes, predictions.probabilities)
    write_predictions(predictions, out_dir / "predictions.csv")
    with (out_dir / "confusion_matrix.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *range(classes)])
        for digit, row in enumerate(report.confusion):
            writer.writerow([digit, *row.tolist()])
    with (out_dir / "per_class.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["digit", "precision", "recall", "f1", "support"])
        for digit in range(classes):
            writer.writerow([digit, f"{report.precision[digit]:.6f}", f"{report.recall[digit]:.6f}",
                             f"{report.f1[digit]:.6f}", int(report.support[digit])])
        writer.writerow(["macro", f"{report.precision.mean():.6f}", f"{report.recall.mean():.6f}",
                         f"{report.macro_f1:.6f}", report.n])
    confusion_figure(report, title).savefig(out_dir / "confusion_matrix.png")
    (out_dir / "summary.json").write_text(json.dumps(report.summary(), indent=2) + "\n")
    return report
