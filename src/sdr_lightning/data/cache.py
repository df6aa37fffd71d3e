"""The datamodule's cache of decoded clips and computed features: per process in memory, and shared on disk.

- Keyed by content: a clip's path, size, modification and inode-change times (a file replaced by one of the same
  size with its mtime put back still changes its ctime), or with `verify` a hash of its bytes; features add the
  featurizer's settings. A stale entry is never served; a changed clip gets a new entry.
- An entry is one file, written to a temporary name beside it and renamed, so readers never see half of one and
  processes sharing the folder (DDP ranks, parallel jobs) never clash. Its mode follows the umask (a shared cache
  works for the group); an unreadable entry is rebuilt.
- The folder is bounded: after each write, the least recently used entries go until it holds at most `max_bytes`
  (`data.cache_max_gb`). Reading an entry marks it used.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from sdr_lightning.files import write_atomically

log = logging.getLogger(__name__)

CACHE_VERSION = 2
SUFFIX = ".pt"
# Keyed by content, so repeated setups in one process (multiruns, tests) decode and featurize once.
_MEMORY: dict[str, list[Tensor]] = {}


def clips_key(files: Iterable[tuple[str, Path]], sample_rate: int, verify: bool = False) -> str:
    """A key for the decoded clips of `files` ((identifier, path) pairs): their paths, sizes and times, or with
    `verify` their contents' sha256 (reads every file)."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{sample_rate}|verify={verify}".encode())
    for identifier, path in files:
        if verify:
            stamp = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            stat = path.stat()
            stamp = f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"
        digest.update(f"|{identifier}:{path}:{stamp}".encode())
    return digest.hexdigest()


class TensorCache:
    """Lists of tensors by key, in memory and (with `folder`) on disk, at most `max_bytes` there."""

    def __init__(self, folder: Path | None, max_bytes: int | None = None) -> None:
        self.folder, self.max_bytes = folder, max_bytes

    def entry(self, key: str) -> Path | None:
        """The file that holds (or would hold) `key`'s tensors; None without a folder."""
        return self.folder / f"{_name(key)}{SUFFIX}" if self.folder else None

    def get(self, key: str, compute: Callable[[], list[Tensor]]) -> list[Tensor]:
        name, path = _name(key), self.entry(key)
        if name in _MEMORY:
            self._touch(path)
            return _MEMORY[name]
        if path is not None and path.is_file():
            try:
                tensors = _unflatten(torch.load(path, weights_only=True))
            except Exception as err:  # noqa: BLE001 - a truncated or foreign entry is rebuilt, not fatal
                log.warning("Ignoring unreadable cache %s (%s); rebuilding it", path, err)
            else:
                self._touch(path)
                _MEMORY[name] = tensors
                return tensors
        tensors = compute()
        if path is not None:
            self._write(path, tensors)
            self.prune(keep=path)
        _MEMORY[name] = tensors
        return tensors

    def _write(self, path: Path, tensors: Sequence[Tensor]) -> None:
        buffer = io.BytesIO()
        torch.save(_flatten(tensors), buffer)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, buffer.getbuffer(), sync=False)  # a cache entry lost in a crash is just rebuilt
        except OSError as err:  # a full disk costs the cache entry, not the run
            log.warning("Could not write the cache entry %s (%s); continuing without it", path, err)

    @staticmethod
    def _touch(path: Path | None) -> None:
        """Mark an entry used (its mtime): what pruning ranks by. Access times are often not kept (noatime)."""
        if path is not None:
            try:
                os.utime(path)
            except OSError:
                pass  # not on disk (memory only), or read-only: it just ranks older

    def prune(self, keep: Path | None = None) -> list[Path]:
        """Remove least recently used entries until the folder holds at most `max_bytes`; never `keep`."""
        if self.folder is None or self.max_bytes is None or not self.folder.is_dir():
            return []
        entries = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            try:
                stat = path.stat()
            except OSError:
                continue  # removed meanwhile by another process
            entries.append((stat.st_mtime_ns, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            removed.append(path)
        if removed:
            log.info("Cache %s: removed %d least recently used entr%s to stay under %.2f GB", self.folder,
                     len(removed), "y" if len(removed) == 1 else "ies", self.max_bytes / 1e9)
        return removed


def _name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def clear_memory() -> None:
    """Forget what this process decoded and featurized, so the next setup reads the disk cache (benchmarks)."""
    _MEMORY.clear()


def _flatten(tensors: Sequence[Tensor]) -> dict[str, Tensor]:
    """One contiguous tensor plus lengths: far faster to save and load than thousands of small tensors."""
    return {"data": torch.cat([t.reshape(-1, t.shape[-1]) for t in tensors], dim=-1),
            "lengths": torch.tensor([t.shape[-1] for t in tensors]),
            "squeeze": torch.tensor(tensors[0].dim() == 1)}


def _unflatten(blob: dict[str, Tensor]) -> list[Tensor]:
    parts = torch.split(blob["data"], blob["lengths"].tolist(), dim=-1)
    return [p.reshape(-1) if bool(blob["squeeze"]) else p for p in parts]
