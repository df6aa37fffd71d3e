"""The robustness protocol's table for a set of checkpoints: TEST clean and under every condition of the suite
(data/conditions.py), the synthetic espeak-ng voices, and leave-one-speaker-out sweeps, beside the targets.

    python benchmarks/robustness.py cnn=outputs/runs/<a>/checkpoints/<best>.ckpt robust=outputs/runs/<b>/... \
        [--voices .voices/eval] [--loso cnn=outputs/multirun/<sweep>] [--loso-suite] [--folds 0,1,3,4] \
        [--loso-checkpoint last] [--adapt 30 [--adapt-prior 30]] [--clip-norm 0.1] \
        [--suite robustness | --suite white_20db,reverb] [--split TEST] [--threads 2] [--out f.json]

A name=path pair names a column (a bare path is named by its run folder); a name given several times (the seeds of
one recipe) makes one column of their mean ± std. --loso takes a sweep of the six
`data.fold` jobs (python train.py -m experiment=... data.fold=0,1,2,3,4,5) and reports their TEST mean and worst
fold; with --loso-suite, each fold's checkpoint (its metrics.json's best_checkpoint) also goes under the suite on
its held-out speaker (rows "LOSO <condition>": the mean over the folds, and the suite mean's worst fold; each fold's
figures go to --out as "loso_folds"). --folds 0,1,3,4 keeps those folds only: the four whose held-out speaker is
not a reference TEST speaker, where design decisions are made. --loso-checkpoint last scores each fold's last.ckpt
instead of the checkpoint its metrics.json records (the end of training against the best on the validation speaker,
for an old sweep). --suite takes a suite's name or condition names,
comma-separated (--suite white_20db,reverb). --adapt N re-estimates the model's BatchNorm statistics on N unlabeled
clips of each scored set before scoring it (test-time adaptation, python adapt.py; 0: all of its clips), blended
with the checkpoint's own as if from --adapt-prior clips (30, adapt.py's default; 0: AdaBN alone). --clip-norm W
scores a CNN with that clip-norm weight (model.clip_norm: each clip's own BatchNorm statistics blended in at
inference) in place of the checkpoint's own, e.g. a run trained before the option. The voices
come from `python -m sdr_lightning.data.voices` (their
eval set: voices no recipe trains on).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from _common import configure, find_data, machine, markdown_table, write_json  # benchmarks/_common.py

from sdr_lightning.audio.io import load_audio
from sdr_lightning.data import conditions
from sdr_lightning.data.folder import NOT_CLIPS
from sdr_lightning.models.adapt import adapt_batchnorm, dataset_batches, waveform_batches
from sdr_lightning.models.normalization import set_clip_weight
from sdr_lightning.tasks.checkpoint import load_for_inference, run_datamodule
from sdr_lightning.tasks.evaluate import predict_folder, predict_split
from sdr_lightning.tasks.predict import find_audio

# issue 15's targets, by row (TEST unless said otherwise)
TARGETS = {"clean": ">= 0.97", "white_20db": ">= 0.95", "white_10db": ">= 0.90", "white_5db": ">= 0.80",
           "telephone": ">= 0.92", "reverb": ">= 0.95", "quiet": ">= 0.95", "pauses": ">= 0.95",
           "resampled_16k": ">= 0.95", "resampled_44k": ">= 0.95", "higher_voice": ">= 0.90",
           "woman_voice": ">= 0.90", "espeak voices": ">= 0.90", "LOSO mean": ">= 0.93", "LOSO worst fold": ">= 0.85"}


def named(items: list[str]) -> dict[str, list[Path]]:
    """name=path arguments by name, in order; a bare path is named by its run folder."""
    out: dict[str, list[Path]] = {}
    for item in items:
        name, _, path = item.rpartition("=")
        path = Path(path)
        out.setdefault(name or (path.parent.parent.name if path.suffix == ".ckpt" else path.name), []).append(path)
    return out


def cell(values: list[float]) -> str:
    """One figure, or the mean ± std (n) of several runs' figures."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f} (n={len(values)})"


def parse_suite(text: str) -> str | list[str]:
    """--suite: a suite's name, or condition names separated by commas; one clear error naming the unknown ones."""
    suite = text if text in conditions.SUITES else [name.strip() for name in text.split(",") if name.strip()]
    if not suite:
        raise SystemExit(f"error: --suite {text!r} names no condition; give a suite ({', '.join(conditions.SUITES)}) "
                         "or condition names")
    try:
        conditions.suite(suite)
    except ValueError as error:
        raise SystemExit(f"error: --suite {text}: {error}") from None
    return suite


