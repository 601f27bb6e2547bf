"""Convert a checkpoint with llama.cpp's convert_hf_to_gguf.py and with `llamapy convert`, and compare.

Needs torch and a llama.cpp source tree (LLAMA_CPP, default the vendored copy this project was checked
against). Same KV keys and values (general.* aside), same tensor names, shapes and types, same bytes.
For vocabularies llama.cpp's hash table does not list (our tiny trained ones), llama.cpp's converter is
told the pre-tokenizer name llamapy chose, since it would otherwise refuse them.

    .venv/bin/python tests/data/compare_llamacpp.py HF_DIR [outtype ...]
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

LLAMA_CPP = Path(os.environ.get("LLAMA_CPP", "/tmp/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp"))

# Runs llama.cpp's converter main(); an unknown BPE hash falls back to the name passed in LLAMAPY_PRE.
_RUNNER = """
import os, sys
sys.path.insert(0, sys.argv.pop(1))
sys.argv[0] = "convert_hf_to_gguf.py"
import conversion.base as base
original = base.TextModel.get_vocab_base_pre
def pre(self, tokenizer):
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        return os.environ["LLAMAPY_PRE"]
base.TextModel.get_vocab_base_pre = pre
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""


def read(path: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from llamapy.gguf.reader import GGUFFile

    g = GGUFFile(str(path))
    kv = {k: v for k, v in g.kv.items() if not k.startswith("general.") or k == "general.file_type"}
    tensors = {n: (tuple(t.shape), t.type_id, bytes(g.raw(n).reshape(-1).view(np.uint8))) for n, t in g.tensors.items()}
    return kv, tensors


def same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def compare(folder: Path, outtype: str, work: Path) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from llamapy.convert import convert

    ours = convert(folder, work / f"ours-{outtype}.gguf", outtype)
    theirs = work / f"llamacpp-{outtype}.gguf"
    env = {**os.environ, "LLAMAPY_PRE": ours.pre or "default"}
    subprocess.run([sys.executable, "-c", _RUNNER, str(LLAMA_CPP), str(folder), "--outfile", str(theirs),
                    "--outtype", outtype], check=True, env=env, capture_output=True)
    kv_a, t_a = read(ours.path)
    kv_b, t_b = read(theirs)
    problems = [f"key {k}: only in {'ours' if k in kv_a else 'llama.cpp'}" for k in sorted(set(kv_a) ^ set(kv_b))]
    problems += [f"key {k}: {str(kv_a[k])[:60]} vs {str(kv_b[k])[:60]}" for k in kv_a
                 if k in kv_b and not same(kv_a[k], kv_b[k])]
    problems += [f"tensor {n}: only in {'ours' if n in t_a else 'llama.cpp'}" for n in sorted(set(t_a) ^ set(t_b))]
    for n in t_a:
        if n in t_b and t_a[n] != t_b[n]:
            (sa, ta, _), (sb, tb, _) = t_a[n], t_b[n]
            what = "shape" if sa != sb else "type" if ta != tb else "bytes"
            problems.append(f"tensor {n}: {what} differs ({sa} {ta} vs {sb} {tb})")
    if list(t_a) != list(t_b):
        problems.append("tensor order differs")
    return problems, _sha256(ours.path) == _sha256(theirs)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main() -> int:
    folder = Path(sys.argv[1])
    outtypes = sys.argv[2:] or ["f32", "f16", "bf16", "q8_0"]
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for outtype in outtypes:
            problems, same_file = compare(folder, outtype, Path(tmp))
            failed |= bool(problems)
            verdict = ("identical (general.* aside)" + ("; whole files sha256-identical" if same_file else "")
                       if not problems else f"{len(problems)} differences")
            print(f"{folder.name} {outtype}: {verdict}")
            for p in problems[:20]:
                print("   ", p)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
