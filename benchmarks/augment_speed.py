"""Cost of training-time augmentation: median time per 64-clip batch of each option in conf/augment/, the
featurizer, and the whole `augment=all` chain, with the per-epoch overhead on the reference TRAIN split.

    python benchmarks/augment_speed.py [--data speech_data] [--batch 64] [--repeats 15] [--threads 1]

Clips come from --data (default: $SDR_DATA_DIR, ../shared/speech_data or speech_data); without clips it
uses synthetic 1 s noise bursts. Options use their config values (e.g. p: 0.5 for pitch and noise).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchaudio.functional as AF
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sdr_lightning.audio.augment import AugmentationPipeline
from sdr_lightning.audio.features import LogMel
from sdr_lightning.audio.io import load_audio
from sdr_lightning.data.datamodule import collate_waveforms

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CLIPS = 2000  # reference split: 4 speakers x 10 digits x 50 takes


def find_data(given: str | None) -> Path | None:
    candidates = [given, os.environ.get("SDR_DATA_DIR"), ROOT.parent / "shared" / "speech_data", ROOT / "speech_data"]
    for folder in candidates:
        if folder and any(Path(folder).glob("*.wav")):
            return Path(folder)
    return None


def clip_batch(data: Path | None, size: int) -> dict[str, torch.Tensor]:
    if data is None:
        clips = [torch.randn(8000) * 0.1 for _ in range(size)]
    else:
        files = sorted(data.glob("*.wav"))
        clips = [load_audio(path) for path in random.Random(0).sample(files, size)]
    return collate_waveforms([(clip, 0, 0) for clip in clips])


def augmentation_config(option: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"augment={option}", "paths.root_dir=.", "paths.output_dir=."])
    return OmegaConf.to_container(cfg.model.augment, resolve=True) or {}


def median_ms(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up: kernels, caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="folder of FSDD wav clips")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--torchaudio-clips", type=int, default=8,
                        help="clips to time torchaudio.functional.pitch_shift on, one at a time (0: skip)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 gives steadier figures on a busy machine")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = find_data(args.data)
    batch = clip_batch(data, args.batch)
    waveform, lengths = batch["waveform"], batch["lengths"]
    featurizer = LogMel()
    features, frames = featurizer(waveform, lengths)
    batches_per_epoch = TRAIN_CLIPS // args.batch
    source = f"{args.batch} real clips from {data}" if data else f"{args.batch} synthetic 1 s clips"
    print(f"{source}: {lengths.float().mean() / 8000:.2f} s mean, {lengths.max() / 8000:.2f} s longest; "
          f"{torch.get_num_threads()} torch threads; median of {args.repeats}\n")
    print(f"| option (`augment=`) | stage | ms per {args.batch}-clip batch "
          f"| s per epoch ({batches_per_epoch} batches) |")
    print("|---|---|---|---|")

    def row(name: str, stage: str, ms: float) -> None:
        print(f"| {name} | {stage} | {ms:.1f} | {ms * batches_per_epoch / 1000:.2f} |")

    options = ["speed", "pitch", "gain", "noise", "shift", "specaugment", "freq_warp", "time_stretch", "time_warp"]
    for option in options:
        config = augmentation_config(option)
        stage, node = next((stage, node) for stage, nodes in config.items() for node in nodes.values())
        variants = [(option, config)]
        if node.get("p", 1.0) < 1.0:  # also the cost when every clip is transformed
            variants.append((f"{option} (p=1)", {stage: {option: {**node, "p": 1.0}}}))
        for name, variant in variants:
            pipeline = AugmentationPipeline(variant).train()
            if stage == "waveform":
                row(name, stage, median_ms(lambda: pipeline.augment_waveform(waveform, lengths), args.repeats))
            else:
                row(name, stage, median_ms(lambda: pipeline.augment_spectrogram(features, frames), args.repeats))
    row("(featurizer: LogMel)", "waveform -> features", median_ms(lambda: featurizer(waveform, lengths), args.repeats))
    for bundle in ("waveform", "all"):
        pipeline = AugmentationPipeline(augmentation_config(bundle)).train()

        def chain() -> None:
            wave, n = pipeline.augment_waveform(waveform, lengths)
            pipeline.augment_spectrogram(*featurizer(wave, n))

        row(f"{bundle} (bundle, with the featurizer)", "all", median_ms(chain, args.repeats))

    if args.torchaudio_clips:
        # The per-clip reference, over the same semitone steps: +-2 reduce to a 1/8000 resampling ratio.
        steps = [s for s in augmentation_config("pitch")["waveform"]["pitch"]["semitones"] if s]
        clips = [waveform[i, : lengths[i]] for i in range(min(args.torchaudio_clips, args.batch))]
        ms = median_ms(lambda: [AF.pitch_shift(clip, 8000, steps[i % len(steps)]) for i, clip in enumerate(clips)],
                       max(1, args.repeats // 5))
        row(f"(torchaudio pitch_shift per clip, steps {steps}, x{args.batch}/{len(clips)})", "waveform",
            ms * args.batch / len(clips))

if __name__ == "__main__":
    main()
