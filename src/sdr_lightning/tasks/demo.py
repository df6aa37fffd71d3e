"""A local web page for a trained checkpoint: `python demo.py ckpt_path=...` serves it with Gradio (an optional extra,
`pip install -e '.[demo]'`). A recording from the microphone, or an uploaded file, gets:

- the digits heard, each with its probability: what `predict.py mode=sequence` prints for the file (the digit-string
  recognizer of sdr_lightning.sequence, set up by conf/sequence), and the whole recording as one digit with its ten
  probabilities: what `predict.py` prints for it;
- the log-Mel spectrogram with the speech segments the VAD found and the digits cut from them marked;
- which model answered: the checkpoint, its class and encoder, its size and its run's DEV/TEST accuracy.

A file that cannot be read gets predict.py's error line for it, not a traceback. The work is done by `analyze` and
`render` (plain Python, tested without a browser); `build_page` wires them to Gradio and `demo` serves the page.
Gradio is imported only here, with its analytics off: the page reaches nothing beyond this machine.
"""

from __future__ import annotations

import html
import inspect
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sdr_lightning.audio.io import load_audio
from sdr_lightning.errors import ConfigError, SdrError
from sdr_lightning.sequence.recognizer import DigitStringRecognizer, RecognizedDigit, build_recognizer
from sdr_lightning.sequence.vad import Segment
from sdr_lightning.tasks.checkpoint import load_for_inference
from sdr_lightning.tasks.predict import FilePrediction, predict_files

log = logging.getLogger(__name__)

INSTALL = "pip install -e '.[demo]'"
TITLE = "Spoken digit recognition"
PLACEHOLDER = "Record from the microphone or upload a recording: its digits appear here."
CSS = """
.sdr-string { font-size: 2.6em; font-weight: 700; letter-spacing: 0.12em; line-height: 1.2; }
.sdr-caption { opacity: 0.75; }
.sdr-error { color: #b42318; font-weight: 600; white-space: pre-wrap; }
.sdr-warning { color: #9a6700; }
"""


# ---- which model answered --------------------------------------------------------------------------------------

@dataclass
class ModelCard:
    """What the page says about the model: enough to tell two checkpoints apart."""

    checkpoint: str
    model: str  # class / encoder
    parameters: int
    featurizer: str
    metrics: dict[str, Any] = field(default_factory=dict)  # the run's metrics.json, if found
    metrics_file: str | None = None

    def accuracy(self) -> str | None:
        splits = (("DEV", "val/acc"), ("TEST", "test/acc"))
        figures = [f"{name} accuracy {self.metrics[key]:.4f}" for name, key in splits
                   if isinstance(self.metrics.get(key), (int, float))]
        return ", ".join(figures) if figures else None

    def markdown(self) -> str:
        lines = [f"**Model:** {self.model}, {self.parameters:,} parameters, {self.featurizer}",
                 f"**Checkpoint:** `{self.checkpoint}`"]
        accuracy = self.accuracy()
        if accuracy:
            lines.append(f"**Its run:** {accuracy} (`{self.metrics_file}`)")
            best = self.metrics.get("best_checkpoint")
            if best and Path(str(best)).name != Path(self.checkpoint).name:
                lines.append(f"(those figures are the run's best checkpoint's, `{Path(str(best)).name}`)")
        else:
            lines.append("**Its run:** no metrics.json beside the checkpoint's run folder, so no accuracy to show")
        return "  \n".join(lines)

    def line(self) -> str:
        return f"{self.model} ({self.parameters:,} parameters) from {self.checkpoint}" + (
            f"; {self.accuracy()}" if self.accuracy() else "")


def model_card(model: torch.nn.Module, checkpoint: Path, run_dir: Path) -> ModelCard:
    encoder = getattr(model, "encoder", None)
    name = type(model).__name__ + (f" / {type(encoder).__name__}" if encoder is not None else "")
    featurizer = model.featurizer
    bands = getattr(featurizer, "n_mels", "?")
    describe = f"{type(featurizer).__name__} features ({bands} bands) at {int(featurizer.sample_rate)} Hz"
    card = ModelCard(str(checkpoint), name, sum(p.numel() for p in model.parameters()), describe)
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError) as err:
            log.warning("%s: cannot read it (%s); the page shows no accuracy", metrics_file, err)
        else:
            if isinstance(metrics, dict):
                card.metrics, card.metrics_file = metrics, str(metrics_file)
    return card


# ---- the recognizer ------------------------------------------------------------------------------------------------

