"""Peak memory of `llamapy convert` on a sharded bfloat16 checkpoint (issue 10: ≤ largest shard + 300 MB).

Writes a random-weight LLaMA checkpoint of about 0.8 GB in two safetensors shards with an index (the
tokenizer of tests/data/hf/llama2), converts it in a child process and reports the child's peak RSS.

    .venv/bin/python tests/data/measure_convert_memory.py [WORKDIR] [--outtype bf16]
"""

from __future__ import annotations

import json
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "hf" / "llama2"
HIDDEN, FF, LAYERS, HEADS, VOCAB = 2048, 5632, 8, 16, 384


def bf16(shape, rng) -> bytes:
    x = (rng.standard_normal(shape, dtype=np.float32) * 0.02).view(np.uint32)
    return (x >> 16).astype(np.uint16).tobytes()


def tensors():
    yield "model.embed_tokens.weight", (VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield p + f"self_attn.{name}.weight", (HIDDEN, HIDDEN)
        yield p + "mlp.gate_proj.weight", (FF, HIDDEN)
        yield p + "mlp.up_proj.weight", (FF, HIDDEN)
        yield p + "mlp.down_proj.weight", (HIDDEN, FF)
        yield p + "input_layernorm.weight", (HIDDEN,)
        yield p + "post_attention_layernorm.weight", (HIDDEN,)
    yield "model.norm.weight", (HIDDEN,)
    yield "lm_head.weight", (VOCAB, HIDDEN)


def write_shard(path: Path, items, rng) -> None:
    header, offset = {}, 0
    for name, shape in items:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for _name, shape in items:
            f.write(bf16(shape, rng))


def make_checkpoint(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.model", "tokenizer_config.json", "tokenizer.json"):
        shutil.copy(FIXTURE / name, folder / name)
    config = json.loads((FIXTURE / "config.json").read_text())
    config.update(hidden_size=HIDDEN, intermediate_size=FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  num_key_value_heads=HEADS, head_dim=HIDDEN // HEADS)
    (folder / "config.json").write_text(json.dumps(config))
    items = list(tensors())
    half = len(items) // 2
    parts = {"model-00001-of-00002.safetensors": items[:half], "model-00002-of-00002.safetensors": items[half:]}
    rng = np.random.default_rng(0)
    for part, part_items in parts.items():
        write_shard(folder / part, part_items, rng)
    weight_map = {name: part for part, part_items in parts.items() for name, _ in part_items}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return [folder / p for p in parts]


def main() -> int:
    args = sys.argv[1:]
    outtype = args[args.index("--outtype") + 1] if "--outtype" in args else "bf16"
    work = Path(args[0]) if args and not args[0].startswith("--") else Path(tempfile.mkdtemp())
    shards = make_checkpoint(work / "ckpt")
    largest = max(s.stat().st_size for s in shards)
    cmd = [sys.executable, "-m", "llamapy.commands.main", "convert", str(work / "ckpt"),
           "--outfile", str(work / "out.gguf"), "--outtype", outtype]
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    mib = 2**20
    print(f"shards: {[round(s.stat().st_size / mib) for s in shards]} MiB; largest {largest / mib:.0f} MiB; "
          f"convert --outtype {outtype} peak RSS {peak / mib:.0f} MiB = "
          f"largest shard + {(peak - largest) / mib:.0f} MiB; "
          f"output {(work / 'out.gguf').stat().st_size / mib:.0f} MiB")
    shutil.rmtree(work / "ckpt")
    (work / "out.gguf").unlink()
    return 0 if peak <= largest + 300 * mib else 1


if __name__ == "__main__":
    sys.exit(main())
