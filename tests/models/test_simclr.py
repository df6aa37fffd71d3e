"""Scarce labels (data.labeled_speakers) and SimCLR's ways to use them: probe, joint training, supervised, fine-tune."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

import sdr_lightning.models.simclr as simclr_module
from sdr_lightning.audio.features import LogMel
from sdr_lightning.data.datamodule import SpokenDigitDataModule
from sdr_lightning.data.metadata import UNLABELED
from sdr_lightning.errors import ConfigError, DataError
from sdr_lightning.models.simclr import SimCLR, embedding_spread
from sdr_lightning.tasks.train import build, train
from tests.helpers import FeatureConsumer

PRESETS = ["study_simclr_george", "simclr_george_best", "supervised_george"]


def datamodule(data_dir: Path, cache_dir: Path, **kwargs) -> SpokenDigitDataModule:
    dm = SpokenDigitDataModule(dir=str(data_dir), cache_dir=str(cache_dir), batch_size=8, download=False, **kwargs)
    dm.setup("fit")
    return dm


def build_model(make_cfg, *overrides: str) -> SimCLR:
    return instantiate(make_cfg("model=simclr", *overrides).model, _recursive_=False, _convert_="all")


def waveform_batch(labels: list[int]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    lengths = torch.tensor([4000, 3000, 2500, 1800][: len(labels)])
    waveform = torch.randn(len(labels), int(lengths.max())) * (torch.arange(int(lengths.max())) < lengths[:, None])
    return {"waveform": waveform, "lengths": lengths, "label": torch.tensor(labels)}


# ---- data.labeled_speakers ----

def test_unlabeled_speakers_keep_their_clips_with_label_minus_one(synthetic_data: Path, tmp_path: Path) -> None:
    everyone = datamodule(synthetic_data, tmp_path)
    dm = datamodule(synthetic_data, tmp_path, labeled_speakers=["george"])
    train = dm.datasets["TRAIN"]
    assert len(train) == len(everyone.datasets["TRAIN"]) == 80  # every TRAIN speaker still lends audio
    for clip, label in zip(train.clips, train.labels):
        assert label == (clip.label if clip.speaker == "george" else UNLABELED)
    labels = torch.cat([batch["label"] for batch in dm.dataloader("TRAIN")])
    assert (labels == UNLABELED).sum() == 60 and (labels >= 0).sum() == 20
    for split in ("DEV", "TEST"):  # evaluation labels are untouched
        assert dm.datasets[split].labels == [c.label for c in dm.splits[split]]
    assert everyone.datasets["TRAIN"].labels == [c.label for c in everyone.splits["TRAIN"]]
    one_name = datamodule(synthetic_data, tmp_path, labeled_speakers="george")  # data.labeled_speakers=george
    assert one_name.datasets["TRAIN"].labels == train.labels


@pytest.mark.parametrize("speakers, message", [
    (["lucas"], r"data.labeled_speakers: speaker\(s\) \['lucas'\] are not in TRAIN"),
    (["nobody"], r"\['nobody'\] are not in TRAIN"),
    ([], r"data.labeled_speakers=\[\] leaves no labeled clip"),
])
def test_labeled_speakers_outside_train_is_one_clear_error(synthetic_data: Path, tmp_path: Path, speakers: list[str],
                                                           message: str) -> None:
    with pytest.raises(DataError, match=message):
        datamodule(synthetic_data, tmp_path, labeled_speakers=speakers)


def test_evaluation_speakers_still_never_train(synthetic_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="allow_speaker_overlap"):
        datamodule(synthetic_data, tmp_path, train_speakers=["george", "lucas"], labeled_speakers=["george"])


def test_george_labels_config(make_cfg) -> None:
    cfg = make_cfg("data=george_labels")
    assert list(cfg.data.labeled_speakers) == ["george"] and cfg.data.train_speakers is None
    assert make_cfg().data.labeled_speakers is None


# ---- losses and metrics skip unlabeled clips ----

@pytest.mark.parametrize("model", ["model=cnn", "model=simclr", "experiment=simclr_george_best"])
def test_unlabeled_batch_gives_finite_loss_and_no_metric_update(make_cfg, model: str) -> None:
    module = instantiate(make_cfg(model).model, _recursive_=False, _convert_="all").train()
    module.log = module.log_dict = lambda *args, **kwargs: None  # no trainer attached
    for labels in ([UNLABELED] * 4, [3, UNLABELED, 5, UNLABELED]):
        module.train_metrics.reset()
        loss = module.training_step(waveform_batch(labels), 0)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
        labeled = sum(label != UNLABELED for label in labels)
        assert int(module.train_metrics["acc"].tp.sum() + module.train_metrics["acc"].fn.sum()) == (
            labeled * (2 if "best" in model else 1))  # joint training counts both views


def test_supervised_loss_ignores_unlabeled_clips(make_cfg) -> None:
    module = build_model(make_cfg)
    logits = torch.randn(4, 10)
    labels = torch.tensor([1, UNLABELED, 2, UNLABELED])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    torch.testing.assert_close(module.supervised_loss(logits, labels), expected)
    torch.testing.assert_close(module.criterion(logits, labels), expected)  # ignore_index=-1 agrees
    assert module.supervised_loss(logits, torch.full((4,), UNLABELED)) == 0


def test_joint_training_sends_label_gradient_into_the_encoder_and_the_probe_does_not(make_cfg) -> None:
    batch = waveform_batch([1, 2, 3, 4])
    for weight, reaches in ((0.0, False), (1.0, True)):
        module = build_model(make_cfg, f"model.supervised_weight={weight}", "model.contrastive_weight=1").train()
        module.log = module.log_dict = lambda *args, **kwargs: None
        features, frames = module.featurizer(batch["waveform"], batch["lengths"])
        hidden = module.encoder(features, frames)
        logits = module.head(hidden if module.joint else hidden.detach())
        module.supervised_loss(logits, batch["label"]).backward()
        assert (module.encoder.stem[0].weight.grad is not None) == reaches


def test_bad_weights_are_config_errors(make_cfg) -> None:
    with pytest.raises(ConfigError, match="model.supervised_weight=-1"):
        build(make_cfg("model=simclr", "model.supervised_weight=-1"))
    with pytest.raises(ConfigError, match="both 0"):
        build(make_cfg("model=simclr", "model.supervised_weight=0", "model.contrastive_weight=0"))


def test_embedding_spread_detects_collapse() -> None:
    torch.manual_seed(0)
    assert embedding_spread(torch.randn(256, 64)).item() == pytest.approx(1.0, abs=0.05)
    assert embedding_spread(torch.ones(256, 64) + 1e-6 * torch.randn(256, 64)).item() < 0.01


# ---- the probe fits on labeled clips only ----

def test_probe_is_fit_on_labeled_clips_only(make_cfg, synthetic_data: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fitted = {}

    class Recording(simclr_module.LogisticRegression):
        def fit(self, x, y, *args, **kwargs):
            fitted["x"], fitted["y"] = x, y
            return super().fit(x, y, *args, **kwargs)

    monkeypatch.setattr(simclr_module, "LogisticRegression", Recording)
    module = build_model(make_cfg)
    dm = datamodule(synthetic_data, tmp_path, labeled_speakers=["george"])
    dm.setup("fit", model=module)
    module.fit_probe(dm)
    george = [c.label for c in dm.splits["TRAIN"] if c.speaker == "george"]
    assert len(fitted["y"]) == len(george) == 20 and sorted(fitted["y"]) == sorted(george)
    before = module.head.weight.clone()
    build_model(make_cfg, "model.refit_probe=false").fit_probe(dm)  # the trained head stays as it is
    assert torch.equal(module.head.weight, before)


# ---- the presets through the real config, checkpoints and fine-tuning ----

@pytest.mark.parametrize("preset", PRESETS)
def test_presets_fast_dev_run(make_cfg, preset: str) -> None:
    cfg = make_cfg(f"experiment={preset}", "debug=fast_dev_run", "data.batch_size=16")  # the presets ask 256
    assert 0.0 <= train(cfg) <= 1.0


def test_presets_compose_as_documented(make_cfg) -> None:
    best, supervised = make_cfg("experiment=simclr_george_best"), make_cfg("experiment=supervised_george")
    assert list(best.data.labeled_speakers) == ["george"] and best.data.train_speakers is None
    assert list(supervised.data.train_speakers) == ["george"] and supervised.model.contrastive_weight == 0
    assert best.model.augment == supervised.model.augment and best.model.views == supervised.model.views
    assert best.model.encoder == supervised.model.encoder
    assert list(best.model.augment.waveform) == ["speed", "pitch", "fade", "noise"]
    assert list(best.model.augment.spectrogram) == ["freq_warp", "crop"]
    study = make_cfg("experiment=study_simclr_george")
    assert study.model.supervised_weight == 0 and study.model.refit_probe and not study.model.get("augment")


def test_checkpoint_loads_weights_only_and_fine_tunes(make_cfg, tmp_path: Path) -> None:
    short = ("debug=limit", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
             "trainer.limit_test_batches=1", "logger=csv", "report.splits=[]", "data.batch_size=16")
    pretrain_dir = tmp_path / "pretrain"
    train(make_cfg("experiment=simclr_george_best", *short, f"paths.output_dir={pretrain_dir}"))
    checkpoint = json.loads((pretrain_dir / "metrics.json").read_text())["best_checkpoint"]
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert state["hyper_parameters"]["supervised_weight"] == 1.0
    model = SimCLR.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    assert model(torch.randn(1, 4000), torch.tensor([4000])).shape == (1, 10)

    tuned_dir = tmp_path / "tuned"
    cfg = make_cfg("experiment=supervised_george", *short, f"paths.output_dir={tuned_dir}",
                   f"model.pretrained={checkpoint}")
    tuned = build(cfg)[1]
    tuned.setup("fit")
    torch.testing.assert_close(tuned.encoder.state_dict(), model.encoder.state_dict())
    with pytest.raises(ConfigError, match="model.pretrained=.*encoder does not match"):
        build(make_cfg("experiment=supervised_george", f"model.pretrained={checkpoint}",
                       "model.encoder.channels=32"))[1].setup("fit")
    with pytest.raises(ConfigError, match="no such checkpoint"):
        build(make_cfg("model=simclr", "model.pretrained=/nowhere.ckpt"))[1].setup("fit")


def test_datamodule_with_labels_serves_featurized_train_clips(synthetic_data: Path, tmp_path: Path) -> None:
    dm = datamodule(synthetic_data, tmp_path, labeled_speakers=["george", "theo"])
    dm.setup("fit", model=FeatureConsumer(LogMel()))
    batch = next(iter(dm.dataloader("TRAIN")))
    assert "features" in batch and set(batch["label"].tolist()) <= {UNLABELED, *range(10)}
    assert sum(label != UNLABELED for label in dm.datasets["TRAIN"].labels) == 40


# ---- labels for the unlabeled speakers, by cluster (experiment=simclr_george_clusters) ----

def test_cluster_labels_give_each_cluster_its_own_class_by_the_clusters_evidence() -> None:
    from sdr_lightning.tasks.callbacks import cluster_labels

    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(10), 20)
    centres = rng.standard_normal((10, 16)) * 5
    embeddings = centres[truth] + rng.standard_normal((200, 16)) * 0.1
    # a weak classifier: per clip the true class gets a small edge under noise, so single clips are mostly wrong
    log_probs = rng.standard_normal((200, 10))
    log_probs[np.arange(200), truth] += 1.0
    log_probs[truth == 3, 5] += 1.2  # class 3's clips lean to 5 even more: but only one cluster may take 5
    assert (log_probs.argmax(1) == truth).mean() < 0.5 and (log_probs[truth == 3].mean(0).argmax() == 5)
    labels = cluster_labels(embeddings, log_probs, num_classes=10, seed=0)
    np.testing.assert_array_equal(labels, truth)
    with pytest.raises(ValueError, match="9 clips cannot form 10 clusters"):
        cluster_labels(embeddings[:9], log_probs[:9], num_classes=10)


def cluster_stage_two(make_cfg, stage_one: Path, out: Path, *overrides: str) -> DictConfig:
    return make_cfg("experiment=simclr_george_clusters", f"model.init_from={stage_one}", "debug=limit",
                    "trainer.max_epochs=2", "callbacks.model_checkpoint.save_top_k=-1", "trainer.deterministic=true",
                    "logger=csv", "report.splits=[]", f"paths.output_dir={out}", *overrides)


def test_simclr_george_clusters_labels_every_unlabeled_speaker_and_resumes_exactly(make_cfg, tmp_path: Path) -> None:
    short = ("debug=limit", "trainer.max_epochs=1", "logger=csv", "report.splits=[]")
    train(make_cfg("experiment=simclr_george_best", *short, f"paths.output_dir={tmp_path / 'one'}"))
    stage_one = tmp_path / "one" / "checkpoints" / "last.ckpt"
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(cluster_stage_two(make_cfg, stage_one, full, "callbacks.cluster_labels.every=0"))
    first = torch.load(full / "checkpoints" / "epoch_000.ckpt", weights_only=True)
    drawn = next(state for key, state in first["callbacks"].items() if "SpeakerClusterLabels" in key)["drawn"]
    by_speaker: dict[str, set[int]] = {}
    for identifier, label in drawn.items():
        by_speaker.setdefault(identifier.split("_")[1], set()).add(label)
    # george keeps his own labels; each other TRAIN speaker's 20 clips get all ten digits, one per cluster
    assert by_speaker == {speaker: set(range(10)) for speaker in ("jackson", "nicolas", "theo")}
    assert len(drawn) == 60
    metrics = (full / "csv").rglob("metrics.csv")
    assert any("pseudo_labels/accuracy" in path.read_text().splitlines()[0] for path in metrics)
    # resumed after epoch 0 (no redraw at epoch 1), the labels come back from the checkpoint: the same last weights
    train(cluster_stage_two(make_cfg, stage_one, resumed, "callbacks.cluster_labels.every=0",
                            f"ckpt_path={full / 'checkpoints' / 'epoch_000.ckpt'}"))
    last = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    got = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(got[key], last[key]) for key in last)


def test_cluster_labels_refuse_bad_values_loader_workers_and_a_missing_stage_one(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.init_from is not set"):
        train(make_cfg("experiment=simclr_george_clusters", "debug=fast_dev_run"))
    for key, value in (("every", -1), ("start", "soon")):
        with pytest.raises(ConfigError, match=f"callbacks.cluster_labels.{key}="):
            train(make_cfg("experiment=simclr_george_clusters", "model.init_from=x.ckpt",
                           f"callbacks.cluster_labels.{key}={value}"))
    with pytest.raises(ConfigError, match="set data.num_workers=0"):
        train(make_cfg("experiment=simclr_george_clusters", "model.init_from=x.ckpt", "debug=fast_dev_run",
                       "data.num_workers=1"))