def make_recognizer(model: torch.nn.Module, settings: Mapping[str, Any] | None = None,
                    checkpoint: str | Path | None = None) -> DigitStringRecognizer:
    """The digit-string recognizer for `model` from conf/sequence's plain values (`cfg.sequence`), as predict.py
    mode=sequence and sdr-listen build it (`checkpoint`: where `sequence.rejector=auto` looks)."""
    return build_recognizer(model, **dict(settings or {}), checkpoint=checkpoint)


def recognizer_summary(recognizer: Any) -> str:
    gate = getattr(getattr(recognizer, "split", None), "min_confidence", None)
    segmenter = getattr(recognizer, "segmenter", None)
    text = (f"**Digit strings:** a VAD ({segmenter + ' ' if isinstance(segmenter, str) else ''}speech detection) finds "
            "the speech, and the classifier's scores cut each stretch into digits")
    return text + (f"; a digit is reported at probability {gate:.2f} or more" if gate is not None else "")


# ---- one recording ---------------------------------------------------------------------------------------------

@dataclass
class Analysis:
    """One recording, as the page shows it."""

    name: str  # the file's own name, as the user knows it
    whole: FilePrediction  # the whole recording as one digit: predict.py's answer (or its error line)
    digits: list[RecognizedDigit] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)  # the VAD's speech segments, in samples
    waveform: np.ndarray | None = None
    sample_rate: int = 8000

    @property
    def error(self) -> str | None:
        return self.whole.error


def analyze(model: torch.nn.Module, recognizer: Any, path: str | Path) -> Analysis:
    """Decode `path` as predict.py does and run both answers on it: the recognizer's digits and the whole-file
    prediction. A file that cannot be read gets predict.py's error, naming the file by its own name (not the
    upload's temporary folder)."""
    path = Path(path)
    sample_rate = int(model.featurizer.sample_rate)
    whole = predict_files(model, [path])[0]
    result = Analysis(path.name, whole, sample_rate=sample_rate)
    if whole.error is not None:
        whole.error = whole.error.replace(str(path), path.name)
        return result
    # predict.py mode=sequence's digits for the file, and the speech segments they came from (one VAD pass)
    result.waveform = load_audio(path, sample_rate).numpy()
    result.digits, result.segments = recognizer.recognize_with_segments(result.waveform)
    return result


def spectrogram_figure(featurizer: torch.nn.Module, analysis: Analysis) -> Any:
    """The log-Mel spectrogram (the featurizer's Mel filters, in dB, before any trimming or normalisation), the
    VAD's speech segments as bars under it and each digit as a box labelled with the digit and its probability."""
    from matplotlib.figure import Figure

    waveform, rate = analysis.waveform, analysis.sample_rate
    n_fft, hop = int(getattr(featurizer, "n_fft", 256)), int(getattr(featurizer, "hop_length", 80))
    samples = torch.from_numpy(np.pad(waveform, (0, max(0, n_fft - len(waveform)))).astype(np.float32))
    with torch.inference_mode():
        power = featurizer.mel(samples[None])[0].double().numpy()
    db = 10 * np.log10(np.maximum(power, 1e-10))
    db = np.maximum(db, db.max() - 80.0)
    duration = len(waveform) / rate
    start = (n_fft / 2 - hop / 2) / rate  # frames are not centred: frame t covers samples t*hop .. t*hop + n_fft
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(db, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                        extent=(start, start + db.shape[1] * hop / rate, 0, db.shape[0]))
    figure.colorbar(image, ax=axes, label="dB", pad=0.01)
    bands = db.shape[0]
    for segment in analysis.segments:
        axes.axvspan(segment.start / rate, segment.end / rate, ymin=0, ymax=0.035, color="#38bdf8", alpha=0.95,
                     gid="speech")
    for digit in analysis.digits:
        axes.add_patch(_box(digit, bands))
        axes.text((digit.start_s + digit.end_s) / 2, bands * 0.93, f"{digit.digit}",
                  ha="center", va="top", color="white", fontsize=18, fontweight="bold")
        axes.text((digit.start_s + digit.end_s) / 2, bands * 0.78, f"{digit.confidence:.2f}",
                  ha="center", va="top", color="white", fontsize=10)
    axes.set_xlim(0, max(duration, start + hop / rate))
    axes.set_ylim(0, bands)
    axes.set_xlabel("time (s)")
    axes.set_ylabel("Mel band")
    axes.set_title(f"{analysis.name}: log-Mel spectrogram; boxes: digits heard; blue: speech found by the VAD",
                   fontsize=10)
    return figure