class Adaptation(NamedTuple):
    """--adapt and --adapt-prior: BatchNorm statistics from `clips` of each scored set (0: all), blended with the
    checkpoint's own as if they came from `prior` clips (adapt.py's `prior`)."""

    clips: int
    prior: float = 30.0


def clean_accuracy(checkpoint: Path, split: str, data: Path, adapt: Adaptation | None = None,
                   clip_norm: float | None = None) -> float:
    run = load_for_inference(checkpoint, data_dir=str(data))
    datamodule = run_datamodule(run, data_dir=str(data))
    return Scorer(run.model, datamodule, adapt, clip_norm).accuracy(split)


class Scorer:
    """A model's accuracy on a split, or on a split under a condition; with `adapt`, its BatchNorm statistics first
    re-estimated on that many of the same set's clips, from the checkpoint's each time (models/adapt.py: test-time
    adaptation, which sees the scored setting's clips without their labels). `clip_norm`: the encoder's clip-norm
    weight instead of the checkpoint's (models/normalization.py)."""

    def __init__(self, model: torch.nn.Module, datamodule, adapt: Adaptation | None = None,
                 clip_norm: float | None = None) -> None:
        if adapt is not None and model.needs_probe_refit:
            raise SystemExit(f"error: --adapt: a {type(model).__name__} is scored through a probe refit on its TRAIN "
                             "clips, which adaptation would leave behind; adapt supervised runs only")
        if clip_norm is not None and not set_clip_weight(model, clip_norm):
            raise SystemExit(f"error: --clip-norm: {type(model.encoder).__name__} has no clip-norm BatchNorm "
                             "(TemporalCNN encoders only)")
        self.model, self.datamodule, self.adapt = model, datamodule, adapt
        self.state = {key: value.clone() for key, value in model.state_dict().items()}

    def accuracy(self, split: str, dataset=None) -> float:
        if self.adapt is not None:
            self.model.load_state_dict(self.state)
            batches = dataset_batches(self.datamodule.datasets[split] if dataset is None else dataset,
                                      self.datamodule.hparams.batch_size, self.adapt.clips)
            adapt_batchnorm(self.model, batches, self.adapt.prior)
        return predict_split(self.model, self.datamodule, split, dataset=dataset).accuracy

    def folder_accuracy(self, folder: Path) -> float:
        if self.adapt is not None:
            self.model.load_state_dict(self.state)
            paths = sorted((p for p in find_audio(str(folder)) if p.suffix.lower() not in NOT_CLIPS), key=str)
            chosen = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0)).tolist()
            chosen = chosen[:self.adapt.clips] if self.adapt.clips else chosen
            rate = int(self.model.featurizer.sample_rate)  # only the chosen clips are decoded
            waveforms = [load_audio(paths[i], rate) for i in chosen]
            adapt_batchnorm(self.model, waveform_batches(self.model, waveforms, self.datamodule.hparams.batch_size),
                            self.adapt.prior)
        return predict_folder(self.model, folder).accuracy


def score(checkpoint: Path, split: str, voices: Path | None, suite: str | list[str], data: Path,
          adapt: Adaptation | None = None, clip_norm: float | None = None) -> dict[str, float]:
    run = load_for_inference(checkpoint, data_dir=str(data))
    datamodule = run_datamodule(run, data_dir=str(data))
    scorer = Scorer(run.model, datamodule, adapt, clip_norm)
    figures = {"clean": scorer.accuracy(split)}
    for condition in conditions.suite(suite):
        dataset = datamodule.condition_dataset(split, condition)
        figures[condition.name] = scorer.accuracy(split, dataset)
        print(f"  {checkpoint.parent.parent.name}: {condition.name} {figures[condition.name]:.4f}", flush=True)
    figures["suite mean"] = float(np.mean([figures[c.name] for c in conditions.suite(suite)]))
    if voices is not None:
        figures["espeak voices"] = scorer.folder_accuracy(voices)
    return figures


