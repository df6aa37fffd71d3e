"""demo.py: the page's callback in Python (a clip, a digit string, bad files, settings, the model card), and the
served page in headless chromium: it loads, an uploaded FSDD TEST clip shows the digit the Python API gives, an
uploaded digit string shows the API's string, and a corrupt file shows predict.py's error line.

The tiny test checkpoint is not accurate, so the page is checked against the Python API on the same clip
(`predict_files` and the recognizer), not against the clip's label. Regenerate docs/demo.png with a real checkpoint:
`python -m tests.tasks.test_demo <run>/checkpoints/<best>.ckpt docs/demo.png`.
"""

from __future__ import annotations

import csv
import html
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import soundfile
import torch
from hydra.core.global_hydra import GlobalHydra

from sdr_lightning.audio.io import load_audio
from sdr_lightning.errors import ConfigError
from sdr_lightning.sequence.strings import build_string
from sdr_lightning.tasks.demo import TABLE_HEADERS, address_of, answer, free_port, import_gradio, load
from sdr_lightning.tasks.predict import predict_files
from tests.helpers import ROOT, SAMPLE_RATE, compose
from tests.tasks.test_predict import write_bad_files

# every piece is reported (the tiny model is rarely sure): a string of three clips shows three digits or more
UNGATED = "sequence.min_confidence=0.0"


def demo_cfg(tmp_path: Path, *overrides: str):
    cfg = compose(tmp_path, list(overrides), config_name="demo")
    GlobalHydra.instance().clear()
    return cfg


