"""Tests for sdr_lightning.data.download against small archives built on the fly (no network)."""

from __future__ import annotations

import csv
import hashlib
import io
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sdr_lightning.data.download import (
    CHECKSUMS_FILENAME,
    FSDD_URL,
    METADATA_FILENAME,
    packaged_file,
    prepare_fsdd,
    read_checksums,
)
from sdr_lightning.errors import DataError

TOP = "free-spoken-digit-dataset-1.0.10"
CLIP_NAMES = [f"{digit}_{speaker}_{index}.wav" for digit, speaker in ((0, "alice"), (1, "bob"), (2, "carol"))
              for index in (0, 1)]


def _tone(frequency: float) -> bytes:
    buffer = io.BytesIO()
    t = np.arange(800) / 8000.0
    samples = (0.3 * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
    soundfile.write(buffer, samples, 8000, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    return {name: _tone(200.0 + 50.0 * i) for i, name in enumerate(CLIP_NAMES)}


@pytest.fixture
def dataset(tmp_path: Path, clips: dict[str, bytes]) -> dict[str, Path]:
    """A checksum manifest and metadata TSV for the synthetic clips, in the packaged formats."""
    manifest = tmp_path / "fsdd.sha256"
    manifest.write_text("".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in clips.items()))
    metadata = tmp_path / "meta.tsv"
    with metadata.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["", "identifier", "speaker", "split", "label", "file"])
        for row, name in enumerate(clips):
            identifier = name[:-4]
            digit, speaker, _ = identifier.split("_")
            split = ("TRAIN", "DEV", "TEST")[row % 3]
            writer.writerow([row, identifier, speaker, split, digit, f"speech_data/{identifier}.wav"])
    return {"checksums": manifest, "metadata": metadata, "target": tmp_path / "data"}


def _make_tar(path: Path, members: list[tuple[str, bytes]], extra: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        readme = tarfile.TarInfo(f"{TOP}/README.md")
        readme.size = 5
        archive.addfile(readme, io.BytesIO(b"hello"))
        folder = tarfile.TarInfo(f"{TOP}/recordings")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for info in extra:
            archive.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _release_members(clips: dict[str, bytes]) -> list[tuple[str, bytes]]:
    return [(f"{TOP}/recordings/{name}", data) for name, data in clips.items()]


def _prepare(dataset: dict[str, Path], url: str) -> Path:
    return prepare_fsdd(dataset["target"], url=url, checksums=dataset["checksums"], metadata=dataset["metadata"])


def _assert_prepared(target: Path, clips: dict[str, bytes], metadata: Path) -> None:
    for name, data in clips.items():
        assert (target / name).read_bytes() == data
    assert (target / METADATA_FILENAME).read_bytes() == metadata.read_bytes()
    # No temporary archive or half-written clip is left behind.
    assert sorted(p.name for p in target.iterdir()) == sorted([*clips, METADATA_FILENAME])


def test_prepare_from_tar_file_url(tmp_path, dataset, clips):
    archive = _make_tar(tmp_path / "fsdd.tar.gz", _release_members(clips))
    result = _prepare(dataset, archive.as_uri())
    assert result == dataset["target"]
    _assert_prepared(result, clips, dataset["metadata"])
    audio, rate = soundfile.read(result / CLIP_NAMES[0], dtype="int16")
    assert rate == 8000 and audio.shape == (800,)


def test_prepare_from_plain_path_is_idempotent(tmp_path, dataset, clips):
    archive = _make_tar(tmp_path / "fsdd.tgz", _release_members(clips))
    _prepare(dataset, str(archive))
    _assert_prepared(dataset["target"], clips, dataset["metadata"])
    archive.unlink()
    # All files already present: the (now missing) archive must not be touched.
    assert _prepare(dataset, str(archive)) == dataset["target"]
    assert _prepare(dataset, "http://127.0.0.1:9/fsdd.tar.gz") == dataset["target"]


def test_prepare_from_zip(tmp_path, dataset, clips):
    archive = tmp_path / "fsdd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{TOP}/README.md", "hello")
        for name, data in _release_members(clips):
            zf.writestr(name, data)
    _prepare(dataset, archive.as_uri())
    _assert_prepared(dataset["target"], clips, dataset["metadata"])


