"""docs/architecture.md's "Adding an encoder" is true: its module and its yaml, exactly as printed there, train with
`encoder=mel_statistics`, and the checkpoint loads back for evaluation."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sdr_lightning.tasks.checkpoint import load_checkpoint
from sdr_lightning.tasks.train import train
from tests.helpers import ROOT, compose

MODULE = "sdr_lightning.models.encoders.mel_statistics"


def doc_blocks() -> tuple[str, str]:
    """The first python and the first yaml block of the doc's "Adding an encoder" section."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Adding an encoder", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    yaml = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return python, yaml


def test_the_documented_encoder_trains_and_loads(monkeypatch: pytest.MonkeyPatch, synthetic_data: Path,
                                                 tmp_path: Path) -> None:
    code, config = doc_blocks()
    assert f"_target_: {MODULE}.MelStatistics" in config
    # The module where the doc says it goes, without writing into the package: as if the file were there.
    module = types.ModuleType(MODULE)
    module.__file__ = str(tmp_path / "mel_statistics.py")
    exec(compile(code, module.__file__, "exec"), module.__dict__)  # noqa: S102 - the doc's own code
    monkeypatch.setitem(sys.modules, MODULE, module)
    (tmp_path / "conf" / "encoder").mkdir(parents=True)
    (tmp_path / "conf" / "encoder" / "mel_statistics.yaml").write_text(config)

    run = tmp_path / "run"
    cfg = compose(run, [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "encoder=mel_statistics",
                        f"data.dir={synthetic_data}", "data.batch_size=16", "debug=limit", "logger=csv",
                        "report.projector=false", "report.misclassified_audio=0"])
    assert cfg.model.encoder._target_ == f"{MODULE}.MelStatistics"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    assert 0.0 <= train(cfg) <= 1.0

    checkpoint = next((run / "checkpoints").glob("epoch_*.ckpt"))
    model = load_checkpoint(checkpoint).model
    assert type(model.encoder).__name__ == "MelStatistics" and model.encoder.output_dim == 64
    clip = torch.randn(1, 3000)
    with torch.no_grad():
        alone = model(clip, torch.tensor([3000]))
        padded = model(torch.nn.functional.pad(clip, (0, 2000)), torch.tensor([3000]))  # as in a batch
    assert alone.shape == (1, 10)
    torch.testing.assert_close(alone, padded)  # the documented encoder masks padding