def fsdd_test_clips(data: Path, count: int) -> list[Path]:
    """The first `count` TEST clips of the metadata with different digits."""
    with (data / "SDR_metadata.tsv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle, delimiter="\t") if row["split"] == "TEST"]
    chosen: dict[str, Path] = {}
    for row in rows:
        chosen.setdefault(row["label"], data / f"{row['identifier']}.wav")
    return list(chosen.values())[:count]


def write_string(clips: list[Path], path: Path) -> Path:
    """The clips in order, with pauses, lead-in and room tone (sdr_lightning.sequence.strings), as a 16-bit wav."""
    waves = [load_audio(clip, SAMPLE_RATE).numpy() for clip in clips]
    digits = [int(clip.name.split("_")[0]) for clip in clips]
    string = build_string(waves, digits, [0.5] * (len(clips) - 1), SAMPLE_RATE, torch.Generator().manual_seed(0))
    soundfile.write(path, string.waveform, SAMPLE_RATE, subtype="PCM_16")
    return path


def api_answer(model, recognizer, path: Path) -> tuple[list[int], int, float]:
    """What the Python API says of `path`: the recognizer's digits, and predict_files' digit and probability."""
    digits = [d.digit for d in recognizer.recognize(load_audio(path, SAMPLE_RATE).numpy())]
    whole = predict_files(model, [path])[0]
    return digits, whole.digit, whole.probability


def shown_digits(markup_or_text: str) -> list[int]:
    """The digits the headline shows (its big line), from the HTML or from the page's text."""
    match = re.search(r'id="sdr-string"[^>]*>([^<]*)<', markup_or_text)
    line = match.group(1) if match else markup_or_text
    return [int(c) for c in line if c.isdigit()]


def boxes(figure, kind: str) -> int:
    """How many marks of `kind` the spectrogram has: "digit" (a digit heard), "speech" (a VAD segment)."""
    return sum(patch.get_gid() == kind for patch in figure.axes[0].patches)


# ---- the callback, in Python -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def loaded(cnn_run: dict, tmp_path_factory: pytest.TempPathFactory):
    cfg = demo_cfg(tmp_path_factory.mktemp("demo"), f"ckpt_path={cnn_run['best_checkpoint']}", UNGATED)
    return load(cfg)


def test_a_test_clip_shows_the_apis_digit_and_probabilities(loaded, shared_data: Path) -> None:
    model, recognizer, _ = loaded
    clip = fsdd_test_clips(shared_data, 1)[0]
    digits, digit, probability = api_answer(model, recognizer, clip)
    markup, probabilities, rows, figure = answer(model, recognizer, str(clip))
    assert shown_digits(markup) == digits and len(digits) >= 1
    assert f'<b id="sdr-one-digit">{digit}</b> with probability {probability:.4f}' in markup
    assert max(probabilities, key=probabilities.get) == str(digit)
    assert probabilities[str(digit)] == pytest.approx(probability, abs=1e-6)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert [row[1] for row in rows] == digits and [row[0] for row in rows] == list(range(1, len(digits) + 1))
    assert boxes(figure, "digit") == len(digits) and boxes(figure, "speech") >= 1  # a box per digit, speech bars
    assert figure.axes[0].get_xlim()[1] == pytest.approx(len(load_audio(clip)) / SAMPLE_RATE)


def test_a_digit_string_shows_the_apis_string(loaded, shared_data: Path, tmp_path: Path) -> None:
    model, recognizer, _ = loaded
    path = write_string(fsdd_test_clips(shared_data, 3), tmp_path / "string.wav")
    digits, _, _ = api_answer(model, recognizer, path)
    markup, _, rows, figure = answer(model, recognizer, str(path))
    assert len(digits) >= 3  # ungated: at least one digit per spoken clip
    assert shown_digits(markup) == digits and [row[1] for row in rows] == digits
    starts = [row[2] for row in rows]
    assert starts == sorted(starts) and all(row[2] < row[3] for row in rows)
    assert f"{len(digits)} digits heard" in markup
    assert boxes(figure, "digit") == len(digits) and boxes(figure, "speech") >= 1


def test_bad_files_show_predicts_error_line_not_a_traceback(loaded, tmp_path: Path) -> None:
    model, recognizer, _ = loaded
    expected = write_bad_files(tmp_path)
    expected["missing.wav"] = "does not exist"
    for name, phrase in expected.items():
        path = tmp_path / name
        error = predict_files(model, [path])[0].error  # predict.py's line for the file
        markup, probabilities, rows, figure = answer(model, recognizer, str(path))
        assert 'id="sdr-error"' in markup and phrase in markup and "Traceback" not in markup
        # the same message, naming the file as the user knows it, not by the upload's temporary folder
        assert html.escape(error.replace(str(path), name)) in markup and str(tmp_path) not in markup
        assert probabilities is None and rows == [] and figure is None


def test_nothing_uploaded_clears_the_outputs(loaded) -> None:
    model, recognizer, _ = loaded
    markup, probabilities, rows, figure = answer(model, recognizer, None)
    assert "sdr-string" not in markup and probabilities is None and rows == [] and figure is None


def test_the_model_card_says_which_model_answered(loaded, cnn_run: dict) -> None:
    model, _, card = loaded
    text = card.markdown()
    assert str(Path(cnn_run["best_checkpoint"]).resolve()) in text
    assert f"{type(model).__name__} / {type(model.encoder).__name__}" in text
    assert f"{sum(p.numel() for p in model.parameters()):,} parameters" in text
    assert f"DEV accuracy {cnn_run['val/acc']:.4f}" in text and f"TEST accuracy {cnn_run['test/acc']:.4f}" in text


def test_sequence_settings_are_applied_and_unknown_ones_refused(cnn_run: dict, tmp_path: Path) -> None:
    ckpt = f"ckpt_path={cnn_run['best_checkpoint']}"
    _, recognizer, card = load(demo_cfg(tmp_path, ckpt, "sequence.min_confidence=0.25", "sequence.segmenter=energy"))
    assert recognizer.split.min_confidence == 0.25 and recognizer.segmenter == "energy"
    with pytest.raises(ConfigError, match="no_such_setting"):
        load(demo_cfg(tmp_path, ckpt, "+sequence.vad.no_such_setting=1"))


def test_missing_gradio_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    with pytest.raises(ConfigError, match=re.escape("pip install -e '.[demo]'")):
        import_gradio()


def test_bad_ports_and_hosts_are_refused(tmp_path: Path) -> None:
    assert address_of(demo_cfg(tmp_path, "ckpt_path=x")) == ("127.0.0.1", 7860)
    assert address_of(demo_cfg(tmp_path, "ckpt_path=x", "port=null")) == ("127.0.0.1", 0)  # 0: any free port
    for value in ("not_a_port", "70000", "-1", "1.5"):
        with pytest.raises(ConfigError, match=f"port={value}: use a port number"):
            address_of(demo_cfg(tmp_path, "ckpt_path=x", f"port={value}"))


@pytest.mark.slow
def test_command_line_help_and_errors(tmp_path: Path) -> None:
    for arguments, phrase in ((["--help"], "ckpt_path"), ([f"ckpt_path={tmp_path}/none.ckpt"], "no such checkpoint")):
        done = subprocess.run([sys.executable, str(ROOT / "demo.py"), *arguments], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        output = done.stdout + done.stderr
        assert phrase in output and "Traceback" not in output, output
        assert (done.returncode == 0) == (arguments == ["--help"]), output
    assert list(tmp_path.iterdir()) == []  # no outputs/ or .hydra/ folder left behind


# ---- the page, in headless chromium ----------------------------------------------------------------------------

def chromium_driver():
    """Headless chromium through its driver, or a skip naming what is missing (CI's .ci/run installs both)."""
    pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]'")
    pytest.importorskip("selenium", reason="the browser test needs selenium: pip install -e '.[dev]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("headless browser test: chromium and chromedriver not found (Debian: apt-get install chromium "
                    "chromium-driver; .ci/run installs them)")
    options = Options()
    # a fake microphone (a beep) that needs no permission prompt: the page's recording path, end to end
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1250",
                     "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(argument)
    options.binary_location = browser
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def settled(browser, selector: str, condition=bool, attribute: str | None = None, timeout: float = 90.0):
    """The text (or `attribute`) of the element at CSS `selector` once `condition` holds for it, found afresh each
    time: the page re-renders its elements as results arrive."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def read(b):
        element = b.find_element(By.CSS_SELECTOR, selector)
        value = element.get_attribute(attribute) if attribute else element.text
        return value if value is not None and condition(value) else False

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(browser, timeout, ignored_exceptions=ignored).until(read)


def table_rows(text: str) -> list[list[str]]:
    """The rows of the page's table of digits, from its text: one cell a line, after the header's cells."""
    cells = [line.strip() for line in text.splitlines()]
    body = cells[cells.index(TABLE_HEADERS[-1]) + 1:] if TABLE_HEADERS[-1] in cells else []
    width = len(TABLE_HEADERS)
    return [body[i:i + width] for i in range(0, len(body) - width + 1, width)]


def upload(browser, address: str, path: Path) -> str:
    """Open the page afresh, upload `path`, and return the result panel's text once it names the file."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(address)
    field = WebDriverWait(browser, 90).until(lambda b: b.find_element(By.CSS_SELECTOR, "#sdr-audio input[type=file]"))
    field.send_keys(str(path))
    return settled(browser, "#sdr-result", lambda text: path.name in text)


@pytest.fixture(scope="module")
def served(loaded, tmp_path_factory: pytest.TempPathFactory):
    """The page served on a free port, the test checkpoint behind it, and a headless chromium to look at it."""
    gr = pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]'")
    from sdr_lightning.tasks.demo import build_page, serve

    browser = chromium_driver()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("uploads")))  # uploads land here
        model, recognizer, card = loaded
        page = build_page(model, recognizer, card)
        address = serve(page, demo_cfg(tmp_path_factory.mktemp("cfg"), "ckpt_path=x", "port=0"), block=False)
        assert isinstance(page, gr.Blocks)
        try:
            yield page, address, browser
        finally:
            browser.quit()
            page.close()


