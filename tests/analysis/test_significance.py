import numpy as np
import pytest
from scipy import stats

from sdr_lightning.analysis.predictions import Predictions, write_predictions
from sdr_lightning.analysis.significance import BootstrapResult, accuracy_ci, main, paired_bootstrap


def a_beats_b_on(k: int, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """A and B agree (some clips right, some wrong) except on k clips where only A is right."""
    a = np.arange(n) % 3 != 0
    b = a.copy()
    b[np.flatnonzero(a)[:k]] = False
    return a, b


@pytest.mark.parametrize("k", [5, 15, 40])
def test_p_value_and_interval_match_the_binomial(k: int) -> None:
    n = 500
    a, b = a_beats_b_on(k, n)
    result = paired_bootstrap(a, b, resamples=20_000, seed=1)
    assert result.n == n and result.resamples == 20_000
    assert result.difference == pytest.approx(k / n)
    assert result.accuracy_a - result.accuracy_b == pytest.approx(k / n)
    # Each resample's difference times n counts the A-only clips drawn: Binomial(n, k/n); shifted test: >= 2k.
    assert result.p_value == pytest.approx(stats.binom.sf(2 * k - 1, n, k / n), abs=0.01)
    assert result.ci_low == pytest.approx(stats.binom.ppf(0.025, n, k / n) / n, abs=1 / n + 1e-12)
    assert result.ci_high == pytest.approx(stats.binom.ppf(0.975, n, k / n) / n, abs=1 / n + 1e-12)


def test_identical_systems_are_not_significant() -> None:
    a = np.arange(200) % 4 != 0
    result = paired_bootstrap(a, a.copy())
    assert result.p_value == 1.0
    assert result.difference == 0.0
    assert (result.ci_low, result.ci_high) == (0.0, 0.0)


def test_much_better_b_gives_p_near_one() -> None:
    b, a = a_beats_b_on(60)
    assert paired_bootstrap(a, b).p_value > 0.99


def test_a_always_right_b_always_wrong() -> None:
    result = paired_bootstrap(np.ones(50, bool), np.zeros(50, bool))
    assert result == BootstrapResult(accuracy_a=1.0, accuracy_b=0.0, difference=1.0, p_value=0.0,
                                     ci_low=1.0, ci_high=1.0, resamples=10_000, n=50)


def test_accepts_zero_one_integers() -> None:
    a, b = a_beats_b_on(10, 100)
    assert paired_bootstrap(a.astype(int), b.astype(int)) == paired_bootstrap(a, b)


@pytest.mark.parametrize("a, b, message", [
    (np.ones(5, bool), np.ones(4, bool), "5 clips but correct_b has 4"),
    (np.ones(0, bool), np.ones(0, bool), "correct_a is empty"),
    (np.ones((2, 3), bool), np.ones((2, 3), bool), "one-dimensional"),
    (np.array([0, 1, 2]), np.array([0, 1, 1]), "other than 0 and 1"),
])
def test_rejects_bad_input(a: np.ndarray, b: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(a, b)


def test_rejects_bad_settings() -> None:
    a = np.ones(5, bool)
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap(a, a, resamples=0)
    with pytest.raises(ValueError, match="level"):
        accuracy_ci(a, level=95)
    with pytest.raises(ValueError, match="correct is empty"):
        accuracy_ci(np.array([], bool))


def test_same_seed_same_result_other_seed_differs() -> None:
    a, b = a_beats_b_on(3, 300)  # p about 0.08: different draws give visibly different counts
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    assert paired_bootstrap(a, b, seed=3).p_value != paired_bootstrap(a, b, seed=4).p_value
    assert accuracy_ci(a, seed=3) == accuracy_ci(a, seed=3)


@pytest.mark.parametrize("accuracy", [0.6, 0.9])
def test_accuracy_ci_close_to_normal_approximation(accuracy: float) -> None:
    n = 400
    correct = np.arange(n) < accuracy * n
    low, high = accuracy_ci(correct)
    half = 1.96 * np.sqrt(accuracy * (1 - accuracy) / n)
    assert low < accuracy < high
    assert low == pytest.approx(accuracy - half, abs=0.01)
    assert high == pytest.approx(accuracy + half, abs=0.01)


def test_accuracy_ci_of_perfect_system_is_a_point() -> None:
    assert accuracy_ci(np.ones(30, bool)) == (1.0, 1.0)


def test_agrees_with_resampling_clip_indices() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.random(200) < 0.85, rng.random(200) < 0.80
    d = a.astype(int) - b.astype(int)
    deltas = d[rng.integers(0, d.size, size=(20_000, d.size))].mean(axis=1)
    result = paired_bootstrap(a, b, resamples=20_000)
    assert result.p_value == pytest.approx(np.mean(deltas >= 2 * d.mean() - 1e-12), abs=0.01)
    assert result.ci_low == pytest.approx(np.percentile(deltas, 2.5), abs=1.5 / d.size)
    assert result.ci_high == pytest.approx(np.percentile(deltas, 97.5), abs=1.5 / d.size)


def write_run(folder, identifiers, labels, predicted) -> None:
    probabilities = np.eye(10)[predicted]
    write_predictions(Predictions(list(identifiers), ["lucas"] * len(labels), np.asarray(labels), probabilities),
                      folder / "reports" / "test" / "predictions.csv")


def test_command_line_matches_clips_by_identifier(tmp_path, capsys) -> None:
    a, b = a_beats_b_on(20, 200)
    labels = np.arange(200) % 10
    identifiers = [f"{d}_lucas_{i}" for i, d in enumerate(labels)]
    write_run(tmp_path / "a", identifiers, labels, np.where(a, labels, (labels + 1) % 10))
    shuffled = np.random.default_rng(0).permutation(200)  # B lists the same clips in another order
    predicted_b = np.where(b, labels, (labels + 1) % 10)
    write_run(tmp_path / "b", [identifiers[i] for i in shuffled], labels[shuffled], predicted_b[shuffled])
    main([str(tmp_path / "a"), str(tmp_path / "b")])
    expected = paired_bootstrap(a, b)
    out = capsys.readouterr().out
    assert f"A - B = {expected.difference:+.4f}" in out and f"{expected.p_value:.4f}" in out


def test_command_line_refuses_different_clips(tmp_path) -> None:
    write_run(tmp_path / "a", ["x", "y"], [1, 2], [1, 2])
    write_run(tmp_path / "b", ["x", "z"], [1, 2], [1, 2])
    with pytest.raises(SystemExit, match="do not cover the same clips"):
        main([str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="no reports/test/predictions.csv"):
        main([str(tmp_path), str(tmp_path / "b")])