def test_unlisted_and_non_recordings_members_are_ignored(tmp_path, dataset, clips):
    members = _release_members(clips) + [
        (f"{TOP}/recordings/9_zed_0.wav", b"not in manifest"),
        (f"{TOP}/other/{CLIP_NAMES[0]}", b"wrong folder"),
    ]
    _prepare(dataset, str(_make_tar(tmp_path / "fsdd.tar.gz", members)))
    _assert_prepared(dataset["target"], clips, dataset["metadata"])


def test_checksum_mismatch(tmp_path, dataset, clips):
    members = _release_members(clips)
    members[2] = (members[2][0], members[2][1][:-2] + b"\x00\x01")
    with pytest.raises(DataError) as info:
        _prepare(dataset, str(_make_tar(tmp_path / "fsdd.tar.gz", members)))
    message = str(info.value)
    assert CLIP_NAMES[2] in message and "FSDD v1.0.10" in message
    assert hashlib.sha256(clips[CLIP_NAMES[2]]).hexdigest() in message
    assert not (dataset["target"] / CLIP_NAMES[2]).exists()
    assert not list(dataset["target"].glob(".*"))  # temp archive and temp clip removed


def test_missing_clips(tmp_path, dataset, clips):
    members = _release_members(clips)[:-2]
    with pytest.raises(DataError, match="lacks 2 of the 6") as info:
        _prepare(dataset, str(_make_tar(tmp_path / "fsdd.tar.gz", members)))
    assert CLIP_NAMES[-1] in str(info.value)
    assert not (dataset["target"] / METADATA_FILENAME).exists()


def test_hostile_members_never_escape_target(tmp_path, dataset, clips):
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    (work / "a" / "b").mkdir(parents=True)
    symlink = tarfile.TarInfo(f"{TOP}/recordings/{CLIP_NAMES[0]}")
    symlink.type = tarfile.SYMTYPE
    symlink.linkname = str(outside / "evil.wav")
    hardlink = tarfile.TarInfo(f"{TOP}/recordings/{CLIP_NAMES[1]}")
    hardlink.type = tarfile.LNKTYPE
    hardlink.linkname = f"{TOP}/README.md"
    device = tarfile.TarInfo(f"{TOP}/recordings/{CLIP_NAMES[2]}")
    device.type = tarfile.CHRTYPE
    garbage = b"garbage that would fail the checksum"
    # Hostile members come after the genuine ones and carry manifest names with wrong bytes:
    # if any were honoured, the checksum check would fail the run.
    hostile = [
        ("../evil.wav", garbage),
        (f"../recordings/{CLIP_NAMES[3]}", garbage),
        (f"{TOP}/recordings/../../recordings/{CLIP_NAMES[4]}", garbage),
        (f"{outside}/recordings/{CLIP_NAMES[5]}", garbage),
        (f"{outside}/evil.wav", garbage),
    ]
    archive = _make_tar(tmp_path / "fsdd.tar.gz", _release_members(clips) + hostile, extra=[symlink, hardlink, device])
    with tarfile.open(archive) as check:  # the absolute name really is stored absolute
        assert f"{outside}/recordings/{CLIP_NAMES[5]}" in check.getnames()
    before = sorted(p for p in tmp_path.rglob("*") if not p.is_relative_to(dataset["target"]))
    _prepare(dataset, str(archive))
    after = sorted(p for p in tmp_path.rglob("*") if not p.is_relative_to(dataset["target"]))
    assert after == before
    assert list(outside.iterdir()) == []
    assert not any(p.is_symlink() for p in dataset["target"].iterdir())
    _assert_prepared(dataset["target"], clips, dataset["metadata"])


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zip_traversal_and_symlink_members_are_skipped(tmp_path, dataset, clips):
    archive = tmp_path / "fsdd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        # Hostile entries first, named like real clips: honouring any would fail the checksum check.
        link = zipfile.ZipInfo(f"{TOP}/recordings/{CLIP_NAMES[2]}")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, str(tmp_path / "outside.wav"))
        zf.writestr(f"../recordings/{CLIP_NAMES[0]}", b"garbage")
        zf.writestr(f"/{TOP}/recordings/{CLIP_NAMES[3]}", b"garbage")
        zf.writestr(f"{TOP}\\recordings\\..\\..\\recordings\\{CLIP_NAMES[1]}", b"garbage")
        for name, data in _release_members(clips):
            zf.writestr(name, data)
    _prepare(dataset, str(archive))
    _assert_prepared(dataset["target"], clips, dataset["metadata"])
    assert not (tmp_path / "outside.wav").exists()