def _box(digit: RecognizedDigit, bands: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((digit.start_s, bands * 0.05), digit.end_s - digit.start_s, bands * 0.93, fill=False,
                     edgecolor="white", linewidth=2.0, linestyle="--", gid="digit")


def render(model: torch.nn.Module, analysis: Analysis | None) -> tuple[str, dict[str, float] | None, list[list], Any]:
    """The page's outputs for one recording: the headline (HTML), the whole recording's ten probabilities (for a
    gr.Label), one table row per digit heard, and the spectrogram figure (None where there is nothing to show)."""
    if analysis is None:
        return f'<div class="sdr-caption">{PLACEHOLDER}</div>', None, [], None
    if analysis.error is not None:
        return (f'<div id="sdr-error" class="sdr-error">{html.escape(analysis.name)}  error: '
                f'{html.escape(analysis.error)}</div>'), None, [], None
    whole = analysis.whole
    digits = analysis.digits
    if digits:
        heard = " ".join(str(d.digit) for d in digits)
        each = " · ".join(f"{d.digit} ({d.confidence:.2f})" for d in digits)
        caption = f"{len(digits)} digit{'s' * (len(digits) != 1)} heard, each with its probability: {each}"
    else:
        heard = "–"
        caption = "no digit heard: no speech found, or nothing the model is sure is a digit"
    parts = [f'<div class="sdr-caption">Digits heard in {html.escape(analysis.name)}</div>',
             f'<div id="sdr-string" class="sdr-string">{heard}</div>',
             f'<div id="sdr-caption" class="sdr-caption">{html.escape(caption)}</div>',
             f'<div id="sdr-whole">The whole recording as one digit (what predict.py says): '
             f'<b id="sdr-one-digit">{whole.digit}</b> with probability {whole.probability:.4f}</div>']
    if whole.warning:
        parts.append(f'<div class="sdr-warning">{html.escape(whole.warning)}</div>')
    elif len(digits) > 1:
        parts.append('<div class="sdr-caption">(a string of digits: that one digit means little; read the digits '
                     'heard above)</div>')
    probabilities = {str(k): float(p) for k, p in enumerate(whole.probabilities)}
    rows = []
    for number, d in enumerate(digits, start=1):
        ranked = np.argsort(d.probabilities)[::-1][:3] if d.probabilities else []
        rows.append([number, d.digit, round(d.start_s, 2), round(d.end_s, 2), round(d.confidence, 4),
                     " · ".join(f"{k}: {d.probabilities[k]:.3f}" for k in ranked)])
    return "\n".join(parts), probabilities, rows, spectrogram_figure(model.featurizer, analysis)


def answer(model: torch.nn.Module, recognizer: Any, path: str | Path | None) -> tuple[str, Any, list[list], Any]:
    """The page's callback: an uploaded or recorded file (None: cleared) -> `render`'s outputs. Our own errors show
    as one line on the page; anything else too, with the traceback in the console."""
    if path is None:
        return render(model, None)
    try:
        return render(model, analyze(model, recognizer, path))
    except SdrError as err:
        message = str(err).replace(str(path), Path(path).name)
    except Exception as err:  # noqa: BLE001 - the page shows one line; the console keeps the traceback
        log.exception("demo: %s failed", path)
        message = f"{type(err).__name__}: {err} (an internal error; the console has the details)"
    return f'<div id="sdr-error" class="sdr-error">{html.escape(Path(path).name)}  error: ' \
           f'{html.escape(message)}</div>', None, [], None


# ---- the page ------------------------------------------------------------------------------------------------------

TABLE_HEADERS = ["#", "digit", "start (s)", "end (s)", "probability", "top 3"]


def import_gradio() -> Any:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, no version check: nothing leaves this machine
    try:
        import gradio
    except ImportError as err:
        raise ConfigError(f"the demo page needs Gradio, which is not installed ({err}); install it with `{INSTALL}`."
                          ) from err
    return gradio


def build_page(model: torch.nn.Module, recognizer: Any, card: ModelCard) -> Any:
    """The Gradio Blocks of the page (not yet served)."""
    gr = import_gradio()
    options = {"title": TITLE, "analytics_enabled": False}
    if "css" in inspect.signature(gr.Blocks.__init__).parameters:  # Gradio 4 and 5; 6 takes css in launch()
        options["css"] = CSS
    audio_options: dict[str, Any] = {}
    accepted = inspect.signature(gr.Audio.__init__).parameters
    if "buttons" in accepted:  # no "share" button (Gradio 6), no share link of any kind
        audio_options["buttons"] = ["download"]
    elif "show_share_button" in accepted:
        audio_options["show_share_button"] = False
    with gr.Blocks(**options) as page:
        gr.Markdown(f"# {TITLE}\nSay digits into the microphone (one digit, or a string with short pauses), or "
                    "upload a recording (wav, flac, ogg; any sample rate).")
        with gr.Row():
            with gr.Column(scale=1):
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Recording",
                                 elem_id="sdr-audio", **audio_options)
                gr.Markdown(card.markdown() + "  \n" + recognizer_summary(recognizer), elem_id="sdr-model")
            with gr.Column(scale=1):
                headline = gr.HTML(render(model, None)[0], elem_id="sdr-result")
                whole = gr.Label(num_top_classes=3, label="The whole recording as one digit: probabilities",
                                 elem_id="sdr-probabilities")
        spectrogram = gr.Plot(format="png", show_label=False, elem_id="sdr-spectrogram")
        table = gr.Dataframe(headers=TABLE_HEADERS, value=[], label="Digits heard, with their probabilities",
                             interactive=False, elem_id="sdr-digits")

        def respond(path: str | None) -> tuple:
            markup, probabilities, rows, figure = answer(model, recognizer, path)
            # a string's digits have their probabilities in the table; its one-digit answer's bars would mislead
            return (markup, gr.update(value=probabilities, visible=len(rows) <= 1), rows or None, figure)

        audio.change(respond, inputs=audio, outputs=[headline, whole, table, spectrogram])
    return page


