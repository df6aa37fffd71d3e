"""Knowledge distillation (`model.teacher`): the loss, a trained teacher steering a student, and bad teachers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sdr_lightning.config import instantiate_part
from sdr_lightning.errors import ConfigError
from sdr_lightning.models.classifier import combine_members, distillation_loss
from tests.helpers import train_tiny
from tests.models.test_models import variable_length_batch


def test_distillation_loss_is_the_scaled_kl_to_the_teacher() -> None:
    student, teacher = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.5]])
    assert float(distillation_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    p = (teacher / 2).softmax(-1)
    expected = float((p * (p.log() - (student / 2).log_softmax(-1))).sum()) * 4
    assert float(distillation_loss(student, teacher, 2.0)) == pytest.approx(expected, rel=1e-5)


def build(make_cfg, *overrides: str):
    return instantiate_part("model", make_cfg(*overrides).model, _recursive_=False)


def step_and_replay(student, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training step's loss, then, with the same augmentation draw, the student's logits and each teacher's
    (teachers, B, classes) on those features: what the loss should have been computed from."""
    torch.manual_seed(4)
    loss = student._step(batch, student.train_metrics, student.train_loss)
    torch.manual_seed(4)
    features, frames = student.augmented_features(batch)
    logits = student.classify(student.encoder(features, frames))
    with torch.no_grad():
        # the teachers' raw logits: their calibration temperature stays out of distillation
        targets = torch.stack([combine_members(t.head(t.encoder(features, frames))) for t in student.teachers])
    return loss, logits, targets


def test_a_student_learns_the_teachers_predictions_on_unlabeled_clips(make_cfg, cnn_run: dict) -> None:
    teacher_ckpt = cnn_run["best_checkpoint"]
    student = build(make_cfg, "model=vit", f"model.teacher={teacher_ckpt}", "model.distill_weight=0.7",
                    "model.distill_temperature=3")
    assert student.teachers == ()  # loaded when fit starts, not when the model is built (eval never loads it)
    student.setup("fit")
    (teacher,) = student.teachers
    assert type(teacher.encoder).__name__ == "TemporalCNN" and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("_teacher") or "teacher." in k for k in student.state_dict())  # never saved
    student.train()
    batch = variable_length_batch()
    batch["label"] = torch.tensor([1, -1, -1, 2])  # two unlabeled clips: only the teacher speaks for them
    loss, logits, (targets,) = step_and_replay(student, batch)
    cross_entropy = student.supervised_loss(logits, batch["label"])
    expected = 0.3 * cross_entropy + 0.7 * distillation_loss(logits, targets, 3.0)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.encoder.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    student.eval()  # no teacher term outside training
    torch.testing.assert_close(student._step(batch, student.val_metrics, student.val_loss),
                               student.supervised_loss(student.classify(student.embed(batch)), batch["label"]))


def test_a_distilled_run_trains_and_its_checkpoint_stands_alone(make_cfg, cnn_run: dict, synthetic_data: Path,
                                                                tmp_path: Path) -> None:
    from sdr_lightning.tasks.checkpoint import load_checkpoint

    metrics = train_tiny(tmp_path / "student", synthetic_data, "model=cnn", "model.encoder.channels=16",
                         f"model.teacher={cnn_run['best_checkpoint']}")
    assert math.isfinite(metrics["val/acc"])
    ckpt = Path(metrics["best_checkpoint"])
    Path(cnn_run["best_checkpoint"]).rename(tmp_path / "moved.ckpt")  # the teacher gone: the student still loads
    try:
        run = load_checkpoint(ckpt)
        assert run.model.teachers == () and run.model.hparams.teacher
    finally:
        (tmp_path / "moved.ckpt").rename(cnn_run["best_checkpoint"])


def test_several_teachers_teach_their_averaged_probabilities(make_cfg, cnn_run: dict) -> None:
    two = torch.tensor([[[2.0, 0.0, -1.0]], [[-1.0, 0.0, 3.0]]])  # two teachers, one clip
    mean = 2 * (two / 2).softmax(-1).mean(0).log()  # logits whose softened prediction is the teachers' mean
    student = torch.tensor([[0.5, 0.2, 0.1]])
    averaged = float(distillation_loss(student, mean, 2.0))
    assert float(distillation_loss(student, two, 2.0)) == pytest.approx(averaged, rel=1e-4)

    first = Path(cnn_run["best_checkpoint"])
    second = first.with_name("halved.ckpt")  # a second teacher in the same run folder: its weights halved
    state = torch.load(first, map_location="cpu", weights_only=True)
    state["state_dict"] = {k: v * 0.5 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, second)
    try:
        student = build(make_cfg, "model=vit", f"model.teacher=[{first},{second}]")
        student.setup("fit")
    finally:
        second.unlink()
    assert len(student.teachers) == 2
    student.train()
    batch = variable_length_batch()
    loss, logits, targets = step_and_replay(student, batch)
    assert not torch.allclose(targets[0], targets[1])  # two different teachers
    expected = 0.5 * student.supervised_loss(logits, batch["label"]) + 0.5 * distillation_loss(logits, targets, 2.0)
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ConfigError, match=r"model.teacher=/nowhere.ckpt: .*no such checkpoint"):
        build(make_cfg, "model=cnn", f"model.teacher=[{first},/nowhere.ckpt]").setup("fit")


def test_simclr_distils_into_its_trained_head(make_cfg, cnn_run: dict) -> None:
    student = build(make_cfg, "model=simclr", "data=george_labels", "model.supervised_weight=1",
                    "model.contrastive_weight=0", "model.refit_probe=false",
                    f"model.teacher={cnn_run['best_checkpoint']}")
    student.setup("fit")
    student.train()
    batch = variable_length_batch()
    batch["label"] = torch.tensor([-1, -1, -1, -1])  # no label at all: the teacher's term alone trains the head
    loss = student.training_step(batch, 0)
    assert float(loss.detach()) > 0 and loss.requires_grad
    with pytest.raises(ConfigError, match=r"model.teacher is set but model.supervised_weight=0"):
        build(make_cfg, "model=simclr", f"model.teacher={cnn_run['best_checkpoint']}")


def test_a_teacher_it_cannot_use_is_one_clear_error(make_cfg, cnn_run: dict, tmp_path: Path) -> None:
    teacher_ckpt = cnn_run["best_checkpoint"]
    with pytest.raises(ConfigError, match=r"model.teacher=.*featurizer differs from this run's in n_mels \(n_mels="):
        build(make_cfg, "model=vit", f"model.teacher={teacher_ckpt}", "model.featurizer.n_mels=32").setup("fit")
    with pytest.raises(ConfigError, match=r"model.teacher=/nowhere.ckpt: .*no such checkpoint"):
        build(make_cfg, "model=cnn", "model.teacher=/nowhere.ckpt").setup("fit")
    with pytest.raises(ConfigError, match=r"model.distill_weight=0; with model.teacher set"):
        build(make_cfg, "model=cnn", f"model.teacher={teacher_ckpt}", "model.distill_weight=0")
    with pytest.raises(ConfigError, match=r"model.distill_temperature=-1;"):
        build(make_cfg, "model=cnn", f"model.teacher={teacher_ckpt}", "model.distill_temperature=-1")