@pytest.mark.parametrize("content", [b"", b"this is not an archive\n" * 10, b"\x1f\x8b\x08\x00garbled gzip"])
def test_non_archive(tmp_path, dataset, content):
    bogus = tmp_path / "fsdd.tar.gz"
    bogus.write_bytes(content)
    with pytest.raises(DataError, match="not a readable tar/zip archive") as info:
        _prepare(dataset, bogus.as_uri())
    assert bogus.as_uri() in str(info.value)
    assert not list(dataset["target"].iterdir())  # temporary download removed


def test_truncated_archive(tmp_path, dataset, clips):
    archive = _make_tar(tmp_path / "fsdd.tar.gz", _release_members(clips))
    archive.write_bytes(archive.read_bytes()[:-40])
    with pytest.raises(DataError, match="not a readable tar/zip archive"):
        _prepare(dataset, str(archive))


def test_unreachable_url(dataset, monkeypatch):
    # Keep urllib off any configured proxy so only the closed local port is contacted.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(urllib.request, "_opener", None)
    url = "http://127.0.0.1:9/fsdd.tar.gz"
    with pytest.raises(DataError) as info:
        prepare_fsdd(dataset["target"], url=url, checksums=dataset["checksums"], metadata=dataset["metadata"],
                     timeout=5)
    message = str(info.value)
    assert f"Could not download FSDD v1.0.10 from {url}" in message
    assert "data.dir" in message and "SDR_DATA_DIR" in message and "data.download_url" in message
    assert isinstance(info.value.__cause__, OSError)
    assert not list(dataset["target"].iterdir())  # temporary download removed


def test_missing_local_archive(tmp_path, dataset):
    with pytest.raises(DataError, match="SDR_DATA_DIR"):
        _prepare(dataset, str(tmp_path / "nope.tar.gz"))
    with pytest.raises(DataError, match="SDR_DATA_DIR"):
        _prepare(dataset, (tmp_path / "nope.tar.gz").as_uri())


def test_read_packaged_checksums():
    checksums = read_checksums(packaged_file(CHECKSUMS_FILENAME))
    assert len(checksums) == 3000
    assert all(len(digest) == 64 for digest in checksums.values())
    assert "0_george_0.wav" in checksums
    assert FSDD_URL.endswith("/v1.0.10.tar.gz")


@pytest.mark.parametrize(
    "line", ["zzzz  0_a_0.wav", f"{'a' * 64}", f"{'a' * 63}  0_a_0.wav", f"{'a' * 64}  ../0_a_0.wav"]
)
def test_read_checksums_rejects_malformed_line(tmp_path, line):
    path = tmp_path / "bad.sha256"
    path.write_text(f"{'b' * 64}  0_b_0.wav\n{line}\n")
    with pytest.raises(DataError, match=r"bad\.sha256, line 2"):
        read_checksums(path)


def test_packaged_manifest_matches_packaged_metadata():
    checksums = read_checksums(packaged_file(CHECKSUMS_FILENAME))
    with packaged_file(METADATA_FILENAME).open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 3000
    identifiers = {row["identifier"] for row in rows}
    assert {f"{identifier}.wav" for identifier in identifiers} <= set(checksums)
    assert all(row["file"] == f"speech_data/{row['identifier']}.wav" for row in rows)
