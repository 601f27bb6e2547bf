"""`llamapy simple`: llama-simple. Greedy continuation; prompt and text on stdout, timings on stderr."""

from __future__ import annotations

import sys

import typer

from ._common import (
    CacheTypeK,
    CacheTypeV,
    FlashAttn,
    GpuLayers,
    Mlock,
    NoMmap,
    Numerics,
    Rpc,
    TensorSplit,
    ThreadsBatch,
    UBatch,
    open_model,
    run_options,
    set_threads,
    user_errors,
)


@user_errors
def simple(
    prompt: str = typer.Argument("Hello my name is", help="The prompt."),
    model: str = typer.Option(None, "-m", "--model", help="GGUF model path (default: SmolLM2-135M-Instruct)."),
    hf_repo: str = typer.Option(None, "-hf", "--hf-repo", help="Hugging Face repo user/repo[:QUANT]."),
    n_predict: int = typer.Option(32, "-n", "--n-predict", help="Number of tokens to generate."),
    threads: int = typer.Option(None, "-t", "--threads", help="Threads (default: all cores)."),
    rpc: Rpc = None,
    tensor_split: TensorSplit = None,
    threads_batch: ThreadsBatch = None,
    ubatch_size: UBatch = 512,
    cache_type_k: CacheTypeK = "f16",
    cache_type_v: CacheTypeV = "f16",
    flash_attn: FlashAttn = "auto",
    mlock: Mlock = False,
    no_mmap: NoMmap = False,
    n_gpu_layers: GpuLayers = None,
    numerics: Numerics = "exact",
) -> None:
    set_threads(threads)
    m = open_model(model, hf_repo, rpc, tensor_split,
                   run_options(threads, threads_batch, ubatch_size, cache_type_k, cache_type_v, flash_attn, mlock,
                               no_mmap, n_gpu_layers, numerics))
    ids = m.tokenize(prompt)
    out = sys.stdout
    out.write(prompt)
    out.flush()
    timings = None
    for step in m.generate(ids, n_predict=n_predict, temp=0.0):
        timings = step.timings
        if step.text:
            out.write(step.text)
            out.flush()
    out.write("\n")
    if timings:
        print(f"main: decoded {timings.n_generated} tokens in {timings.generate_seconds:.2f} s, "
              f"speed: {timings.generate_tps:.2f} t/s (prompt: {timings.n_prompt} tokens, "
              f"{timings.prompt_tps:.2f} t/s)", file=sys.stderr)
