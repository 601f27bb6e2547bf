"""`llamapy perplexity`: llama-perplexity. PPL of a model on a text, KL-divergence against a base, HellaSwag.

Results go to stdout (text, or one JSON object with -o json); the progress bar and timings to stderr.
"""

from __future__ import annotations

import functools
import json
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
    model_path,
    open_model,
    run_options,
    set_threads,
    user_errors,
)

PASS_TOKENS = 2048  # llama.cpp reports "seconds per pass": one batch of its default -b 2048 tokens


@user_errors
def perplexity(
    model: str = typer.Option(None, "-m", "--model", help="GGUF model path (default: SmolLM2-135M-Instruct)."),
    hf_repo: str = typer.Option(None, "-hf", "--hf-repo", help="Hugging Face repo user/repo[:QUANT]."),
    file: str = typer.Option(None, "-f", "--file", help="The text to score (HellaSwag: the task file)."),
    ctx_size: int = typer.Option(512, "-c", "--ctx-size", help="Tokens per chunk; the second half is scored."),
    batch_size: int = typer.Option(2048, "-b", "--batch-size", help="As llama.cpp's -b: b/c chunks "
                                 "share each pass, stepped through in 512-token ubatches."),
    chunks: int = typer.Option(-1, "--chunks", help="Score at most this many chunks (-1: all)."),
    threads: int = typer.Option(None, "-t", "--threads", help="Threads (default: all cores)."),
    output_format: str = typer.Option("text", "-o", "--output", help="text or json."),
    kl_base: str = typer.Option(None, "--kl-divergence-base", help="Save the base model's log-probs here "
                                 "(or, with --kl-divergence, read them from here)."),
    kl_divergence: bool = typer.Option(False, "--kl-divergence", help="Compare the model against "
                                       "--kl-divergence-base; the text comes from that file."),
    kl_top_k: int = typer.Option(64, "--kl-top-k", help="Base file: most likely tokens kept per position "
                                 "(and as many sampled from the rest)."),
    hellaswag: bool = typer.Option(False, "--hellaswag", help="HellaSwag acc_norm on the tasks in -f."),
    hellaswag_tasks: int = typer.Option(400, "--hellaswag-tasks", help="How many HellaSwag tasks to score."),
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
    if output_format not in ("text", "json"):
        fail(f"unknown output format {output_format!r} (-o): use text or json")
    if kl_divergence and hellaswag:
        fail("--kl-divergence and --hellaswag are separate runs: give one of them")
    if kl_divergence and kl_base is None:
        fail("--kl-divergence needs --kl-divergence-base FILE, the base model's saved log-probs")
    if not kl_divergence and file is None:
        fail("no text to score: give it with -f FILE")
    if hf_repo:
        model = str(model_path(model, hf_repo))
    set_threads(threads)
    as_json = output_format == "json"
    options = run_options(threads, threads_batch, ubatch_size, cache_type_k, cache_type_v, flash_attn, mlock, no_mmap,
                          n_gpu_layers, numerics)
    load = functools.partial(open_model, model, None, rpc, tensor_split, options)
    if kl_divergence:
        return compare_with_base(load, kl_base, batch_size, chunks, as_json)
    text = read_text(Path(file))
    if hellaswag:
        return score_hellaswag(load, text, hellaswag_tasks, ctx_size, as_json)
    return score_text(load, text, ctx_size, batch_size, chunks, kl_base, kl_top_k, as_json)


def read_text(path: Path) -> str:
    if not path.exists():
        fail(f"file not found: {path}")
    if path.is_dir():
        fail(f"{path} is a directory, not a text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        fail(f"{path} is not UTF-8 text (byte {e.start})")


def progress_bar(total: int, unit: str, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def warn_beyond_training(m, n_ctx: int) -> None:
    if n_ctx > m.config.n_ctx_train:
        print(f"warning: the model was trained on contexts of {m.config.n_ctx_train} tokens, -c is {n_ctx}",
              file=sys.stderr)


def report_speed(label: str, n_tokens: int, seconds: float) -> None:
    per_pass = seconds * PASS_TOKENS / n_tokens if n_tokens else 0.0
    print(f"{label}: {n_tokens} tokens in {seconds:.1f} s, {per_pass:.2f} s per pass of {PASS_TOKENS} tokens",
          file=sys.stderr)


# --- perplexity ---------------------------------------------------------------------------------------


class RunningLine:
    """The `[1]x,[2]y,...` line: written as each chunk ends when stdout is a file or pipe, so long runs
    can be followed; held to the end on a terminal, where it would tangle with the progress bar."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.stream = enabled and not sys.stdout.isatty()
        self.parts: list[str] = []

    def add(self, index: int, ppl: float) -> None:
        part = f"[{index}]{ppl:.4f},"
        if self.stream:
            sys.stdout.write(part)
            sys.stdout.flush()
        else:
            self.parts.append(part)

    def end(self) -> None:
        if self.enabled:
            sys.stdout.write("".join(self.parts) + "\n")


def score_text(load, text, n_ctx, n_batch, max_chunks, base_path, top_k, as_json) -> None:
    from llamapy.perplexity import BaseRecorder, count_chunks, perplexity, tokenize_text

    m = load()
    tokens = tokenize_text(m, text)
    n_chunks = count_chunks(len(tokens), n_ctx, max_chunks)
    warn_beyond_training(m, n_ctx)
    recorder = BaseRecorder(tokens, n_ctx, m.config.n_vocab, top_k) if base_path else None
    line = RunningLine(enabled=not as_json)
    running, last = [], None
    started = time.perf_counter()
    with progress_bar(n_chunks, "chunk", "perplexity") as bar:
        for chunk in perplexity(m, tokens, n_ctx, n_batch, n_chunks, recorder):
            running.append(chunk.running_ppl)
            line.add(chunk.index, chunk.running_ppl)
            bar.set_postfix_str(f"PPL {chunk.running_ppl:.4f}", refresh=False)
            bar.update()
            last = chunk
    seconds = time.perf_counter() - started
    if recorder:
        recorder.finish().save(base_path)
        print(f"perplexity: saved the base log-probs of {n_chunks} chunks to {base_path}", file=sys.stderr)
    report_speed("perplexity", n_chunks * n_ctx, seconds)
    if as_json:
        print(json.dumps({"ppl": last.running_ppl, "ppl_err": last.running_err, "n_ctx": n_ctx,
                          "n_chunks": n_chunks, "running": running, "seconds": round(seconds, 3)}))
        return
    line.end()
    print(f"Final estimate: PPL = {last.running_ppl:.4f} +/- {last.running_err:.5f}")


# --- KL-divergence ------------------------------------------------------------------------------------

KL_HEADER = (f"{'chunk':>5}  {'PPL(Q)':>20}  {'ln(PPL(Q)/PPL(base))':>23}  {'KL divergence':>23}  "
             f"{'RMS Δp':>17}  {'same top p':>17}")


def kl_chunk_row(index: int, sums) -> str:
    mq, eq = sums.mean_err(sums.nll)
    ln_ratio, ln_err = sums.log_ppl_ratio()
    kld, kld_err = sums.mean_err(sums.kld)
    rms, rms_err = sums.p_diff_rms()
    same, same_err = sums.same_top_fraction()
    ppl = sums.nll.ppl
    return (f"{index:>5}  {ppl:>9.4f} ± {ppl * eq:>8.4f}  {ln_ratio:>10.5f} ± {ln_err:>10.5f}  "
            f"{kld:>10.5f} ± {kld_err:>10.5f}  {100 * rms:>6.3f} ± {100 * rms_err:>5.3f} %  "
            f"{100 * same:>6.3f} ± {100 * same_err:>5.3f} %")


def compare_with_base(load, base_path, n_batch, max_chunks, as_json) -> None:
    from tqdm import tqdm

    from llamapy.perplexity import BaseLogProbs, kl_divergence, kl_summary

    base = BaseLogProbs.load(base_path)
    m = load()
    sums = None
    started = time.perf_counter()
    n_chunks = base.n_chunks if max_chunks <= 0 else min(max_chunks, base.n_chunks)
    if not as_json:
        print(KL_HEADER)
    with progress_bar(n_chunks, "chunk", "kl-divergence") as bar:
        for chunk in kl_divergence(m, base, n_batch, max_chunks):
            sums = chunk.sums
            if not as_json:
                tqdm.write(kl_chunk_row(chunk.index, sums), file=sys.stdout)
            bar.update()
    seconds = time.perf_counter() - started
    report_speed("kl-divergence", n_chunks * base.n_ctx, seconds)
    summary = kl_summary(sums)
    if as_json:
        print(json.dumps({**summary, "n_ctx": base.n_ctx, "n_chunks": n_chunks, "top_k": base.top_k,
                          "seconds": round(seconds, 3)}))
        return
    print_kl_summary(summary, base.top_k)


def print_kl_summary(s: dict, top_k: int) -> None:
    pct = 100.0
    correlation = "n/a" if s["ln_ppl_correlation"] is None else f"{pct * s['ln_ppl_correlation']:11.2f} %"
    lines = [
        "",
        "Perplexity",
        f"  PPL(Q)                    {s['ppl']:12.6f} ± {s['ppl_err']:.6f}",
        f"  PPL(base)                 {s['ppl_base']:12.6f} ± {s['ppl_base_err']:.6f}",
        f"  correlation of ln PPLs    {correlation}",
        f"  ln(PPL(Q)/PPL(base))      {s['ln_ppl_ratio']:12.6f} ± {s['ln_ppl_ratio_err']:.6f}",
        f"  PPL(Q)/PPL(base)          {s['ppl_ratio']:12.6f} ± {s['ppl_ratio_err']:.6f}",
        f"  PPL(Q)-PPL(base)          {s['ppl_diff']:12.6f} ± {s['ppl_diff_err']:.6f}",
        "",
        f"KL divergence (base top {top_k} + tail), over {s['n_tokens']} tokens",
        f"  mean                      {s['kld']:12.6f} ± {s['kld_err']:.6f}",
        f"  maximum                   {s['kld_max']:12.6f}",
        *(f"  {key + ' %':<26}{value:12.6f}" for key, value in s["kld_percentiles"].items()),
        f"  minimum                   {s['kld_min']:12.6f}",
        "",
        "Probability of the right token, Δp = p(Q) - p(base)",
        f"  mean                      {pct * s['p_diff']:9.3f} % ± {pct * s['p_diff_err']:.3f} %",
        f"  maximum                   {pct * s['p_diff_max']:9.3f} %",
        *(f"  {key + ' %':<26}{pct * value:9.3f} %" for key, value in s["p_diff_percentiles"].items()),
        f"  minimum                   {pct * s['p_diff_min']:9.3f} %",
        f"  RMS                       {pct * s['p_diff_rms']:9.3f} % ± {pct * s['p_diff_rms_err']:.3f} %",
        f"  same top token            {pct * s['same_top']:9.3f} % ± {pct * s['same_top_err']:.3f} %",
    ]
    print("\n".join(lines))


# --- HellaSwag ----------------------------------------------------------------------------------------


def score_hellaswag(load, text, n_tasks, n_ctx, as_json) -> None:
    from tqdm import tqdm

    from llamapy.perplexity import hellaswag, parse_hellaswag

    tasks = parse_hellaswag(text)
    if n_tasks <= 0:
        fail(f"--hellaswag-tasks must be positive, got {n_tasks}")
    m = load()
    last = None
    started = time.perf_counter()
    if not as_json:
        print("task\tacc_norm\t95% interval")
    with progress_bar(min(n_tasks, len(tasks)), "task", "hellaswag") as bar:
        for step in hellaswag(m, tasks, n_tasks, n_ctx):
            low, high = step.interval()
            if not as_json:
                tqdm.write(f"{step.index}\t{100 * step.acc_norm:.4f}%\t[{100 * low:.4f}%, {100 * high:.4f}%]",
                           file=sys.stdout)
            bar.update()
            last = step
    seconds = time.perf_counter() - started
    print(f"hellaswag: {last.index} tasks in {seconds:.1f} s", file=sys.stderr)
    if as_json:
        low, high = last.interval()
        print(json.dumps({"acc_norm": last.acc_norm, "ci95": [low, high], "n_tasks": last.index,
                          "correct": last.correct, "seconds": round(seconds, 3)}))
