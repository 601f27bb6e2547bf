"""`llamapy run`: llama-run. A model (default if none) and a prompt (argument or stdin), streamed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

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
    fail,
    open_model,
    run_options,
    sampling_options,
    set_threads,
    user_errors,
)

DEFAULT_CTX = 2048


def looks_like_model(arg: str) -> bool:
    """A lone positional argument is a model if it names a file or looks like one, else a prompt."""
    return Path(arg).expanduser().exists() or arg.endswith(".gguf") or arg in ("gemma3", "gemma3-270m")


@user_errors
def run(
    model: str = typer.Argument(None, help="GGUF model path; omitted: SmolLM2-135M-Instruct."),
    prompt: str = typer.Argument(None, help="The prompt; omitted: read from stdin."),
    hf_repo: str = typer.Option(None, "-hf", "--hf-repo", help="Hugging Face repo user/repo[:QUANT]."),
    n_predict: int = typer.Option(-1, "-n", "--n-predict", help="Tokens to generate (-1: until end or full context)."),
    ctx_size: int = typer.Option(DEFAULT_CTX, "-c", "--ctx-size", help="Context size in tokens."),
    threads: int = typer.Option(None, "-t", "--threads", help="Threads (default: all cores)."),
    batch_size: int = typer.Option(512, "-b", "--batch-size", help="Prompt tokens per forward pass."),
    temp: float = typer.Option(0.8, "--temp", help="Temperature; 0 is greedy."),
    top_k: int = typer.Option(40, "--top-k", help="Top-k sampling (0: off)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Top-p sampling (1.0: off)."),
    min_p: float = typer.Option(0.05, "--min-p", help="Min-p sampling (0.0: off)."),
    repeat_penalty: float = typer.Option(1.0, "--repeat-penalty", help="Penalty for repeated tokens (1.0: off)."),
    repeat_last_n: int = typer.Option(64, "--repeat-last-n", help="How many recent tokens the penalty sees."),
    seed: int = typer.Option(-1, "-s", "--seed", help="RNG seed (-1: random)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Timings on stderr."),
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
    launched = time.perf_counter()
    set_threads(threads)
    if prompt is None and model is not None and (hf_repo or not looks_like_model(model)):
        model, prompt = None, model  # `llamapy run "some prompt"`: the default model
    if prompt is None:
        if sys.stdin.isatty():
            fail("no prompt: give one after the model, or pipe it on stdin")
        prompt = sys.stdin.read()
    if ctx_size <= 0:
        fail(f"context size must be positive, got {ctx_size}")
    m = open_model(model, hf_repo, rpc, tensor_split,
                   run_options(threads, threads_batch, ubatch_size, cache_type_k, cache_type_v, flash_attn, mlock,
                               no_mmap, n_gpu_layers, numerics))
    options = sampling_options(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
    timings = None
    for step in m.generate(prompt, n_predict=n_predict, n_ctx=ctx_size, n_batch=batch_size, **options):
        timings = step.timings
        if step.text:
            sys.stdout.write(step.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    if verbose and timings:
        first = (timings.first_token_at or time.perf_counter()) - launched
        print(f"run: first token after {first:.2f} s; prompt {timings.n_prompt} tokens at "
              f"{timings.prompt_tps:.1f} t/s; generated {timings.n_generated} tokens at "
              f"{timings.generate_tps:.1f} t/s", file=sys.stderr)
