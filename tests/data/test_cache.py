"""The clip and feature cache never serves a stale entry, works for a group sharing it, and stays under its bound."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import sdr_lightning.data.cache as cache_module
from sdr_lightning.data.cache import TensorCache, clips_key
from sdr_lightning.data.datamodule import SpokenDigitDataModule


@pytest.fixture(autouse=True)
def empty_memory_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "_MEMORY", {})


def datamodule(data: Path, cache: Path, **kwargs) -> SpokenDigitDataModule:
    dm = SpokenDigitDataModule(dir=str(data), cache_dir=str(cache), download=False, **kwargs)
    dm.setup("fit")
    return dm


def replace_keeping_size_and_mtime(path: Path, seed: int) -> None:
    """Another recording of the same length over the old one, its modification time put back (as rsync -t or a
    restore from backup does)."""
    stat = path.stat()
    samples, rate = soundfile.read(path, dtype="int16")
    other = np.random.default_rng(seed).integers(-3000, 3000, len(samples)).astype(np.int16)
    soundfile.write(path, other, rate, subtype="PCM_16")
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_replaced_clip_of_the_same_size_and_mtime_is_decoded_again(synthetic_data: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    first = datamodule(data, tmp_path / "cache")
    clip = first.splits["DEV"][0]
    before = first.datasets["DEV"].tensors[0].clone()
    time.sleep(0.01)  # a later inode change time
    replace_keeping_size_and_mtime(clip.path, seed=1)
    monkeypatch.setattr(cache_module, "_MEMORY", {})
    second = datamodule(data, tmp_path / "cache")
    after = second.datasets["DEV"].tensors[0]
    assert after.shape == before.shape and not torch.equal(after, before)  # the new recording, not the cached one


def test_verify_cache_keys_clips_by_their_contents(synthetic_data: Path, tmp_path: Path) -> None:
    files = [(path.stem, path) for path in sorted(synthetic_data.glob("*.wav"))[:3]]
    copies = tmp_path / "copies"
    copies.mkdir()
    moved = []
    for identifier, path in files:
        shutil.copy2(path, copies / path.name)
        moved.append((identifier, copies / path.name))
    # by metadata the copies differ (their paths); by contents, only the path is left to tell them apart
    assert clips_key(files, 8000) != clips_key(files, 8000, verify=True)
    key = clips_key(moved, 8000, verify=True)
    replace_keeping_size_and_mtime(moved[0][1], seed=2)
    assert clips_key(moved, 8000, verify=True) != key
    dm = datamodule(synthetic_data, tmp_path / "cache", verify_cache=True)
    assert len(dm.datasets["TRAIN"]) == 80


def test_cache_files_follow_the_umask(synthetic_data: Path, tmp_path: Path) -> None:
    previous = os.umask(0o002)  # a group that shares the cache
    try:
        datamodule(synthetic_data, tmp_path / "cache")
    finally:
        os.umask(previous)
    modes = {path.stat().st_mode & 0o777 for path in (tmp_path / "cache").glob("*.pt")}
    assert modes == {0o664}  # not mkstemp's 0600


def entry(values: int) -> list[torch.Tensor]:
    return [torch.zeros(values)]


def test_the_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    size = len(torch.zeros(25_000).numpy().tobytes())  # ~100 kB per entry on disk
    cache = TensorCache(tmp_path, max_bytes=int(3.5 * size))
    for name in ("a", "b", "c"):
        cache.get(name, lambda: entry(25_000))
        time.sleep(0.01)
    cache_module._MEMORY.clear()
    cache.get("a", lambda: pytest.fail("a is on disk"))  # read: a is now the most recently used
    time.sleep(0.01)
    cache.get("d", lambda: entry(25_000))  # over the bound: b, the least recently used, goes
    assert {name for name in "abcd" if cache.entry(name).is_file()} == {"a", "c", "d"}
    assert sum(path.stat().st_size for path in tmp_path.glob("*.pt")) <= 3.5 * size


def test_the_bound_comes_from_data_cache_max_gb(make_cfg) -> None:
    from sdr_lightning.tasks.train import build

    assert build(make_cfg())[0].cache.max_bytes == 2 * 10**9
    assert build(make_cfg("data.cache_max_gb=0.5"))[0].cache.max_bytes == 5 * 10**8
    assert build(make_cfg("data.cache_max_gb=null"))[0].cache.max_bytes is None
