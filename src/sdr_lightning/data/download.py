"""Fetch the Free Spoken Digit Dataset (v1.0.10) into a data folder, safely and verifiably.

`prepare_fsdd` downloads the release archive (or reads a local copy), extracts only the
`recordings/*.wav` clips named in the shipped checksum manifest, checks each clip's sha256 and
places the shipped `SDR_metadata.tsv` beside them.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from sdr_lightning.data.metadata import METADATA_FILENAME
from sdr_lightning.errors import DataError

log = logging.getLogger(__name__)

FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
CHECKSUMS_FILENAME = "fsdd_v1.0.10.sha256"
RECORDINGS_FOLDER = "recordings"

_CHUNK = 1 << 16
# FSDD clips are a few kB each; the cap stops a hostile or broken archive from filling the disk
# before the checksum check could catch it.
_MAX_CLIP_BYTES = 16 << 20
_CHECKSUM_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def packaged_file(name: str) -> Path:
    """Path of a data file shipped inside the `sdr_lightning.data` package."""
    path = Path(str(importlib.resources.files("sdr_lightning.data").joinpath(name)))
    if not path.is_file():
        raise DataError(f"Packaged data file {name} not found at {path}; reinstall sdr_lightning.")
    return path


def read_checksums(path: Path) -> dict[str, str]:
    """Parse a `sha256sum`-style manifest (`<hex>  <name>` per line) into {file name: lowercase hex}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"Cannot read checksum manifest {path}: {err}.") from err
    checksums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _CHECKSUM_LINE.match(line.rstrip("\r"))
        name = match.group(2).strip() if match else ""
        # Names become file names inside the data folder, so anything path-like is refused here.
        if not match or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise DataError(
                f"{path}, line {number}: malformed checksum line {line!r}; "
                "expected '<64 hex digits>  <file name>' as written by sha256sum."
            )
        digest = match.group(1).lower()
        if checksums.get(name, digest) != digest:
            raise DataError(f"{path}, line {number}: {name} is listed twice with different checksums.")
        checksums[name] = digest
    if not checksums:
        raise DataError(f"Checksum manifest {path} lists no files.")
    return checksums


def prepare_fsdd(
    target_dir: str | Path,
    url: str = FSDD_URL,
    checksums: str | Path | None = None,
    metadata: str | Path | None = None,
    timeout: float = 60.0,
) -> Path:
    """Make `target_dir` hold every FSDD v1.0.10 clip (verified) plus `SDR_metadata.tsv`; return it.

    Does nothing when all clips and the metadata file are already there. `url` may be an
    http(s) or file:// URL or a local path to a .tar.gz/.tgz/.zip archive.
    """
    target = Path(target_dir).expanduser()
    checksum_path = Path(checksums) if checksums is not None else packaged_file(CHECKSUMS_FILENAME)
    metadata_path = Path(metadata) if metadata is not None else packaged_file(METADATA_FILENAME)
    manifest = read_checksums(checksum_path)
    if not metadata_path.is_file():
        raise DataError(f"Metadata file {metadata_path} not found; pass an existing SDR_metadata.tsv.")

    if (target / METADATA_FILENAME).is_file() and all((target / name).is_file() for name in manifest):
        log.info("FSDD already prepared in %s (%d clips); skipping download.", target, len(manifest))
        return target

    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"Cannot create data folder {target}: {err}.") from err

    with _archive_file(url, target, metadata_path, timeout) as archive:
        written = _extract_clips(archive, url, target, manifest)
    log.info("Extracted and verified %d clips into %s", written, target)

    missing = sorted(name for name in manifest if not (target / name).is_file())
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(
            f"The archive from {url} lacks {len(missing)} of the {len(manifest)} FSDD v1.0.10 clips "
            f"({shown}); it is incomplete or not FSDD v1.0.10. Pass the full release archive via data.download_url "
            f"or copy the missing clips into {target}."
        )

    with _atomic_output(target / METADATA_FILENAME) as out:
        with metadata_path.open("rb") as src:
            shutil.copyfileobj(src, out)
    log.info("Wrote %s", target / METADATA_FILENAME)
    return target


def _download_error(url: str, target: Path, metadata_path: Path, reason: str) -> DataError:
    return DataError(
        f"Could not download FSDD v1.0.10 from {url} ({reason}). To provide the data yourself, either "
        f"put the 3000 clips and SDR_metadata.tsv in {target} (e.g. copy the clips from a local FSDD "
        f"checkout's recordings/ folder and the metadata from {metadata_path}), or point data.dir=... "
        f"or the SDR_DATA_DIR environment variable at such a folder, or download the archive elsewhere "
        f"and pass data.download_url=/path/to/archive.tar.gz."
    )


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return str(err) or type(err).__name__


