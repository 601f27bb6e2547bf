"""-hf user/repo[:QUANT] and split models, never touching the network.

A fake hub on 127.0.0.1 answers the two endpoints huggingface_hub calls (the repo tree, and HEAD/GET
of resolve/main/FILE); HF_ENDPOINT points at it and HF_HUB_CACHE at a temporary folder. The model it
serves is SmolLM2 split by gguf-py's writer into llama-gguf-split's layout, so a correct read of the
shards must give llama.cpp's logits for the unsplit file.
"""

import hashlib
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import model_path
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from llamapy.gguf.split import SplitGGUF, open_gguf, split_paths
from llamapy.hub import ModelNotFound, parse_hf_spec, pick_gguf, resolve_hf

LLAMAPY = [sys.executable, "-m", "llamapy.commands.main"]
REPO = "fake-org/SmolLM2-135M-Instruct-GGUF"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# --- quant selection ------------------------------------------------------------------------------

FILES = ["README.md", "model-Q2_K.gguf", "model-Q4_K_M.gguf", "model-q8_0.gguf", "mmproj-model-f16.gguf",
         "big/model-Q6_K-00001-of-00003.gguf", "big/model-Q6_K-00002-of-00003.gguf",
         "big/model-Q6_K-00003-of-00003.gguf"]


def test_quant_tag_picks_a_file_case_insensitively():
    assert pick_gguf(FILES, None) == ["model-Q4_K_M.gguf"]
    assert pick_gguf(FILES, "q2_k") == ["model-Q2_K.gguf"]
    assert pick_gguf(FILES, "Q8_0") == ["model-q8_0.gguf"]
    assert pick_gguf(FILES, "Q4_K") == []  # a tag is followed by '.' or '-': Q4_K is not Q4_K_M
    assert pick_gguf(FILES, "F16") == []  # mmproj files are not models
    assert pick_gguf([f for f in FILES if "Q4_K_M" not in f], None) == ["model-q8_0.gguf"]
    assert pick_gguf(["b-Q5_K_S.gguf", "a-IQ4_XS.gguf"], None) == ["b-Q5_K_S.gguf"]


