"""Token ids of our tokenizer on each converted fixture against llama.cpp's (llama-tokenize) and transformers'.

Needs a built llama-tokenize (llama.cpp's tools/tokenize; LLAMA_TOKENIZE, default /tmp/lcbuild/bin/...).
Each fixture is converted by `llamapy convert`; transformers' ids are the ones saved in reference.npz.
Extra GGUF paths given on the command line are compared with llama.cpp only.

    .venv/bin/python tests/data/compare_llamacpp_tokenizer.py [EXTRA.gguf ...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from llamapy.convert import convert  # noqa: E402
from llamapy.model import Model  # noqa: E402

HF = ROOT / "tests" / "data" / "hf"
TOKENIZE = os.environ.get("LLAMA_TOKENIZE", "/tmp/lcbuild/bin/llama-tokenize")
EXTRA_STRINGS = ["Hello<|im_start|>user\nHi<|im_end|>", "<s>[INST] Hi [/INST]", "   \n\t  x",
                 "ñandú Ελληνικά русский"]


def llama_cpp_ids(gguf: Path, text: str, work: Path) -> list[int]:
    prompt = work / "prompt.txt"
    prompt.write_bytes(text.encode("utf-8"))
    out = subprocess.run([TOKENIZE, "-m", str(gguf), "-f", str(prompt), "--ids", "--no-escape",
                          "--log-disable"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(gguf: Path, strings: list[str], theirs: list[list[int]] | None, work: Path) -> tuple[int, int, int]:
    model = Model(gguf)
    same_cpp = same_hf = both = 0
    for i, text in enumerate(strings):
        ours, cpp = model.tokenize(text), llama_cpp_ids(gguf, text, work)
        same_cpp += ours == cpp
        if ours != cpp:
            print(f"  llama.cpp differs: {text!r}\n    ours      {ours[:20]}\n    llama.cpp {cpp[:20]}")
        if theirs is not None:
            hf = theirs[i]
            same_hf += ours == hf
            both += cpp == hf
            if cpp != hf:
                print(f"  llama.cpp and transformers differ: {text!r}")
    return same_cpp, same_hf, both


def main() -> int:
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for folder in sorted(p for p in HF.iterdir() if (p / "reference.npz").is_file()):
            strings = json.loads((folder / "tokenizer_strings.json").read_text(encoding="utf-8"))
            ref = np.load(folder / "reference.npz")
            theirs = [ref[f"tok_{i}"].tolist() for i in range(len(strings))]
            gguf = convert(folder, work / f"{folder.name}.gguf", "f32").path
            same_cpp, same_hf, both = compare(gguf, strings, theirs, work)
            failed |= same_cpp != len(strings)
            print(f"{folder.name}: ours = llama.cpp on {same_cpp}/{len(strings)}; ours = transformers on "
                  f"{same_hf}/{len(strings)}; llama.cpp = transformers on {both}/{len(strings)}")
        for extra in sys.argv[1:]:
            strings = json.loads((HF / "llama2" / "tokenizer_strings.json").read_text(encoding="utf-8"))[:-1]
            strings += EXTRA_STRINGS
            same_cpp, _, _ = compare(Path(extra), strings, None, work)
            failed |= same_cpp != len(strings)
            print(f"{Path(extra).name}: ours = llama.cpp on {same_cpp}/{len(strings)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