def fold_jobs(sweep: Path, folds: list[str] | None = None) -> dict[str, tuple[Path, dict]]:
    """The sweep's fold jobs: data.fold -> (job folder, its metrics.json); only `folds` when given."""
    jobs = {}
    for metrics_file in sorted(sweep.glob("*/metrics.json")):
        overrides = metrics_file.parent / ".hydra" / "overrides.yaml"
        lines = overrides.read_text().split("\n") if overrides.is_file() else []
        fold = next((line.split("=")[1] for line in lines if "data.fold=" in line), metrics_file.parent.name)
        jobs[fold] = (metrics_file.parent, json.loads(metrics_file.read_text()))
    if not jobs:
        raise SystemExit(f"error: no fold job with metrics.json under {sweep}")
    if folds is not None:
        missing = [fold for fold in folds if fold not in jobs]
        if missing:
            raise SystemExit(f"error: --folds {','.join(folds)}: {sweep} has no job for fold(s) {', '.join(missing)} "
                             f"(it has {', '.join(sorted(jobs))})")
        jobs = {fold: jobs[fold] for fold in folds}
    return jobs


def fold_checkpoint(fold: str, job: Path, metrics: dict, which: str = "recorded") -> Path:
    """A fold job's checkpoint: the one its metrics.json records (found in the job's checkpoints/ after a move), or
    its last.ckpt (which="last": the end of training, whatever the validation speaker preferred)."""
    if which == "last":
        checkpoint = job / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file():
            raise SystemExit(f"error: fold {fold} ({job}): no checkpoints/last.ckpt; --loso-checkpoint last needs "
                             "the sweep's last checkpoints (or use --loso-checkpoint recorded)")
        return checkpoint
    recorded = Path(str(metrics.get("best_checkpoint", "")))
    checkpoint = recorded if recorded.is_file() else job / "checkpoints" / recorded.name  # a moved sweep
    if not recorded.name or not checkpoint.is_file():
        raise SystemExit(f"error: fold {fold} ({job / 'metrics.json'}): its best_checkpoint {recorded} is not "
                         "there; --loso-suite needs the sweep's checkpoints (drop --loso-suite for the clean "
                         "figures alone)")
    return checkpoint


def loso(sweep: Path, folds: list[str] | None = None, which: str = "recorded", data: Path | None = None,
         adapt: Adaptation | None = None, clip_norm: float | None = None) -> dict[str, float]:
    """Clean accuracy on each fold's held-out speaker: its metrics.json's test/acc (the recorded checkpoint's), or
    for which="last" (or with adapt or clip_norm) its checkpoint scored here."""
    jobs = fold_jobs(sweep, folds)
    if which == "last" or adapt is not None or clip_norm is not None:
        return loso_rows([clean_accuracy(fold_checkpoint(fold, job, metrics, which), "TEST", data, adapt, clip_norm)
                          for fold, (job, metrics) in jobs.items()])
    return loso_rows([float(metrics["test/acc"]) for _, metrics in jobs.values()])


def loso_rows(clean: list[float]) -> dict[str, float]:
    """The folds' clean accuracies as the table's LOSO rows."""
    return {"LOSO mean": float(np.mean(clean)), "LOSO worst fold": float(np.min(clean)), "LOSO folds": len(clean)}