def test_split_model_tag_fetches_every_shard():
    assert pick_gguf(FILES, "q6_k") == [f"big/model-Q6_K-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


def test_hf_spec_parsing():
    assert parse_hf_spec("user/repo:Q4_K_M") == ("user/repo", "Q4_K_M")
    assert parse_hf_spec("user/repo") == ("user/repo", None)
    with pytest.raises(ModelNotFound, match="user/repo"):
        parse_hf_spec("just-a-name")


# --- split files ----------------------------------------------------------------------------------

def split_gguf(source: Path, target: Path, n_shards: int) -> list[Path]:
    """Write source as n_shards files in llama-gguf-split's layout (gguf-py's writer, split.* keys)."""
    reader = GGUFReader(source)
    arch = str(reader.fields["general.architecture"].contents())
    per_shard = -(-len(reader.tensors) // n_shards)
    writer = GGUFWriter(target, arch, split_max_tensors=per_shard)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        qtype = GGMLQuantizationType(t.tensor_type)
        quantized = qtype not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16)
        writer.add_tensor(t.name, t.data, raw_dtype=qtype if quantized else None)  # data: bytes [rows, row bytes]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(target.parent.glob(target.stem + "-*-of-*.gguf"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("split")
    return split_gguf(model_path("smollm2"), folder / "SmolLM2-135M-Instruct-Q4_1.gguf", 3)


def test_split_shards_read_as_one_model(shards, reference_dir):
    from llamapy.gguf.reader import GGUFFile
    from llamapy.model import Model

    assert [p.name for p in shards] == [f"SmolLM2-135M-Instruct-Q4_1-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert split_paths(shards[1]) == shards
    whole = GGUFFile(model_path("smollm2"))
    split = open_gguf(shards[0])
    assert isinstance(split, SplitGGUF) and split.tensors.keys() == whole.tensors.keys()
    assert split.kv["tokenizer.chat_template"] == whole.kv["tokenizer.chat_template"]
    assert all(np.array_equal(split.raw(n), whole.raw(n)) for n in ("token_embd.weight", "blk.29.ffn_down.weight"))

    model = Model(shards[0])
    ref = np.load(reference_dir / "smollm2" / "logits.npz")
    logits = model.logits(ref["p0_ids"])
    assert (logits.argmax(axis=1) == ref["p0_top_ids"][:, 0]).all()


def test_missing_shard_is_one_clear_error(shards, tmp_path):
    for p in shards[:2]:
        (tmp_path / p.name).symlink_to(p)
    with pytest.raises(FileNotFoundError, match="missing 1 of 3 shards"):
        open_gguf(tmp_path / shards[0].name)


# --- the fake hub ---------------------------------------------------------------------------------

class FakeHub(BaseHTTPRequestHandler):
    files: dict[str, Path] = {}
    requests: list[str] = []

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def _file(self) -> Path | None:
        prefix = f"/{REPO}/resolve/main/"
        return self.files.get(self.path[len(prefix):]) if self.path.startswith(prefix) else None

    def do_HEAD(self):
        self.requests.append("HEAD " + self.path)
        self._answer_file(body=False)

    def do_GET(self):
        self.requests.append("GET " + self.path)
        if self.path.split("?")[0] == f"/api/models/{REPO}/tree/main":
            tree = [{"type": "file", "path": name, "size": p.stat().st_size,
                     "oid": hashlib.sha1(name.encode()).hexdigest()} for name, p in self.files.items()]
            return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
        if self.path.startswith("/api/models/"):
            return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        self._answer_file(body=True)

    def _answer_file(self, body: bool):
        path = self._file()
        if path is None:
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
        data = path.read_bytes() if body else b""
        etag = hashlib.sha256(path.name.encode()).hexdigest()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Content-Length": str(path.stat().st_size)}
        self._send(200, data, headers, length_set=True)

    def _send(self, status, data, headers, length_set=False):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if not length_set:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)


@pytest.fixture
def hub(shards, tmp_path, monkeypatch):
    decoy = tmp_path / "decoy.gguf"
    decoy.write_bytes(b"not a model")
    FakeHub.files = {p.name: p for p in shards} | {"SmolLM2-135M-Instruct-Q8_0.gguf": decoy}
    FakeHub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield env
    server.shutdown()
    server.server_close()


def test_hf_downloads_the_quant_then_serves_it_offline(hub, shards, reference_dir, monkeypatch):
    case = json.loads((reference_dir / "smollm2" / "greedy.jsonl").read_text().splitlines()[0])
    result = subprocess.run([*LLAMAPY, "simple", "-hf", f"{REPO}:q4_1", "-n", "4", case["prompt"]],
                            capture_output=True, text=True, timeout=300, env={**_base_env(), **hub})
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") and (case["prompt"] + case["continuation"]).startswith(result.stdout.rstrip("\n"))
    fetched = {r.split("/resolve/main/")[1] for r in FakeHub.requests if r.startswith("GET /" + REPO)}
    assert fetched == {p.name for p in shards}  # every shard, never the other quant

    snapshot = Path(hub["HF_HUB_CACHE"]) / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT
    assert resolve_hf(f"{REPO}:Q4_1") == snapshot / shards[0].name

    FakeHub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_hf(f"{REPO}:Q4_1") == snapshot / shards[0].name  # a cache hit offline
    assert FakeHub.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the hub is unreachable
    assert resolve_hf(f"{REPO}:q4_1") == snapshot / shards[0].name


def test_hf_cache_miss_offline_is_one_clear_line(hub):
    env = {**_base_env(), **hub, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([*LLAMAPY, "chat", "-hf", "fake-org/not-cached-GGUF", "-st", "-p", "hi"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: -hf fake-org/not-cached-GGUF: not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE=1" in lines[0] and "Traceback" not in result.stderr


def test_hf_unknown_quant_lists_the_files(hub):
    with pytest.raises(ModelNotFound, match="no file for quant IQ2_XXS.*Q8_0"):
        resolve_hf(f"{REPO}:IQ2_XXS")


def _base_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
