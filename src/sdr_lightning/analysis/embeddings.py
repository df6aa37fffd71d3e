"""2-D views of learned embeddings (t-SNE / UMAP scatter plots, TensorBoard projector) for Task II.3.

Each named space (a model's last hidden layer, downsampled Mel vectors of the input, ...) is projected
to 2-D, plotted coloured by digit with one marker shape per speaker, and scored by silhouette: a space
that learned digits rather than voices has a high digit score and a low (or negative) speaker score.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from threadpoolctl import threadpool_limits

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

METHODS = ("tsne", "umap")
METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}
MIN_POINTS = 5  # below this neither t-SNE's perplexity nor UMAP's neighbour graph is meaningful
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
SCORES_FILE = "separation.json"


def standardize(vectors: np.ndarray) -> np.ndarray:
    """(n, ...) -> (n, d) float64 with zero mean and unit variance per dimension; constant dims stay 0."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x.reshape(len(x), -1)
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)


def project(vectors: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(n, d) vectors -> (n, 2) points by t-SNE or UMAP, deterministic for a given seed."""
    if method not in METHODS:
        raise ValueError(f"Unknown projection method {method!r}; use one of {METHODS}.")
    n = len(vectors)
    if n < MIN_POINTS:
        raise ValueError(f"Need at least {MIN_POINTS} points to project an embedding, got {n}.")
    x = standardize(vectors)
    if not np.isfinite(x).all():
        raise ValueError("Embedding vectors contain NaN or infinite values.")
    if method == "tsne":
        from sklearn.manifold import TSNE

        # Perplexity must stay below n; (n-1)/3 is the usual bound so tiny evaluation sets still work.
        tsne = TSNE(n_components=2, init="pca", perplexity=min(30.0, (n - 1) / 3), random_state=seed)
        # One thread: on a busy shared machine OpenMP's spinning threads turned a 0.1 s fit into 15-40 s,
        # and a fixed thread count keeps results reproducible; a 2000-point fit still takes ~8 s.
        with threadpool_limits(limits=1):
            points = tsne.fit_transform(x)
    else:
        import umap  # slow to import (numba), so only when asked for

        # n_jobs=1 is what random_state forces anyway (UMAP then runs numba single-threaded and restores
        # the thread count afterwards); saying so silences UMAP's warning.
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed, n_jobs=1)
        points = reducer.fit_transform(x)
    return np.asarray(points, dtype=np.float64)


def separation_scores(points: np.ndarray, labels: Sequence[int], speakers: Sequence[str]) -> dict[str, float]:
    """Silhouette of the points grouped by digit and by speaker (NaN where a grouping is degenerate)."""
    from sklearn.metrics import silhouette_score

    scores = {}
    for name, groups in (("digit", np.asarray(labels)), ("speaker", np.asarray(speakers))):
        n_groups = len(np.unique(groups))
        valid = 2 <= n_groups <= len(points) - 1
        scores[name] = float(silhouette_score(points, groups)) if valid else math.nan
    return scores


def plot_embedding(
    points: np.ndarray,
    labels: Sequence[int],
    speakers: Sequence[str],
    title: str,
    path: Path,
    axis_name: str = "Component",
) -> Path:
    """Scatter PNG of (n, 2) points: colour = digit (tab10), marker = speaker; axes '<axis_name> 1/2'."""
    points = np.asarray(points)
    labels = np.asarray(labels, dtype=int)
    speakers = np.asarray(speakers, dtype=str)
    if points.ndim != 2 or points.shape[1] != 2 or not len(points) == len(labels) == len(speakers):
        raise ValueError(f"Need (n, 2) points with n labels and speakers; got {points.shape}, "
                         f"{len(labels)} labels, {len(speakers)} speakers.")
    fig = Figure(figsize=(7, 6), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    palette = colormaps["tab10"]
    names = sorted(set(speakers))
    markers = {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(names)}
    # Big enough to tell marker shapes apart, small enough that a full test split does not become a blob.
    size = 30 if len(points) <= 300 else 18 if len(points) <= 1000 else 10
    for name in names:
        rows = speakers == name
        ax.scatter(points[rows, 0], points[rows, 1], c=palette(labels[rows] % 10), marker=markers[name],
                   s=size, alpha=0.8, linewidths=0)
    ax.set_xlabel(f"{axis_name} 1")
    ax.set_ylabel(f"{axis_name} 2")
    ax.set_title(title)
    ax.set_xticks([])  # projection coordinates carry no units; only neighbourhoods matter
    ax.set_yticks([])

    # Both legends sit outside the axes so they never hide points.
    digit_handles = [Line2D([], [], linestyle="", marker="o", markersize=7, color=palette(d % 10), label=str(d))
                     for d in sorted(set(labels.tolist()))]
    speaker_handles = [Line2D([], [], linestyle="", marker=markers[name], markersize=7, color="0.35", label=name)
                       for name in names]
    digits = ax.legend(handles=digit_handles, title="digit", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       frameon=False, handletextpad=0.2, borderaxespad=0.0, alignment="left")
    ax.add_artist(digits)
    ax.legend(handles=speaker_handles, title="speaker", loc="lower left", bbox_to_anchor=(1.01, 0.0),
              frameon=False, handletextpad=0.2, borderaxespad=0.0, alignment="left")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_projector(
    log_dir: Path | SummaryWriter,
    vectors: np.ndarray,
    metadata: Sequence[Sequence[Any]],
    header: Sequence[str],
    tag: str,
) -> None:
    """Add (n, d) vectors with one metadata row per vector to TensorBoard's embedding projector.

    A SummaryWriter is used and left open (its owner closes it); a directory gets a writer of its own.
    """
    from torch.utils.tensorboard import SummaryWriter

    vectors = np.asarray(vectors, dtype=np.float32)
    vectors = vectors.reshape(len(vectors), -1)
    if len(metadata) != len(vectors):
        raise ValueError(f"{len(vectors)} vectors but {len(metadata)} metadata rows.")
    if len(header) < 2:
        # TensorBoard reads a one-column metadata file as having no header row.
        raise ValueError("The projector header needs at least two columns.")
    if any(len(row) != len(header) for row in metadata):
        raise ValueError(f"Every metadata row needs {len(header)} columns to match the header {list(header)}.")
    rows = [[_tsv_cell(cell) for cell in row] for row in metadata]  # tabs or newlines would shift columns
    writer = log_dir if isinstance(log_dir, SummaryWriter) else SummaryWriter(log_dir=str(log_dir))
    try:
        writer.add_embedding(vectors, metadata=rows, metadata_header=[_tsv_cell(h) for h in header], tag=tag)
    finally:
        if writer is not log_dir:
            writer.close()


def _tsv_cell(value: Any) -> str:
    return str(value).replace("\t", " ").replace("\n", " ")


def embedding_report(
    spaces: Mapping[str, np.ndarray],
    labels: Sequence[int],
    speakers: Sequence[str],
    identifiers: Sequence[str],
    out_dir: Path,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
    writer: SummaryWriter | None = None,
    predictions: Sequence[int] | None = None,
    title_prefix: str = "",
    tag_prefix: str = "",
) -> list[Path]:
    """Plot every space with every method to `<out_dir>/<space>_<method>.png`; returns those paths.

    Silhouette scores (by digit and by speaker, on the 2-D points) go into each title, into
    `<out_dir>/separation.json` as {space: {method: {"digit": s, "speaker": s}}}, and, with a writer,
    into scalars `embedding/<space>_<method>/silhouette_<grouping>`; with a writer each space is also
    written once to the projector with columns digit, speaker, identifier (and prediction).
    `tag_prefix` keeps several calls on one writer apart (e.g. "dev_", "test_").
    """
    n = len(labels)
    lengths = {"speakers": len(speakers), "identifiers": len(identifiers)}
    lengths.update({f"space {name!r}": len(v) for name, v in spaces.items()})
    if predictions is not None:
        lengths["predictions"] = len(predictions)
    wrong = {k: v for k, v in lengths.items() if v != n}
    if wrong:
        raise ValueError(f"{n} labels but {wrong}; every input needs one entry per clip.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:  # fail before spending minutes on the first space
        raise ValueError(f"Unknown projection method(s) {unknown}; use some of {METHODS}.")

    out_dir = Path(out_dir)
    paths, scores = [], {}
    for space, vectors in spaces.items():
        scores[space] = {}
        for method in methods:
            points = project(vectors, method, seed=seed)
            score = separation_scores(points, labels, speakers)
            scores[space][method] = score
            title = (f"{title_prefix} {space} embedding, {METHOD_NAMES[method]}".strip()
                     + f"\nsilhouette by digit {score['digit']:.2f}, by speaker {score['speaker']:.2f}")
            paths.append(plot_embedding(points, labels, speakers, title, out_dir / f"{space}_{method}.png",
                                        axis_name=METHOD_NAMES[method]))
            if writer is not None:
                for grouping, value in score.items():
                    writer.add_scalar(f"embedding/{tag_prefix}{space}_{method}/silhouette_{grouping}", value)
        if writer is not None:
            header = ["digit", "speaker", "identifier"] + (["prediction"] if predictions is not None else [])
            columns = [labels, speakers, identifiers] + ([predictions] if predictions is not None else [])
            rows = [list(row) for row in zip(*(np.asarray(c).tolist() for c in columns))]  # tensors -> plain
            write_projector(writer, vectors, rows, header, tag=f"{tag_prefix}{space}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # NaN (a degenerate grouping) is not JSON; write it as null.
    plain = {space: {method: {k: None if math.isnan(v) else v for k, v in score.items()}
                     for method, score in by_method.items()} for space, by_method in scores.items()}
    (out_dir / SCORES_FILE).write_text(json.dumps(plain, indent=2, sort_keys=True) + "\n")
    return paths