def serve(page: Any, cfg: DictConfig, block: bool = True) -> str:
    """Serve `page` at cfg.host:cfg.port (port 0 or null: a free one); returns its address. `block`: until Ctrl-C."""
    gr = import_gradio()
    host, port = address_of(cfg)
    port = port or free_port(host)
    options: dict[str, Any] = dict(server_name=host, server_port=port, share=False, prevent_thread_lock=True,
                                   inbrowser=bool(cfg.get("open_browser")), show_error=True, quiet=True,
                                   max_file_size=cfg.get("max_file_size"))
    accepted = inspect.signature(gr.Blocks.launch).parameters
    extra = {"ssr_mode": False, "theme": gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                                           font_mono=["ui-monospace", "monospace"]), "css": CSS}
    options.update({key: value for key, value in extra.items() if key in accepted})
    if "theme" not in accepted:
        page.theme = extra["theme"]
    for noisy in ("httpx", "httpcore"):  # Gradio's own requests to the page it starts, one log line each
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        page.launch(**options)
    except OSError as err:
        raise ConfigError(f"port={port}: cannot serve the page at {host}:{port} ({err}); is another demo there? Pick "
                          "another port, or port=0 for any free one.") from err
    address = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if block:
        print(f"Demo page: {address}  (Ctrl-C stops it)", flush=True)
        try:
            while page.is_running:
                time.sleep(0.2)
        except KeyboardInterrupt:
            print("Stopped.", flush=True)
        finally:
            page.close()
    return address


def address_of(cfg: DictConfig) -> tuple[str, int]:
    """cfg.host and cfg.port (0: any free port), checked."""
    host, port = cfg.get("host") or "127.0.0.1", cfg.get("port")
    if port is None:
        port = 0
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port={port}: use a port number 1-65535, or 0 (or null) for any free port.")
    if not isinstance(host, str):
        raise ConfigError(f"host={host}: give a host name or address, e.g. 127.0.0.1 (this machine only).")
    return host, port


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def load(cfg: DictConfig) -> tuple[torch.nn.Module, Any, ModelCard]:
    """The model (as predict.py loads it), its recognizer and its card."""
    run = load_for_inference(cfg.ckpt_path, cfg.get("run_dir"), cfg.paths, cfg.get("data_dir"),
                             refit_probe=cfg.get("refit_probe", True))
    settings = OmegaConf.to_container(cfg.sequence, resolve=True) if cfg.get("sequence") else {}
    try:
        recognizer = make_recognizer(run.model, settings, run.checkpoint)
    except TypeError as err:  # a setting of the wrong kind
        raise ConfigError(f"sequence: {err}") from err
    run_dir = Path(cfg.run_dir).expanduser() if cfg.get("run_dir") else run.checkpoint.parent.parent
    return run.model, recognizer, model_card(run.model, run.checkpoint, run_dir)


def demo(cfg: DictConfig, block: bool = True) -> tuple[Any, str]:
    """Serve the page for cfg.ckpt_path until Ctrl-C. `block=False`: return at once, with the served Gradio Blocks
    (`.close()` stops it) and the page's address."""
    import_gradio()  # before loading the model: a missing Gradio or a bad port is said at once
    address_of(cfg)
    model, recognizer, card = load(cfg)
    print(f"Model: {card.line()}", flush=True)
    page = build_page(model, recognizer, card)
    return page, serve(page, cfg, block=block)
