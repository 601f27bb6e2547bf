"""A model file as the cluster knows it: name, size and sha256; finding a worker's own copy of it.

The main host hashes its GGUF once (the digest is cached by path, size and mtime in llamapy's cache
folder) and sends the reference to every worker. A worker opens a file only if its digest is the same:
at the main host's path, in the worker's model folders (`rpc-server --model-dir`), beside the default
model, or in its Hugging Face cache. Without one, the worker receives its layers over the wire.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..gguf.split import split_paths
from ..hub import DEFAULT_MODEL_FILE, DEFAULT_MODEL_PACKAGE, cache_dir, hf_cache_root, package_dir


@dataclass(frozen=True)
class ModelRef:
    path: str  # where the main host has it (a split model: its first shard)
    name: str  # the file name (first shard's)
    size: int  # bytes, all shards together
    sha256: str  # of the file; of a split model, of its shards' digests in order


def model_ref(path: str | os.PathLike) -> ModelRef:
    path = Path(path).resolve()
    files = split_paths(path) or [path]
    return ModelRef(str(path), path.name, sum(f.stat().st_size for f in files), model_digest(path))


def model_digest(path: str | os.PathLike) -> str:
    files = split_paths(path)
    if files is None:
        return file_sha256(path)
    return hashlib.sha256("\n".join(file_sha256(f) for f in files).encode()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered by (real path, size, mtime) so a model is hashed once."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key, stamp = real, [st.st_size, st.st_mtime_ns]
    known = _load_hashes()
    entry = known.get(key)
    if entry and entry[:2] == stamp:
        return entry[2]
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    hexdigest = digest.hexdigest()
    known[key] = [*stamp, hexdigest]
    _save_hashes(known)
    return hexdigest


def _hash_file() -> Path:
    return cache_dir() / "sha256.json"


def _load_hashes() -> dict:
    try:
        data = json.loads(_hash_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_hashes(known: dict) -> None:
    target = _hash_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=target.parent, delete=False, suffix=".tmp") as tmp:
            json.dump(known, tmp)
        os.replace(tmp.name, target)
    except OSError:
        pass  # a read-only cache only costs hashing again next time


def candidates(ref: ModelRef, model_dirs: list[str]) -> list[Path]:
    """Where a copy of ref may be on this host, most likely first."""
    found = [Path(ref.path)]
    found += [Path(d).expanduser() / ref.name for d in model_dirs]
    if ref.name == DEFAULT_MODEL_FILE:
        folder = package_dir(DEFAULT_MODEL_PACKAGE)
        if folder is not None:
            found.append(folder / DEFAULT_MODEL_FILE)
    root = hf_cache_root()
    if root.is_dir():
        found += sorted(root.glob(f"models--*/snapshots/*/{ref.name}"))
        found += sorted(root.glob(f"models--*/snapshots/*/*/{ref.name}"))
    return list(dict.fromkeys(found))


def find_copy(ref: ModelRef, model_dirs: list[str] = ()) -> Path | None:
    """This host's copy of the main host's model, verified by size and digest; None without one."""
    for path in candidates(ref, list(model_dirs)):
        try:
            files = split_paths(path) or [path]
            if sum(f.stat().st_size for f in files) != ref.size:
                continue
            if model_digest(path) == ref.sha256:
                return path
        except OSError:
            continue
    return None
