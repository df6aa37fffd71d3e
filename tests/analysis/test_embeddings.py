import json
import time

import matplotlib.image
import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from sdr_lightning.analysis.embeddings import (
    embedding_report,
    plot_embedding,
    project,
    separation_scores,
    write_projector,
)

DIGITS, SPEAKERS, PER_GROUP = (0, 3, 5, 9), ("george", "theo"), 8


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """64 points in 16-D: far-apart digit centres, a smaller per-speaker offset, unit noise."""
    rng = np.random.default_rng(0)
    digit_centres = {d: rng.normal(scale=6.0, size=16) for d in DIGITS}
    speaker_offsets = {s: rng.normal(scale=1.5, size=16) for s in SPEAKERS}
    vectors, labels, speakers = [], [], []
    for d in DIGITS:
        for s in SPEAKERS:
            vectors.append(digit_centres[d] + speaker_offsets[s] + rng.normal(size=(PER_GROUP, 16)))
            labels += [d] * PER_GROUP
            speakers += [s] * PER_GROUP
    return np.concatenate(vectors), np.array(labels), np.array(speakers)


def nearest_centroid_accuracy(points: np.ndarray, labels: np.ndarray) -> float:
    classes = np.unique(labels)
    centroids = np.stack([points[labels == c].mean(axis=0) for c in classes])
    nearest = classes[np.linalg.norm(points[:, None] - centroids[None], axis=2).argmin(axis=1)]
    return float((nearest == labels).mean())


def test_tsne_keeps_digit_clusters_and_is_deterministic(blobs) -> None:
    vectors, labels, _ = blobs
    points = project(vectors, "tsne", seed=1)
    assert points.shape == (len(vectors), 2) and np.isfinite(points).all()
    np.testing.assert_array_equal(points, project(vectors, "tsne", seed=1))
    assert nearest_centroid_accuracy(points, labels) > 0.9


@pytest.mark.slow  # umap imports numba: seconds
def test_umap_keeps_digit_clusters_and_is_deterministic(blobs) -> None:
    vectors, labels, _ = blobs
    points = project(vectors, "umap", seed=1)  # pays the one-off numba compile (~7 s)
    assert points.shape == (len(vectors), 2) and np.isfinite(points).all()
    np.testing.assert_allclose(points, project(vectors, "umap", seed=1))
    assert nearest_centroid_accuracy(points, labels) > 0.9


def test_tiny_inputs_and_constant_dimensions_project() -> None:
    vectors = np.random.default_rng(0).normal(size=(6, 4))
    vectors[:, 2] = 7.0  # zero variance must not turn into NaN
    assert np.isfinite(project(vectors, "tsne")).all()


@pytest.mark.parametrize("n", [0, 1, 4])
def test_too_few_points_rejected(n: int) -> None:
    with pytest.raises(ValueError, match="at least 5 points"):
        project(np.zeros((n, 3)), "tsne")


def test_unknown_method_names_valid_choices(blobs) -> None:
    with pytest.raises(ValueError, match="'tsne', 'umap'"):
        project(blobs[0], "pca")


