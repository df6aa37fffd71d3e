import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import nn

from sdr_lightning.data.datamodule import collate_waveforms
from sdr_lightning.models.encoders.cnn import grouped_conv1d
from sdr_lightning.models.simclr import nt_xent

MODELS = ["linear", "cnn", "vit", "simclr", "bcresnet"]


@pytest.fixture(params=MODELS)
def model(request, make_cfg) -> pl.LightningModule:
    cfg = make_cfg(f"model={request.param}")
    return instantiate(cfg.model, _recursive_=False, _convert_="all").eval()


def variable_length_batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return collate_waveforms([(torch.randn(n), 0, 0) for n in (5000, 1200, 90, 3100)])


def test_forward_any_length(model: pl.LightningModule) -> None:
    batch = variable_length_batch()
    logits = model(batch["waveform"], batch["lengths"])
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    long = torch.randn(1, 8000 * 20)  # 20 s: far past the seed study's 150-position table
    assert model(long, torch.tensor([long.shape[1]])).shape == (1, 10)


def test_padding_does_not_change_a_clips_prediction(model: pl.LightningModule) -> None:
    batch = variable_length_batch()
    with torch.no_grad():
        together = model(batch["waveform"], batch["lengths"])
        for i, n in enumerate(batch["lengths"]):
            alone = model(batch["waveform"][i:i + 1, :n], n[None])
            torch.testing.assert_close(alone[0], together[i], rtol=1e-4, atol=1e-4)


def test_hparams_hold_plain_values(model: pl.LightningModule) -> None:
    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(plain(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (str, int, float, bool))

    assert all(plain(v) for v in model.hparams.values()), model.hparams


def test_nt_xent_prefers_matching_views() -> None:
    z = torch.randn(8, 16)
    assert nt_xent(z, z, 0.1) < nt_xent(z, torch.randn(8, 16), 0.1)


def test_cnn_members_are_independent_models_averaged(make_cfg) -> None:
    cfg = make_cfg("model=cnn", "model.encoder.members=3", "model.encoder.channels=16")
    model = instantiate(cfg.model, _recursive_=False, _convert_="all").eval()
    batch = variable_length_batch()
    with torch.no_grad():
        features, frames = model.featurizer(batch["waveform"], batch["lengths"])
        embedding = model.encoder(features, frames)
        members = model.head(embedding)  # (B, members, classes)
        logits = model(batch["waveform"], batch["lengths"])
    assert embedding.shape == (4, 3 * 2 * 16) and members.shape == (4, 3, 10)
    # the model's logits are the log of the members' mean probability
    torch.testing.assert_close(logits.exp(), members.softmax(-1).mean(1))
    # each member is its own CNN: member 0's loss gives no gradient to another member's weights
    model.train()
    model.head(model.encoder(features, frames))[:, 0].sum().backward()
    block = model.encoder.blocks[0][0].weight.grad  # grouped conv: output channels member-major
    assert block[:16].abs().sum() > 0 and block[16:].abs().sum() == 0
    assert model.head.weight.grad[1:].abs().sum() == 0


@pytest.mark.parametrize("dilation, groups, bias", [(1, 4, False), (8, 4, False), (2, 2, True), (4, 1, False)])
def test_grouped_conv1d_is_the_convolution(dilation: int, groups: int, bias: bool) -> None:
    conv = nn.Conv1d(16, 16, 3, padding=dilation, dilation=dilation, groups=groups, bias=bias)
    for length in (1, 7, 50):
        x = torch.randn(2, 16, length)
        torch.testing.assert_close(grouped_conv1d(x, conv), conv(x), rtol=1e-5, atol=1e-5)


def test_packed_cnn_gives_a_single_clip_what_its_batch_gives_it(make_cfg) -> None:
    # eval mode with one clip takes grouped_conv1d's path; in a batch (or in training) the library's kernel
    cfg = make_cfg("model=cnn", "model.encoder.members=4", "model.encoder.channels=16")
    model = instantiate(cfg.model, _recursive_=False, _convert_="all").eval()
    batch = variable_length_batch()
    with torch.no_grad():
        together = model(batch["waveform"], batch["lengths"])
        for i, length in enumerate(batch["lengths"]):
            alone = model(batch["waveform"][i:i + 1, :length], length[None])
            torch.testing.assert_close(alone, together[i:i + 1], rtol=1e-4, atol=1e-5)
            model.encoder.single_clip_matmul = False  # the library's grouped kernel, as benchmarks/ time it
            torch.testing.assert_close(model(batch["waveform"][i:i + 1, :length], length[None]), alone)
            model.encoder.single_clip_matmul = True


def test_cnn_members_training_step_averages_member_losses(make_cfg) -> None:
    cfg = make_cfg("model=cnn", "model.encoder.members=2", "model.encoder.channels=8", "model.label_smoothing=0")
    model = instantiate(cfg.model, _recursive_=False, _convert_="all")
    batch = variable_length_batch()
    batch["label"] = torch.tensor([1, 2, 3, 4])
    outputs = model.head(model.embed(batch))
    expected = torch.stack([torch.nn.functional.cross_entropy(outputs[:, m], batch["label"]) for m in range(2)]).mean()
    torch.testing.assert_close(model.supervised_loss(outputs, batch["label"]), expected)


def test_init_from_starts_a_run_from_another_runs_encoder_and_head(make_cfg, tmp_path) -> None:
    from sdr_lightning.errors import ConfigError

    def build(*overrides: str) -> pl.LightningModule:
        return instantiate(make_cfg("experiment=cnn_ensemble", *overrides).model, _recursive_=False, _convert_="all")

    trained = build()
    checkpoint = tmp_path / "robust.ckpt"
    torch.save({"state_dict": trained.state_dict()}, checkpoint)
    tuned = build(f"model.init_from={checkpoint}")
    assert not torch.equal(tuned.head.weight, trained.head.weight)  # a fresh model differs ...
    tuned.setup("fit")  # ... until fit starts from the checkpoint
    torch.testing.assert_close(tuned.encoder.state_dict(), trained.encoder.state_dict())
    torch.testing.assert_close(tuned.head.state_dict(), trained.head.state_dict())
    fresh = build(f"model.init_from={checkpoint}")
    fresh.setup("validate")  # evaluating a tuned run's checkpoint never reloads the one it started from
    assert not torch.equal(fresh.head.weight, trained.head.weight)

    with pytest.raises(ConfigError, match=r"model.init_from=.*its encoder does not match"):
        build(f"model.init_from={checkpoint}", "model.encoder.channels=32").setup("fit")
    with pytest.raises(ConfigError, match=r"model.init_from=/nowhere.ckpt: no such checkpoint"):
        build("model.init_from=/nowhere.ckpt").setup("fit")
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"model.init_from=.*bad.ckpt: not a readable checkpoint"):
        build(f"model.init_from={tmp_path / 'bad.ckpt'}").setup("fit")