@contextmanager
def _archive_file(url: str, target: Path, metadata_path: Path, timeout: float) -> Iterator[Path]:
    """Yield a local path to the archive, downloading into a temporary file in `target` if needed."""
    scheme = urllib.parse.urlsplit(url).scheme
    # A one-letter scheme is a Windows drive ("C:\..."), i.e. a plain path.
    if len(scheme) <= 1:
        local = Path(url).expanduser()
        if not local.is_file():
            raise _download_error(url, target, metadata_path, f"no such file: {local}")
        log.info("Using local FSDD archive %s", local)
        yield local
        return

    fd, temp_name = tempfile.mkstemp(dir=target, prefix=".fsdd-download-", suffix=".part")
    temp = Path(temp_name)
    try:
        log.info("Downloading FSDD v1.0.10 from %s", url)
        request = urllib.request.Request(url, headers={"User-Agent": "sdr-lightning"})
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
                size = 0
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    size += len(chunk)
        except (OSError, HTTPException, ValueError) as err:  # URLError, HTTPError and timeouts are OSErrors
            raise _download_error(url, target, metadata_path, _describe(err)) from err
        log.info("Downloaded %.1f MB", size / 1e6)
        yield temp
    finally:
        temp.unlink(missing_ok=True)


def _member_basename(name: str) -> str | None:
    """The clip file name for an archive member path `.../recordings/<x>.wav`, or None to skip it."""
    normalized = name.replace("\\", "/")
    parts = PurePosixPath(normalized).parts
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized) or ".." in parts:
        return None
    if len(parts) < 2 or parts[-2] != RECORDINGS_FOLDER or not parts[-1].lower().endswith(".wav"):
        return None
    return parts[-1]


def _tar_members(archive: tarfile.TarFile) -> Iterator[tuple[str, BinaryIO]]:
    for member in archive:
        basename = _member_basename(member.name)
        # isreg() excludes directories, symlinks, hardlinks, devices and fifos.
        if basename is None or not member.isreg():
            continue
        stream = archive.extractfile(member)
        if stream is not None:
            yield basename, stream


def _zip_members(archive: zipfile.ZipFile) -> Iterator[tuple[str, BinaryIO]]:
    for info in archive.infolist():
        basename = _member_basename(info.filename)
        file_type = stat.S_IFMT(info.external_attr >> 16)
        # Archives made without Unix modes carry no file type; only an explicit non-regular one is refused.
        if basename is None or info.is_dir() or (file_type and file_type != stat.S_IFREG):
            continue
        yield basename, archive.open(info)


def _extract_clips(archive_path: Path, url: str, target: Path, manifest: dict[str, str]) -> int:
    """Write every manifest clip found in the archive to `target`, verified; return how many."""
    not_archive = DataError(
        f"The file downloaded from {url} is not a readable tar/zip archive (corrupt or truncated download, "
        "or not the FSDD release archive). Download it again or pass a valid archive via data.download_url."
    )
    written: set[str] = set()
    try:
        if tarfile.is_tarfile(archive_path):
            opened: tarfile.TarFile | zipfile.ZipFile = tarfile.open(archive_path, "r:*")
            members = _tar_members
        elif zipfile.is_zipfile(archive_path):
            opened = zipfile.ZipFile(archive_path)
            members = _zip_members  # type: ignore[assignment]
        else:
            raise not_archive
        with opened:
            for basename, stream in members(opened):  # type: ignore[arg-type]
                with stream:
                    if basename in manifest and basename not in written:
                        _write_clip(stream, target / basename, manifest[basename], url)
                        written.add(basename)
    except (*_ARCHIVE_ERRORS, RuntimeError) as err:  # RuntimeError: encrypted zip members
        raise not_archive from err
    return len(written)


def _write_clip(stream: BinaryIO, destination: Path, expected: str, url: str) -> None:
    digest = hashlib.sha256()
    size = 0
    with _atomic_output(destination) as out:
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            if size > _MAX_CLIP_BYTES:
                raise DataError(
                    f"Clip {destination.name} in the archive from {url} exceeds {_MAX_CLIP_BYTES >> 20} MiB; "
                    "the archive is corrupt or not FSDD v1.0.10."
                )
            digest.update(chunk)
            out.write(chunk)
        actual = digest.hexdigest()
        if actual != expected:
            # Raising inside the block discards the temporary file, so the bad clip never lands.
            raise DataError(
                f"Checksum mismatch for clip {destination.name} from {url}: expected sha256 {expected}, "
                f"got {actual}. The archive is corrupt or not FSDD v1.0.10; the clip was not kept."
            )


@contextmanager
def _atomic_output(destination: Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside `destination`; move it into place only if the block succeeds."""
    fd, temp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(temp_name, destination)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