def loso_suite(sweep: Path, suite: str | list[str], data: Path, folds: list[str] | None = None,
               which: str = "recorded", adapt: Adaptation | None = None, clip_norm: float | None = None
               ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Each fold's checkpoint, clean and under the suite, on its own TEST split (the speaker it held out): the rows
    (means over the folds) and each fold's figures."""
    per_fold = {}
    for fold, (job, metrics) in fold_jobs(sweep, folds).items():
        per_fold[fold] = score(fold_checkpoint(fold, job, metrics, which), "TEST", None, suite, data, adapt,
                               clip_norm)
    figures = list(per_fold.values())
    # clean is --loso's "LOSO mean" already
    rows = {f"LOSO {key}": float(np.mean([each[key] for each in figures])) for key in figures[0] if key != "clean"}
    rows["LOSO suite mean, worst fold"] = float(min(each["suite mean"] for each in figures))
    return rows, per_fold


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", help="name=path/to.ckpt (a column each)")
    parser.add_argument("--loso", nargs="*", default=[], help="name=sweep folder of the six data.fold jobs")
    parser.add_argument("--loso-suite", action="store_true",
                        help="also put each --loso fold's checkpoint under the suite, on its held-out speaker")
    parser.add_argument("--voices", type=Path, default=None, help="the espeak-ng eval set (default: .voices/eval)")
    parser.add_argument("--split", default="TEST")
    parser.add_argument("--suite", default="robustness",
                        help="a suite's name, or condition names separated by commas (default: robustness)")
    parser.add_argument("--loso-checkpoint", choices=["recorded", "last"], default="recorded",
                        help="--loso: each fold's checkpoint recorded in its metrics.json (the best on the "
                        "validation speaker, or the last epoch for presets that keep it), or its last.ckpt")
    parser.add_argument("--folds", default=None,
                        help="--loso: these data.fold values only, comma-separated (0,1,3,4: the decision folds)")
    parser.add_argument("--adapt", type=int, default=None, metavar="N",
                        help="test-time adaptation: before scoring each set (a split, a condition, the voices), "
                        "re-estimate the model's BatchNorm statistics on N of its clips, unlabeled (0: all of them); "
                        "a protocol of its own, which sees the scored setting")
    parser.add_argument("--adapt-prior", type=float, default=Adaptation._field_defaults["prior"], metavar="P",
                        help="--adapt: the checkpoint's own statistics kept in the blend as if from P clips "
                        "(adapt.py's prior; 0: the clips' statistics alone)")
    parser.add_argument("--clip-norm", type=float, default=None, metavar="W",
                        help="score CNNs with this clip-norm weight (model.clip_norm, 0-1) instead of the "
                        "checkpoint's own")
    parser.add_argument("--data", default=None, help="folder with SDR_metadata.tsv and the clips "
                        "(default: $SDR_DATA_DIR, ../shared/speech_data, speech_data)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    adapt = None if args.adapt is None else Adaptation(args.adapt, args.adapt_prior)
    suite = parse_suite(args.suite)
    folds = [fold.strip() for fold in args.folds.split(",") if fold.strip()] if args.folds else None
    configure(args.threads)
    voices = args.voices or (Path(".voices/eval") if Path(".voices/eval/SDR_metadata.tsv").is_file() else None)
    adapted = "" if adapt is None else (f"; BatchNorm adapted to {adapt.clips or 'all'} clips of each scored set, "
                                        f"prior {adapt.prior:g}")
    if args.clip_norm is not None:
        if not 0.0 <= args.clip_norm <= 1.0:
            sys.exit(f"error: --clip-norm {args.clip_norm}: use a weight from 0 to 1")
        adapted += f"; clip norm {args.clip_norm:g}"
    print(f"{machine()}; split {args.split}; voices {voices or 'none (python -m sdr_lightning.data.voices)'}"
          f"{adapted}\n", flush=True)
    columns: dict[str, dict[str, list[float]]] = {}  # name -> row -> one value per run
    for name, checkpoints in named(args.checkpoints).items():
        for checkpoint in checkpoints:
            figures = score(checkpoint, args.split.upper(), voices, suite, find_data(args.data), adapt, args.clip_norm)
            for row, value in figures.items():
                columns.setdefault(name, {}).setdefault(row, []).append(value)
    loso_folds: dict[str, list[dict[str, dict[str, float]]]] = {}  # name -> one {fold: figures} per sweep
    for name, sweeps in named(args.loso).items():
        for sweep in sweeps:
            if args.loso_suite:
                rows, per_fold = loso_suite(sweep, suite, find_data(args.data), folds, args.loso_checkpoint, adapt,
                                            args.clip_norm)
                # clean was just scored; the recorded checkpoint's own figure is in metrics.json
                scored_here = args.loso_checkpoint == "last" or adapt is not None or args.clip_norm is not None
                clean = loso_rows([each["clean"] for each in per_fold.values()]) if scored_here else loso(sweep, folds)
                figures = clean | rows
                loso_folds.setdefault(name, []).append(per_fold)
            else:
                scored_here = args.loso_checkpoint == "last" or adapt is not None or args.clip_norm is not None
                figures = loso(sweep, folds, args.loso_checkpoint, find_data(args.data) if scored_here else None,
                               adapt, args.clip_norm)
            for row, value in figures.items():
                columns.setdefault(name, {}).setdefault(row, []).append(value)
    if not columns:
        sys.exit("error: give checkpoints (name=path.ckpt) or --loso sweeps; see --help")
    rows = [key for column in columns.values() for key in column]
    rows = list(dict.fromkeys(rows))
    table = [[row, TARGETS.get(row, ""), *(cell(columns[c][row]) if row in columns[c] else "-" for c in columns)]
             for row in rows if row != "LOSO folds"]
    print("\n" + markdown_table(["condition", "target", *columns], table))
    write_json(args.out, {"machine": machine(), "split": args.split,
                          "adapt": None if adapt is None else {"clips": adapt.clips, "prior": adapt.prior},
                          "clip_norm": args.clip_norm,
                          "columns": columns}
               | ({"loso_folds": loso_folds} if loso_folds else {}))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