def test_mix_batch_mixes_each_clip_with_its_partner_and_keeps_the_longer_length() -> None:
    from sdr_lightning.models.classifier import mix_batch

    torch.manual_seed(0)
    features, frames = torch.randn(6, 4, 9), torch.tensor([9, 3, 5, 9, 2, 7])
    mixed, mixed_frames, partner, weight = mix_batch(features, frames, alpha=0.4)
    assert 0.5 <= weight <= 1.0 and sorted(partner.tolist()) == list(range(6))
    torch.testing.assert_close(mixed, weight * features + (1 - weight) * features[partner])
    assert torch.equal(mixed_frames, torch.maximum(frames, frames[partner]))


def test_mixup_training_step_weighs_both_labels(make_cfg) -> None:
    cfg = make_cfg("model=cnn", "model.encoder.channels=8", "model.label_smoothing=0", "model.mixup=0.4")
    model = instantiate(cfg.model, _recursive_=False, _convert_="all").train()
    batch = variable_length_batch()
    batch["label"] = torch.tensor([1, 2, 3, 4])
    torch.manual_seed(3)
    loss = model._step(batch, model.train_metrics, model.train_loss, mixup=0.4)
    torch.manual_seed(3)
    from sdr_lightning.models.classifier import mix_batch

    features, frames, partner, weight = mix_batch(*model.augmented_features(batch), 0.4)
    logits = model.head(model.encoder(features, frames))
    ce = torch.nn.functional.cross_entropy
    expected = weight * ce(logits, batch["label"]) + (1 - weight) * ce(logits, batch["label"][partner])
    torch.testing.assert_close(loss, expected)


def test_consistency_loss_is_zero_for_equal_predictions_and_grows_apart() -> None:
    from sdr_lightning.models.classifier import consistency_loss

    logits = torch.randn(5, 3, 10)
    assert consistency_loss(logits, logits).abs() < 1e-6
    near, far = consistency_loss(logits, logits + 0.1 * torch.randn(5, 3, 10)), consistency_loss(logits, -logits)
    assert 0 < near < far <= torch.log(torch.tensor(2.0)) + 1e-6  # Jensen-Shannon is bounded by ln 2


def test_consistency_step_adds_the_divergence_between_a_clip_and_its_copy(make_cfg) -> None:
    from sdr_lightning.models.classifier import consistency_loss

    cfg = make_cfg("model=cnn", "model.encoder.channels=8", "model.label_smoothing=0", "model.consistency=3")
    model = instantiate(cfg.model, _recursive_=False, _convert_="all").train()
    torch.manual_seed(0)
    features, frames = torch.randn(4, 40, 30), torch.tensor([30, 12, 20, 7])
    batch = {"features": features + 0.5 * torch.randn(4, 40, 30), "feature_lengths": frames,
             "clean_features": features, "clean_feature_lengths": frames, "label": torch.tensor([1, 2, 3, 4]),
             "augmented": torch.ones(4, dtype=torch.bool)}
    torch.manual_seed(1)
    loss = model._step(batch, model.train_metrics, model.train_loss)
    torch.manual_seed(1)
    both = torch.cat([batch["features"], features])
    outputs = model.head(model.encoder(both, torch.cat([frames, frames])))
    labels = batch["label"].repeat(2)
    expected = model.supervised_loss(outputs, labels) + 3 * consistency_loss(*outputs.chunk(2))
    torch.testing.assert_close(loss, expected)
    model.eval()  # evaluation scores the served clips only
    torch.testing.assert_close(model._step(batch, model.val_metrics, model.val_loss),
                               model.supervised_loss(model.head(model.encoder(batch["features"], frames)),
                                                     batch["label"]))


def test_vit_conv_stem_sees_only_each_clips_own_frames(make_cfg) -> None:
    cfg = make_cfg("model=vit", "model.encoder.stem_layers=2", "model.encoder.stem_channels=32")
    model = instantiate(cfg.model, _recursive_=False, _convert_="all").eval()
    assert len(model.encoder.stem) == 2
    test_padding_does_not_change_a_clips_prediction(model)
    plain = instantiate(make_cfg("model=vit").model, _recursive_=False, _convert_="all")
    assert len(plain.encoder.stem) == 0  # the default has no stem: earlier checkpoints load as they were
    from sdr_lightning.config import instantiate_part
    from sdr_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="stem_layers=2: use 0"):
        instantiate_part("model", make_cfg("model=vit", "model.encoder.stem_layers=2",
                                           "model.encoder.patch_freq=8").model, _recursive_=False)
