"""`python adapt.py`: a checkpoint adapted to your recordings (your voice, microphone, room), from unlabeled clips.

Every BatchNorm statistic of the model is re-estimated on the clips (models/adapt.py); the weights do not change. The
adapted checkpoint goes to `<run>/adapted/<name>.ckpt`, beside the run it came from, so predict.py, eval.py,
export.py, sdr-listen and demo.py take it as they take the run's own checkpoints. It is never one that training
resumes from (`<run>/checkpoints/` stays the run's own).
"""

from __future__ import annotations

import glob
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig

from sdr_lightning.audio.io import load_audio
from sdr_lightning.data.folder import NOT_CLIPS, parse_name
from sdr_lightning.errors import ConfigError, DataError, OutputError
from sdr_lightning.models.adapt import adapt_batchnorm, batchnorm_layers, waveform_batches
from sdr_lightning.tasks.checkpoint import load_checkpoint, read_checkpoint
from sdr_lightning.tasks.predict import find_audio

# fewer different digits than this among the clips' names gets a warning: one word's statistics are not a voice's
MIN_DIGITS = 5


def adapted_path(cfg: DictConfig, run_dir: Path, audio: str | list[str]) -> Path:
    """`cfg.out`, or `<run>/adapted/<the audio folder's name, or the file's without its suffix>.ckpt`."""
    if cfg.get("out"):
        return Path(cfg.out).expanduser()
    first = Path(audio[0] if isinstance(audio, list) else audio).expanduser()
    if first.is_dir():
        name = first.resolve().name
    elif glob.has_magic(first.name):
        name = first.parent.resolve().name
    else:  # one recording: call.wav -> call.ckpt
        name = first.resolve().stem
    return run_dir / "adapted" / f"{name or 'audio'}.ckpt"


def spoken_segments(waveform: torch.Tensor, sample_rate: int, long_s: float, segmenter: str) -> list[torch.Tensor]:
    """A clip as itself, or a recording longer than `long_s` seconds (someone counting 0-9 with pauses) as the
    speech segments the voice-activity detector finds in it (sequence/vad.py), each one clip."""
    if len(waveform) <= long_s * sample_rate:
        return [waveform]
    from sdr_lightning.sequence.vad import find_segments

    return [waveform[seg.start:seg.end] for seg in find_segments(waveform.numpy(), sample_rate, segmenter)]


def warn_about_few_words(paths: list[Path]) -> None:
    """Print a warning when the clips' names say they are few different digits ({digit}_...): statistics of one or
    two words skew the model (docs/adaptation.md: 30 clips of one digit cost 10 points where 30 of any digits gain)."""
    named = [parsed[0] for parsed in (parse_name(path.stem) for path in paths) if isinstance(parsed, tuple)]
    if len(named) * 2 < len(paths):
        return  # unlabeled takes: nothing to count
    digits = sorted(set(named))
    if len(digits) < MIN_DIGITS:
        print(f"warning: the clips' names give only {len(digits)} different digit(s) ({', '.join(map(str, digits))}). "
              f"Adapting to few words skews the model: record several different digits, ideally each of 0-9 two or "
              f"three times (docs/adaptation.md).")


def adapt(cfg: DictConfig) -> Path:
    """Load `cfg.ckpt_path`, re-estimate its BatchNorm statistics on the files of `cfg.audio` and write the adapted
    checkpoint; returns its path. Files that do not decode are listed and left out."""
    if float(cfg.prior) < 0 or int(cfg.min_clips) < 1:
        raise ConfigError(f"prior={cfg.prior}, min_clips={cfg.min_clips}: the prior counts clips (0 or more; 30 by "
                          "default) and min_clips must be at least 1.")
    audio = list(cfg.audio) if isinstance(cfg.audio, ListConfig) else str(cfg.audio)
    paths = [p for p in find_audio(audio) if p.suffix.lower() not in NOT_CLIPS]  # labels.csv etc.: not clips
    run = load_checkpoint(cfg.ckpt_path, cfg.get("run_dir"))
    model = run.model
    if model.needs_probe_refit:
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: a {type(model).__name__} is scored through a probe refit on its "
                          "TRAIN clips, which adaptation would leave behind; adapt a supervised run (model=cnn, "
                          "bcresnet, or a recipe built on them).")
    if not batchnorm_layers(model):
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: its model ({type(model.encoder).__name__}) has no BatchNorm "
                          "layer, so there are no statistics to adapt; adapt a CNN run (model=cnn, bcresnet, "
                          "experiment=robust_cnn_voices, ...).")
    run_dir = Path(cfg.run_dir).expanduser() if cfg.get("run_dir") else run.checkpoint.parent.parent
    out = adapted_path(cfg, run_dir, audio)
    if out.exists() and not cfg.get("overwrite"):
        raise ConfigError(f"{out} exists already; give another out=, or overwrite=true to replace it.")

    sample_rate = int(model.featurizer.sample_rate)
    decoded, failed = [], []
    for path in paths:
        try:
            decoded.append(load_audio(path, sample_rate))
        except DataError as err:
            decoded.append(None)
            failed.append(str(err))
    waveforms = [piece for wave in decoded if wave is not None
                 for piece in spoken_segments(wave, sample_rate, float(cfg.long_s), str(cfg.segmenter))]
    for error in failed:
        print(f"left out: {error}")
    if len(waveforms) < cfg.min_clips:
        raise DataError(f"audio={cfg.audio}: {len(waveforms)} clip(s) decoded, fewer than min_clips={cfg.min_clips}; "
                        "the statistics of so few clips are noise. Record more clips of the setting you adapt to "
                        "(different digits, unlabeled; about 30 are enough), or one recording of them with a pause "
                        f"after each (a recording over long_s={cfg.long_s} s counts its spoken segments).")
    warn_about_few_words([path for path, wave in zip(paths, decoded) if wave is not None])
    batch_size = int(cfg.batch_size or run.config.data.get("batch_size", 64))
    clips = adapt_batchnorm(model, waveform_batches(model, waveforms, batch_size, seed=int(cfg.seed)),
                            prior=float(cfg.prior))

    saved = read_checkpoint(run.checkpoint)
    adapted = {key: saved[key] for key in ("state_dict", "hyper_parameters", "pytorch-lightning_version")
               if key in saved}
    adapted["state_dict"] = {key: value.detach().clone() for key, value in model.state_dict().items()}
    adapted["adapted"] = {"from": str(run.checkpoint), "clips": clips, "layers": len(batchnorm_layers(model)),
                          "prior": float(cfg.prior),
                          "audio": [str(p) for p in (audio if isinstance(audio, list) else [audio])]}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        torch.save(adapted, partial)
        partial.replace(out)  # never a half-written checkpoint under the final name
    except OSError as err:
        raise OutputError(f"writing {out} failed: {err.strerror or err}; the run's own checkpoints are untouched. "
                          "Free some space, or give another out=.") from err
    print(f"{type(model).__name__}'s {adapted['adapted']['layers']} BatchNorm layers adapted to {clips} clip(s) "
          f"of {cfg.audio}\nadapted checkpoint: {out}\nuse it as any checkpoint: python predict.py ckpt_path={out} "
          f"audio=<...>" + (f" run_dir={run_dir}" if out.resolve().parent.parent != run_dir.resolve() else ""))
    return out