@pytest.mark.slow
def test_page_loads_with_the_model_card(served, cnn_run: dict) -> None:
    _, address, browser = served
    browser.get(address)
    card = settled(browser, "#sdr-model", lambda text: "parameters" in text)
    assert Path(cnn_run["best_checkpoint"]).name in card and "DEV accuracy" in card
    assert "appear here" in settled(browser, "#sdr-result")
    assert browser.title == "Spoken digit recognition"


@pytest.mark.slow
def test_page_shows_a_test_clips_digit(served, loaded, shared_data: Path) -> None:
    model, recognizer, _ = loaded
    clip = fsdd_test_clips(shared_data, 1)[0]
    digits, digit, probability = api_answer(model, recognizer, clip)
    _, address, browser = served
    text = upload(browser, address, clip)
    assert shown_digits(settled(browser, "#sdr-string")) == digits
    assert settled(browser, "#sdr-one-digit") == str(digit)
    assert f"{digit} with probability {probability:.4f}" in text
    assert settled(browser, "#sdr-spectrogram img", attribute="src").startswith("data:image")


@pytest.mark.slow
def test_page_shows_a_digit_strings_digits(served, loaded, shared_data: Path, tmp_path: Path) -> None:
    model, recognizer, _ = loaded
    path = write_string(fsdd_test_clips(shared_data, 3), tmp_path / "three_digits.wav")
    digits, _, _ = api_answer(model, recognizer, path)
    _, address, browser = served
    text = upload(browser, address, path)
    assert len(digits) >= 3 and shown_digits(settled(browser, "#sdr-string")) == digits
    assert f"{len(digits)} digits heard" in text
    table = settled(browser, "#sdr-digits", lambda text: len(table_rows(text)) >= len(digits))
    assert [int(row[1]) for row in table_rows(table)] == digits
    browser.save_screenshot(str(tmp_path / "demo.png"))  # what a failing run looked like


