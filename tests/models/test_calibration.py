from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from sdr_lightning.models.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE, confidence_gate, fit_temperature
from sdr_lightning.models.classifier import combine_members
from sdr_lightning.tasks.checkpoint import load_checkpoint, read_checkpoint


def calibrated_sample(n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from the softmax of those logits: calibrated by construction (T = 1)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=generator) * 3
    labels = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("scale", [0.25, 1.0, 4.0])
def test_the_fitted_temperature_undoes_a_scaling_of_calibrated_logits(scale: float) -> None:
    logits, labels = calibrated_sample()
    assert fit_temperature(logits * scale, labels) == pytest.approx(scale, rel=0.1)


def test_no_clips_or_no_signal_give_a_finite_temperature() -> None:
    assert fit_temperature(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long)) == 1.0
    # every clip right with logits that barely differ: the loss falls as T shrinks, and T stops at its bound
    logits = torch.zeros(50, 10)
    logits[:, 3] = 1e-3
    assert fit_temperature(logits, torch.full((50,), 3)) == MIN_TEMPERATURE
    # every clip wrong: the flattest softmax is best, and T stops at the other bound
    assert fit_temperature(logits, torch.full((50,), 4)) == MAX_TEMPERATURE


def test_a_trained_run_saves_the_temperature_of_its_weights(cnn_run: dict) -> None:
    """The checkpoint holds the temperature fitted on the run's validation clips; inference divides the logits by
    it and predicts the same digits."""
    saved = read_checkpoint(Path(cnn_run["best_checkpoint"]))
    temperature = float(saved["state_dict"]["calibration_temperature"])
    assert temperature > 0 and temperature != 1.0
    model = load_checkpoint(cnn_run["best_checkpoint"]).model
    assert float(model.calibration_temperature) == temperature
    wave, lengths = torch.randn(3, 4000), torch.tensor([4000, 3000, 2500])
    with torch.no_grad():
        calibrated = model(wave, lengths)
        raw = combine_members(model.head(model.encoder(*model.featurizer(wave, lengths))))
    torch.testing.assert_close(calibrated * temperature, raw)
    assert torch.equal(calibrated.argmax(-1), raw.argmax(-1))


def test_a_checkpoint_from_before_calibration_loads_with_temperature_one(make_cfg) -> None:
    model = instantiate(make_cfg("model=cnn", "model.encoder.channels=16").model, _recursive_=False,
                        _convert_="all")
    state = model.state_dict()
    del state["calibration_temperature"], state["digit_gate"]  # as saved before calibration existed
    model.calibration_temperature.fill_(2.0)
    model.digit_gate.fill_(0.5)
    model.load_state_dict(state)  # strict: the missing keys are filled, not an error
    assert float(model.calibration_temperature) == 1.0 and float(model.digit_gate) == 0.0


def test_validation_fits_the_temperature_only_while_training(make_cfg) -> None:
    model = instantiate(make_cfg("model=cnn", "model.encoder.channels=16").model, _recursive_=False,
                        _convert_="all")
    logits, labels = calibrated_sample(500)

    class Stub:  # what calibrate() reads off the trainer
        def __init__(self, fn: str, sanity: bool = False) -> None:
            self.state, self.sanity_checking, self.world_size = type("S", (), {"fn": fn})(), sanity, 1
            self.callbacks = []

    gate = confidence_gate(logits * 0.5, labels)
    assert 0 < gate < 1
    for stub, fitted in ((Stub("validate"), False), (Stub("fit", sanity=True), False), (Stub("fit"), True)):
        model._trainer = stub
        model.log = lambda *args, **kwargs: None
        model.calibration_temperature.fill_(1.0)
        model.digit_gate.fill_(0.0)
        model._calibration_batches = [(logits[:250] * 0.5, labels[:250]), (logits[250:] * 0.5, labels[250:])]
        model.calibrate()
        assert float(model.calibration_temperature) == (pytest.approx(0.5, rel=0.15) if fitted else 1.0)
        assert float(model.digit_gate) == (pytest.approx(gate) if fitted else 0.0)
        assert model._calibration_batches == []
    model.hparams.calibrate = False  # the temperature stays as it is; the gate is still fitted
    model.digit_gate.fill_(0.0)
    model._calibration_batches = [(logits * 0.5, labels)]
    model.calibrate()
    assert float(model.calibration_temperature) == pytest.approx(0.5, rel=0.15)
    assert float(model.digit_gate) == pytest.approx(gate)


def test_the_gate_is_a_low_quantile_of_the_right_answers_confidence() -> None:
    logits = torch.zeros(201, 10)
    logits[:, 0] = torch.linspace(0, 5, 201)  # top probabilities rising from 0.1 towards 0.94, all for digit 0
    right = torch.zeros(201, dtype=torch.long)
    top = logits.softmax(-1).max(-1).values
    assert confidence_gate(logits, right, quantile=0.1) == pytest.approx(float(top[20]))
    assert confidence_gate(logits, torch.ones(201, dtype=torch.long)) == 0.0  # no right answer: no gate


@pytest.mark.parametrize("callbacks", ["ema", "swa"])
def test_a_weight_average_saves_the_values_fitted_on_its_own_predictions(callbacks: str, synthetic_data: Path,
                                                                         tmp_path: Path) -> None:
    """With callbacks=ema or swa, validation and checkpoints use the average's weights and buffers: the checkpoint
    holds the temperature fitted on the last validation pass (logged as val/temperature), not the average's own copy
    of an older value."""
    import csv

    from tests.helpers import train_tiny

    metrics = train_tiny(tmp_path, synthetic_data, "model=cnn", "model.encoder.channels=16", f"callbacks={callbacks}",
                         "trainer.max_epochs=3", "callbacks.model_checkpoint.monitor=null",
                         *(["callbacks.swa.epochs=1"] if callbacks == "swa" else []))
    state = read_checkpoint(Path(metrics["best_checkpoint"]))["state_dict"]
    with next(tmp_path.rglob("metrics.csv")).open() as handle:
        logged = [float(row["val/temperature"]) for row in csv.DictReader(handle) if row.get("val/temperature")]
    assert len(logged) == 3
    assert float(state["calibration_temperature"]) == pytest.approx(logged[-1])
