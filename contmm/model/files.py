"""Damaged model files, found before a loader trips on them.

A download or copy cut short, a shard missing from a sharded checkpoint, or a JSON file
that does not parse makes transformers, diffusers or safetensors fail deep inside, often
naming no file ("incomplete metadata, file not fully covered"). Every place contmm loads
weights from checks a local directory first, cheaply (JSON files parsed, weight files'
headers and sizes; no weights read), and turns what the loader itself raises into one line
naming the setting and the directory. A hub id has nothing local to check: the hub client
reports its own errors.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

# What transformers / diffusers / safetensors raise for files they cannot read (a JSON
# error is a ValueError).
LOADER_ERRORS = (OSError, ValueError, SafetensorError)

AGAIN = "download or copy it again"


def check_model_dir(path: str, setting: str, parts: Iterable[str] = ()) -> None:
    """Every JSON file of the local directory ``path`` (``setting``'s value) parses, every
    shard its index files list is there, and its weight files are whole; ``parts`` are
    subfolders loaded too (a diffusers pipeline's ``unet/``, ``vae/``, ...)."""
    directory = Path(path)
    if not directory.is_dir():
        return
    for folder in [directory, *(directory / part for part in sorted(parts))]:
        for file in sorted(folder.glob("*.json")):
            _checked(file, setting, _check_json)
        for index in sorted(folder.glob("*.index.json")):
            _checked(index, setting, _check_shards)
        for file in _weight_files(folder):
            _checked(file, setting, _check_weights)


def load_safetensors(file: str, setting: str) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``file`` (``setting``'s value), checked first."""
    _checked(Path(file), setting, _check_safetensors)
    with loader_errors(setting, file):
        return load_file(file)


@contextmanager
def loader_errors(setting: str, path: str) -> Iterator[None]:
    """What a loader raises for ``path`` as one line naming ``setting`` and ``path`` (a
    ValueError, which the CLI prints as ``contmm: error: ...``)."""
    try:
        yield
    except LOADER_ERRORS as error:
        message = " ".join(str(error).split())  # one line: hub errors run over several
        raise ValueError(f"{setting} {path!r}: cannot load it: {message}") from None


def _damaged(setting: str, file: Path, problem: str) -> ValueError:
    return ValueError(f"{setting}: {file} {problem}")


def _checked(file: Path, setting: str, check) -> None:
    """``check(file)``, its problem or an unreadable file as one line naming the file."""
    try:
        problem = check(file)
    except OSError as error:
        problem = f"cannot be read ({error.strerror or error})"
    if problem:
        raise _damaged(setting, file, problem)


def _check_json(file: Path) -> str | None:
    try:
        json.loads(file.read_text(encoding="utf-8"))
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        return f"is not valid JSON ({error})"
    return None


def _check_shards(index: Path) -> str | None:
    """Every shard a sharded checkpoint's index lists is there, all missing ones named at
    once (transformers stops at the first with a bare FileNotFoundError)."""
    table = json.loads(index.read_text(encoding="utf-8"))
    weight_map = table.get("weight_map") if isinstance(table, dict) else None
    if not isinstance(weight_map, dict):
        return "has no weight_map (the shard of each weight)"
    missing = sorted(name for name in set(weight_map.values()) if not (index.parent / name).is_file())
    if missing:
        return f"lists shard(s) that are missing: {', '.join(missing)} ({AGAIN})"
    return None


def _weight_files(folder: Path) -> list[Path]:
    """The weight files a loader reads: the safetensors ones where there are any (transformers
    and diffusers prefer them), else the pickled ``.bin`` ones."""
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def _check_weights(file: Path) -> str | None:
    return _check_safetensors(file) if file.suffix == ".safetensors" else _check_pickled(file)


def _check_safetensors(file: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header giving each tensor's
    byte range, and the tensors: the file must reach the end of the last range."""
    size = file.stat().st_size
    with file.open("rb") as stream:
        head = stream.read(8)
        if head == b"version ":
            return "is a Git LFS pointer, not the weights (`git lfs pull` fetches them)"
        length = int.from_bytes(head, "little")
        if len(head) < 8 or 8 + length > size:
            return f"is truncated: {size} bytes, shorter than its own header ({AGAIN})"
        try:
            header = json.loads(stream.read(length))
            end = max(
                (entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"),
                default=0,
            )
        except (ValueError, LookupError, TypeError, AttributeError):
            return "is not a safetensors file: its header is not a JSON table of tensors"
    if size < 8 + length + end:
        return f"is truncated: {size} of the {8 + length + end} bytes its header describes ({AGAIN})"
    return None


def _check_pickled(file: Path) -> str | None:
    """``torch.save`` writes a zip archive, whose directory is at its end: a file cut short
    has none. (Pickles from before PyTorch 1.6, not zipped, start with the pickle protocol
    byte and are left to the loader.)"""
    with file.open("rb") as stream:
        legacy = stream.read(1) == b"\x80"
    if not legacy and not zipfile.is_zipfile(file):
        return f"is truncated or not a PyTorch weight file: it is no whole zip archive ({AGAIN})"
    return None