@pytest.mark.slow
def test_page_shows_a_corrupt_files_error_line(served, loaded, tmp_path: Path) -> None:
    model, _, _ = loaded
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(64)))
    error = predict_files(model, [path])[0].error.replace(str(path), path.name)
    _, address, browser = served
    text = upload(browser, address, path)
    assert f"corrupt.wav error: {error}" in " ".join(text.split()) and "Traceback" not in text


@pytest.mark.slow
def test_a_microphone_recording_is_answered(served) -> None:
    """Chromium's fake microphone plays a beep: the recording reaches the page as a wav it decodes and answers (a
    beep is no speech, so the answer is no digit, or a doubtful one)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, address, browser = served
    browser.get(address)

    def button(name: str):
        """The recorder's button whose text or aria-label is `name`, once it is there."""
        def find(b):
            return next((e for e in b.find_elements(By.CSS_SELECTOR, "#sdr-audio button")
                         if name in (e.text.strip(), e.get_attribute("aria-label"))), False)

        return WebDriverWait(browser, 60).until(find)

    button("Record audio").click()  # the microphone source
    button("Record").click()
    time.sleep(2.0)
    button("Stop").click()
    text = settled(browser, "#sdr-result", lambda text: "audio.wav" in text)
    assert "The whole recording as one digit" in text and "error" not in text


@pytest.mark.slow
def test_a_port_in_use_is_one_clear_error(loaded, tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]'")
    from sdr_lightning.tasks.demo import build_page, serve

    page = build_page(*loaded)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port("127.0.0.1")))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port={port}.*port=0"):
            serve(page, demo_cfg(tmp_path, "ckpt_path=x", f"port={port}"), block=False)
    page.close()


# ---- docs/demo.png -----------------------------------------------------------------------------------------------

def screenshot(ckpt_path: str, out: Path, data: Path) -> None:
    """Serve the page for `ckpt_path`, upload a digit string of three FSDD TEST clips, save the page as `out`."""
    from sdr_lightning.tasks.demo import build_page, serve

    with pytest.MonkeyPatch.context() as patch:
        folder = Path(tempfile.mkdtemp())
        patch.setenv("GRADIO_TEMP_DIR", str(folder / "uploads"))
        model, recognizer, card = load(demo_cfg(folder, f"ckpt_path={ckpt_path}"))
        page = build_page(model, recognizer, card)
        address = serve(page, demo_cfg(folder, "ckpt_path=x", "port=0"), block=False)
        browser = chromium_driver()
        try:
            print(upload(browser, address, write_string(fsdd_test_clips(data, 3), folder / "three_digits.wav")))
            time.sleep(2.0)  # the spectrogram image settles
            height = browser.execute_script("return document.documentElement.scrollHeight")
            browser.set_window_size(1400, int(height) + 140)  # the whole page, table included
            time.sleep(1.0)
            browser.save_screenshot(str(out))
        finally:
            browser.quit()
            page.close()


if __name__ == "__main__":
    from tests.helpers import SHARED_DATA

    if len(sys.argv) != 3:
        sys.exit("usage: python -m tests.tasks.test_demo <run>/checkpoints/<best>.ckpt docs/demo.png")
    screenshot(sys.argv[1], Path(sys.argv[2]), SHARED_DATA)
    print(f"screenshot: {sys.argv[2]}")