def test_non_finite_vectors_rejected(blobs) -> None:
    vectors = blobs[0].copy()
    vectors[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        project(vectors, "tsne")


def test_separation_scores(blobs) -> None:
    vectors, labels, speakers = blobs
    scores = separation_scores(project(vectors, "tsne"), labels, speakers)
    assert scores["digit"] > 0.5 > scores["speaker"]
    assert np.isnan(separation_scores(vectors[:, :2], labels, ["theo"] * len(labels))["speaker"])


def test_plot_is_a_readable_png(blobs, tmp_path) -> None:
    _, labels, speakers = blobs
    points = np.random.default_rng(0).normal(size=(len(labels), 2))
    path = plot_embedding(points, labels, speakers, "encoder embedding, t-SNE", tmp_path / "sub" / "plot.png",
                          axis_name="t-SNE")
    assert path == tmp_path / "sub" / "plot.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (6 * 120, 7 * 120)
    assert image[..., :3].std() > 0.05  # something was drawn


def test_plot_rejects_mismatched_lengths(tmp_path) -> None:
    with pytest.raises(ValueError, match="labels"):
        plot_embedding(np.zeros((5, 2)), [0] * 4, ["theo"] * 5, "t", tmp_path / "p.png")


def projector_files(log_dir) -> dict[str, list]:
    return {name: sorted(log_dir.rglob(name)) for name in ("projector_config.pbtxt", "tensors.tsv", "metadata.tsv")}


def test_projector_from_log_dir(tmp_path) -> None:
    vectors = np.arange(12, dtype=float).reshape(4, 3)
    rows = [[d, "theo", f"{d}_theo_{i}"] for i, d in enumerate((0, 1, 2, 1))]
    write_projector(tmp_path, vectors, rows, ["digit", "speaker", "identifier"], tag="encoder")
    files = projector_files(tmp_path)
    assert all(len(found) == 1 for found in files.values()), files
    lines = files["metadata.tsv"][0].read_text().splitlines()
    assert lines[0] == "digit\tspeaker\tidentifier"
    assert lines[1:] == ["0\ttheo\t0_theo_0", "1\ttheo\t1_theo_1", "2\ttheo\t2_theo_2", "1\ttheo\t1_theo_3"]
    assert len(files["tensors.tsv"][0].read_text().splitlines()) == 4
    assert "encoder" in files["projector_config.pbtxt"][0].read_text()


def test_projector_uses_given_writer_without_closing_it(tmp_path) -> None:
    writer = SummaryWriter(log_dir=str(tmp_path))
    write_projector(writer, np.ones((3, 2)), [[0, "a b"], [1, "c\td"], [2, "e"]], ["digit", "speaker"], tag="mel")
    writer.add_scalar("still/open", 1.0)  # a closed writer would raise here
    writer.close()
    metadata = projector_files(tmp_path)["metadata.tsv"][0].read_text().splitlines()
    assert metadata == ["digit\tspeaker", "0\ta b", "1\tc d", "2\te"]


def test_projector_rejects_mismatched_metadata(tmp_path) -> None:
    with pytest.raises(ValueError, match="metadata rows"):
        write_projector(tmp_path, np.ones((3, 2)), [[0, "a"]], ["digit", "speaker"], tag="x")
    with pytest.raises(ValueError, match="columns"):
        write_projector(tmp_path, np.ones((1, 2)), [[0]], ["digit", "speaker"], tag="x")


def test_embedding_report_writes_plots_scores_and_projector(blobs, tmp_path) -> None:
    vectors, labels, speakers = blobs
    identifiers = [f"{d}_{s}_{i}" for i, (d, s) in enumerate(zip(labels, speakers))]
    spaces = {"encoder": vectors, "mel": vectors[:, :8]}
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    paths = embedding_report(spaces, labels, speakers, identifiers, tmp_path / "plots", methods=("tsne",),
                             writer=writer, predictions=labels, title_prefix="cnn seed 0")
    writer.close()
    assert paths == [tmp_path / "plots" / "encoder_tsne.png", tmp_path / "plots" / "mel_tsne.png"]
    assert all(p.is_file() for p in paths)
    scores = json.loads((tmp_path / "plots" / "separation.json").read_text())
    assert set(scores) == {"encoder", "mel"} and set(scores["encoder"]["tsne"]) == {"digit", "speaker"}
    metadata = projector_files(tmp_path / "tb")["metadata.tsv"]
    assert len(metadata) == 2
    assert metadata[0].read_text().splitlines()[0] == "digit\tspeaker\tidentifier\tprediction"


def test_embedding_report_validates_before_projecting(blobs, tmp_path) -> None:
    vectors, labels, speakers = blobs
    start = time.perf_counter()
    with pytest.raises(ValueError, match="identifiers"):
        embedding_report({"encoder": vectors}, labels, speakers, ["x"], tmp_path)
    with pytest.raises(ValueError, match="umapp"):
        embedding_report({"encoder": vectors}, labels, speakers, list(labels), tmp_path, methods=("tsne", "umapp"))
    assert time.perf_counter() - start < 1.0
    assert not list(tmp_path.iterdir())
