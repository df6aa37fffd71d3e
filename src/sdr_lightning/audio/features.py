"""Log-Mel featurizer (an nn.Module the model owns) and the seed study's fixed-size Task I vector."""

from __future__ import annotations

import json

import torch
import torchaudio
from torch import Tensor, nn

from sdr_lightning.errors import ConfigError

NORMALIZATIONS = ("utterance", "cmvn", "none")


def lengths_to_mask(lengths: Tensor, max_length: int) -> Tensor:
    """(B,) lengths -> (B, max_length) bool mask, True on valid positions."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


class LogMel(nn.Module):
    """Waveform batch -> per-utterance normalised log-Mel spectrogram, padding ignored.

    Frames are not centred, so a clip's frames depend only on its own samples: a clip gives the same
    features alone, padded inside a batch, or cached, and padding never leaks into the statistics.
    """

    def __init__(
        self,
        sample_rate: int = 8000,
        n_fft: int = 256,
        win_length: int = 200,
        hop_length: int = 80,
        n_mels: int = 40,
        f_min: float = 20.0,
        f_max: float | None = None,
        top_db: float = 80.0,
        normalization: str = "utterance",
        trim_db: float | None = None,
        trim_margin: int = 2,
        cepstra: int | None = None,
    ) -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"model.featurizer.normalization={normalization!r}; use one of {NORMALIZATIONS}.")
        if not top_db > 0:  # a floor at or above the peak would flatten every clip to one value
            raise ConfigError(f"model.featurizer.top_db={top_db}; use a positive number of decibels (80 by default).")
        if cepstra is not None and not 1 <= cepstra <= n_mels:
            raise ConfigError(f"model.featurizer.cepstra={cepstra}; use 1..n_mels ({n_mels}), or null to keep all.")
        # Every setting that changes the output: the key of the datamodule's feature cache.
        self.settings = dict(sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length,
                             n_mels=n_mels, f_min=f_min, f_max=f_max, top_db=top_db, normalization=normalization,
                             trim_db=trim_db, trim_margin=trim_margin, cepstra=cepstra)
        if cepstra is not None:
            # Projection onto the first `cepstra` orthonormal DCT bases and back: MFCC's liftering, in log-Mel shape.
            dct = torchaudio.functional.create_dct(n_mels, n_mels, norm="ortho")[:, :cepstra]  # (n_mels, cepstra)
            self.register_buffer("lifter", dct @ dct.T, persistent=False)
        self.sample_rate = sample_rate
        self.cepstra = cepstra
        self.n_fft, self.hop_length, self.n_mels = n_fft, hop_length, n_mels
        self.top_db, self.normalization = top_db, normalization
        self.trim_db, self.trim_margin = trim_db, trim_margin
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length,
            f_min=f_min, f_max=f_max, n_mels=n_mels, center=False, power=2.0,
        )

    @property
    def cache_key(self) -> str:
        return json.dumps({"featurizer": type(self).__name__, **self.settings}, sort_keys=True)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        return 1 + (lengths.clamp(min=self.n_fft) - self.n_fft) // self.hop_length

    def forward(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L) waveforms and (B,) sample counts -> (B, n_mels, T) features and (B,) frame counts."""
        if waveform.shape[-1] < self.n_fft:  # clips shorter than one window still give one frame
            waveform = nn.functional.pad(waveform, (0, self.n_fft - waveform.shape[-1]))
        power = self.mel(waveform)
        frames = self.frame_lengths(lengths).clamp(max=power.shape[-1])
        mask = lengths_to_mask(frames, power.shape[-1])[:, None, :]  # (B, 1, T)
        db = self.compress(power)
        if self.trim_db is not None:
            db, frames = self._trim(db, power, frames)
            mask = lengths_to_mask(frames, db.shape[-1])[:, None, :]
        db = self.floor(db, mask)
        if self.cepstra is not None:  # keep each frame's spectral envelope, drop the pitch harmonics' ripple
            db = self.lifter @ db
        if self.normalization == "utterance":
            db = _masked_standardize(db, mask, dims=(1, 2))
        elif self.normalization == "cmvn":
            db = _masked_standardize(db, mask, dims=(2,))
        return db.masked_fill(~mask, 0.0), frames

    def compress(self, power: Tensor) -> Tensor:
        """Mel power -> the values the model sees, before trimming and normalisation: decibels."""
        return 10.0 * torch.log10(power.clamp(min=1e-10))

    def floor(self, db: Tensor, mask: Tensor) -> Tensor:
        """Floor the dynamic range per clip, so digital silence (zero padding) and a noise floor look alike."""
        peak = db.masked_fill(~mask, -torch.inf).amax(dim=(1, 2), keepdim=True)
        return torch.maximum(db, peak - self.top_db)

    def _trim(self, db: Tensor, power: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Drop leading and trailing frames more than `trim_db` below the clip's loudest frame (keeping
        `trim_margin` frames of context), so clips with long silences look like tightly cut ones; the kept
        frames move to the start. Batched: one gather, no loop over clips."""
        steps = db.shape[-1]
        time = torch.arange(steps, device=db.device)
        valid = time[None, :] < frames[:, None]
        energy = 10.0 * torch.log10(power.sum(dim=1).clamp(min=1e-10)).masked_fill(~valid, -torch.inf)
        active = energy > energy.amax(dim=1, keepdim=True) - self.trim_db  # the loudest frame always is
        first = torch.where(active, time, steps).amin(dim=1)
        last = torch.where(active, time, -1).amax(dim=1)
        start = (first - self.trim_margin).clamp(min=0)
        stop = torch.minimum(last + 1 + self.trim_margin, frames)
        index = (start[:, None] + time[None, :]).clamp(max=steps - 1)
        trimmed = db.gather(2, index[:, None, :].expand_as(db))
        return trimmed, stop - start


class PCENMel(LogMel):
    """LogMel with per-channel energy normalisation (PCEN; Wang et al., ICASSP 2017) in place of the logarithm: each
    Mel band is divided by a slow running average of itself (a time constant of about `1 / smoothing` frames), then
    root-compressed. That cancels a fixed channel gain per band (microphone, phone line) and lifts speech over
    stationary noise, where a logarithm keeps both. Trimming, liftering and normalisation follow as in LogMel.

    The waveform is taken as if in 16-bit units (x 2**15), so `delta`, the offset that decides where compression
    starts, sits where PCEN's authors tuned it."""

    def __init__(self, *args, smoothing: float = 0.025, alpha: float = 0.98, delta: float = 2.0, root: float = 0.5,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name, value, low, high in (("smoothing", smoothing, 0.0, 1.0), ("alpha", alpha, 0.0, 1.0),
                                       ("root", root, 0.0, 1.0)):
            if not low < value <= high:
                raise ConfigError(f"model.featurizer.{name}={value}; use a value in ({low}, {high}].")
        self.settings.update(smoothing=smoothing, alpha=alpha, delta=delta, root=root)
        self.smoothing, self.alpha, self.delta, self.root = smoothing, alpha, delta, root

    def compress(self, power: Tensor) -> Tensor:
        energy = power * 2.0**30  # (2**15)**2: power of 16-bit samples
        # M[t] = (1 - s) M[t-1] + s E[t], started at E[0] (as if the clip's first frame had lasted forever)
        first = energy[..., :1]
        b = torch.tensor([self.smoothing, 0.0], dtype=energy.dtype, device=energy.device)
        a = torch.tensor([1.0, self.smoothing - 1.0], dtype=energy.dtype, device=energy.device)
        smooth = torchaudio.functional.lfilter(energy - first, a, b, clamp=False) + first
        gained = energy / (1e-6 + smooth).pow(self.alpha)
        return (gained + self.delta).pow(self.root) - self.delta**self.root

    def floor(self, db: Tensor, mask: Tensor) -> Tensor:
        return db  # PCEN's offset already keeps silence at 0


def _masked_standardize(x: Tensor, mask: Tensor, dims: tuple[int, ...]) -> Tensor:
    mask = mask.expand_as(x)
    count = mask.sum(dim=dims, keepdim=True).clamp(min=1)
    mean = (x * mask).sum(dim=dims, keepdim=True) / count
    var = (((x - mean) * mask) ** 2).sum(dim=dims, keepdim=True) / count
    return (x - mean) / (var + 1e-5).sqrt()


def downsample_spectrogram(x: Tensor, n: int, lengths: Tensor | None = None) -> Tensor:
    """Split each spectrogram's valid frames into `n` near-equal time chunks, mean-pool each, flatten.

    (k, T) -> (n*k,) or (B, k, T) -> (B, n*k), chunk-major. Clips shorter than `n` frames repeat frames
    rather than leaving empty chunks.
    """
    single = x.dim() == 2
    if single:
        x = x[None]
    batch, _, frames = x.shape
    if lengths is None:
        lengths = torch.full((batch,), frames, device=x.device)
    lengths = lengths.clamp(min=1)[:, None]  # (B, 1)
    chunk = torch.arange(n, device=x.device)[None, :]  # (1, n)
    start = chunk * lengths // n
    end = torch.maximum((chunk + 1) * lengths // n, start + 1)
    t = torch.arange(frames, device=x.device)[None, :, None]  # (1, T, 1)
    weights = ((t >= start[:, None, :]) & (t < end[:, None, :])).to(x.dtype)  # (B, T, n)
    weights = weights / weights.sum(dim=1, keepdim=True)
    pooled = torch.bmm(x, weights)  # (B, k, n)
    flat = pooled.transpose(1, 2).reshape(batch, -1)
    return flat[0] if single else flat
