"""`llamapy bench`: llama-bench. Prompt and generation speed over the product of the parameter lists.

stdout carries only the table (or csv/json/jsonl), row by row as tests finish; --progress goes to stderr.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ._common import Numerics, Rpc, TensorSplit, fail, open_model, user_errors, warn_gpu_layers

LIST_HELP = "List: 128,512 or a range such as 64-512*2; the flag may repeat."


def _list_option(*names: str, help: str):
    # Values stay strings and are parsed here, so a bad one gets the house one-line error, not click's.
    return Annotated[list[str] | None, typer.Option(*names, help=help)]


Models = _list_option("-m", "--model", help="GGUF model path(s), comma list or repeated (default: SmolLM2).")
Prompts = _list_option("-p", "--n-prompt", help=f"Prompt lengths (default: 512). {LIST_HELP}")
Gens = _list_option("-n", "--n-gen", help=f"Generation lengths (default: 128). {LIST_HELP}")
Pairs = _list_option("-pg", help="pp,tg: a prompt then a generation, timed together (repeatable).")
Batches = _list_option("-b", "--batch-size", help=f"Prompt tokens per pass (default: 2048). {LIST_HELP}")
Threads = _list_option("-t", "--threads", help=f"Threads (default: all cores). {LIST_HELP}")
UBatches = _list_option("-ub", "--ubatch-size", help=f"Most tokens per forward pass (default: 512). {LIST_HELP}")
ThreadsBatch = _list_option("-tb", "--threads-batch", help=f"Threads for prompt passes (default: as -t). {LIST_HELP}")
TypesK = _list_option("-ctk", "--cache-type-k", help="KV cache types of keys: f16, f32, q8_0, q4_0 (comma list).")
TypesV = _list_option("-ctv", "--cache-type-v", help="KV cache types of values (comma list; quantized needs -fa).")
FlashAttn = _list_option("-fa", "--flash-attn", help="Flash attention: on/1, off/0, auto (comma list).")
Mmap = _list_option("-mmp", "--mmap", help="Map the model (1, default) or read it into memory (0); comma list.")
Parallel = _list_option("-np", "--parallel", help="Parallel sequences: llama-batched-bench's aggregate pp/tg t/s "
                        f"for N sequences at once, -p and -n tokens each. {LIST_HELP}")


@user_errors
def bench(
    model: Models = None,
    n_prompt: Prompts = None,
    n_gen: Gens = None,
    pg: Pairs = None,
    n_batch: Batches = None,
    threads: Threads = None,
    hf_repo: str = typer.Option(None, "-hf", "--hf-repo", help="Hugging Face repo user/repo[:QUANT], benched "
                                "after any -m models."),
    reps: int = typer.Option(5, "-r", "--repetitions", help="Timed runs of each test."),
    output: str = typer.Option("md", "-o", "--output", help="Output format: md, csv, json or jsonl."),
    progress: bool = typer.Option(False, "--progress", help="Progress lines on stderr."),
    no_warmup: bool = typer.Option(False, "--no-warmup", help="Skip the untimed warm-up run of each test."),
    roofline: bool = typer.Option(False, "--roofline", help="Measure memory read bandwidth; show tg as a share of it."),
    rpc: Rpc = None,
    tensor_split: TensorSplit = None,
    parallel: Parallel = None,
    ubatch: UBatches = None,
    threads_batch: ThreadsBatch = None,
    cache_type_k: TypesK = None,
    cache_type_v: TypesV = None,
    flash_attn: FlashAttn = None,
    mmap: Mmap = None,
    n_gpu_layers: str = typer.Option(None, "-ngl", "--n-gpu-layers", help="Accepted for llama-bench command "
                                     "lines; llamapy has no GPU backend yet."),
    numerics: Numerics = "exact",
) -> None:
    import numba

    from llamapy import bench as lb
    from llamapy.hub import resolve_hf, resolve_model
    from llamapy.numerics import numerics as numerics_profile

    if output not in lb.FORMATS:
        fail(f"unknown output format {output!r} for -o (one of: {', '.join(lb.FORMATS)})")
    if reps < 1:
        fail(f"-r must be at least 1, got {reps}")
    try:
        numerics_profile(numerics.lower())
    except ValueError as e:
        fail(str(e))
    batches = _ints("-b", n_batch, [lb.DEFAULT_N_BATCH])
    thread_counts = _ints("-t", threads, [numba.config.NUMBA_NUM_THREADS])
    _check_threads(thread_counts, numba.config.NUMBA_NUM_THREADS)
    if min(batches) < 1:
        fail("-b must be at least 1")
    paths = [str(resolve_model(m)) for m in (_models(model) if model or not hf_repo else [])]
    if hf_repo:
        paths.append(str(resolve_hf(hf_repo)))
    _check_models(paths)
    if parallel:
        return _batched(paths, _ints("-np", parallel, []), _ints("-p", n_prompt, [lb.DEFAULT_N_PROMPT]),
                        _ints("-n", n_gen, [lb.DEFAULT_N_GEN]), batches[0] if n_batch else 512, thread_counts, reps,
                        not no_warmup, output, (rpc, tensor_split))
    warn_gpu_layers(n_gpu_layers)
    sweeps = _sweeps(ubatch, threads_batch, cache_type_k, cache_type_v, flash_attn, mmap,
                     numba.config.NUMBA_NUM_THREADS)
    tests = lb.plan(paths, _ints("-p", n_prompt, [lb.DEFAULT_N_PROMPT]), _ints("-n", n_gen, [lb.DEFAULT_N_GEN]),
                    _pairs(pg), batches, thread_counts, **sweeps)
    if not tests:
        fail("nothing to measure: every -p, -n and -pg is 0, or every -fa off test has a quantized -ctv")

    say = _progress if progress else (lambda _: None)
    bandwidth = _bandwidth(thread_counts, say) if roofline else None
    printer = lb.make_printer(output, show_batch=batches != [lb.DEFAULT_N_BATCH], roofline=bandwidth,
                              swept=lb.swept(tests))
    _emit(printer.header())
    hops: list[dict] = []  # --rpc: per-hop latency of each test, printed after the table
    legend = _run_all(lb, tests, reps, not no_warmup, bandwidth, printer, say, (rpc, tensor_split), hops,
                      numerics.lower())
    _emit(printer.footer())
    if hops:
        from llamapy.distributed.report import hop_table

        if output == "md":
            _emit(hop_table(hops, legend))
        else:  # stdout stays one csv/json document
            print(hop_table(hops, legend), file=sys.stderr, end="")


def _run_all(lb, tests, reps, warmup, bandwidth, printer, say, remote=(None, None), hops=None,
             numerics="exact") -> str:
    from llamapy.options import RunOptions

    loaded, info, loaded_mmap = None, None, True
    for i, test in enumerate(tests, 1):
        def step(message, i=i):
            say(f"benchmark {i}/{len(tests)}: {message}")

        step("starting")
        # Tests come model by model, so each model is opened once.
        if loaded is None or loaded.path != test.model or loaded_mmap != test.use_mmap:
            loaded = None  # drop the previous model's mapping before opening the next
            loaded = open_model(test.model, None, *remote, RunOptions(use_mmap=test.use_mmap, numerics=numerics))
            loaded_mmap = test.use_mmap
            info = lb.describe(loaded)
        started = lb.now_rfc3339()
        samples = lb.measure(loaded, info, test, reps, warmup=warmup, step=step)
        roof = bandwidth.get(test.n_threads) if bandwidth else None
        _emit(printer.row(lb.Result(test, info, samples, started, roof)))
        if remote[0]:
            from llamapy.distributed.report import take_hop_rows

            hops.extend(take_hop_rows(loaded, f"{test.name} -t {test.n_threads}"))
    if remote[0] and loaded is not None:
        from llamapy.distributed.report import stage_legend

        return stage_legend(loaded)
    return ""


def _batched(paths, parallels, prompts, gens, n_batch, thread_counts, reps, warmup, output, remote) -> None:
    """-np: llama-batched-bench's table, one row per -p × -n × -np, for each model and thread count."""
    from pathlib import Path

    from llamapy.batched_bench import HEADER, batched_sweep, check_sweep, table_row

    from ._common import set_threads

    if output != "md":
        fail("-np prints llama-batched-bench's table: only -o md")
    if min(parallels) < 1:
        fail("-np must be at least 1")
    for pp in prompts:
        for tg in gens:
            check_sweep(pp, tg, parallels, reps)  # a bad -p/-n/-r fails before the table starts
    for path in dict.fromkeys(paths):
        m = open_model(path, None, *remote)
        for t in thread_counts:
            set_threads(t)
            _emit(f"\nmodel: {Path(path).name}, threads: {t}, n_batch: {n_batch}, repetitions: {reps} (median)\n\n"
                  + HEADER)
            for pp in prompts:
                for tg in gens:
                    _emit("".join(map(table_row, batched_sweep(m, pp, tg, parallels, n_batch, reps, warmup))))


def _sweeps(ubatch, threads_batch, types_k, types_v, flash_attn, mmap, most_threads) -> dict:
    """The swept performance parameters, checked here so that a bad value fails before measuring."""
    from llamapy.kv_cache import cache_type

    sweeps = {}
    if ubatch:
        sweeps["n_ubatch"] = _ints("-ub", ubatch, [])
        if min(sweeps["n_ubatch"]) < 1:
            fail("-ub must be at least 1")
    if threads_batch:
        sweeps["n_threads_batch"] = _ints("-tb", threads_batch, [])
        _check_threads(sweeps["n_threads_batch"], most_threads)
    for flag, name, values in (("-ctk", "type_k", types_k), ("-ctv", "type_v", types_v)):
        if values:
            try:
                sweeps[name] = [cache_type(v).name for v in _words(values)]
            except ValueError as e:
                fail(f"{flag}: {e}")
    if flash_attn:
        names = {"1": "on", "0": "off", "on": "on", "off": "off", "auto": "auto", "-1": "auto"}
        bad = [v for v in _words(flash_attn) if v.lower() not in names]
        if bad:
            fail(f"-fa: {bad[0]!r} is not on, off, auto, 1 or 0")
        sweeps["flash_attn"] = [names[v.lower()] for v in _words(flash_attn)]
    if mmap:
        bad = [v for v in _words(mmap) if v not in ("0", "1")]
        if bad:
            fail(f"-mmp: {bad[0]!r} is not 0 or 1")
        sweeps["use_mmap"] = [v == "1" for v in _words(mmap)]
    return sweeps


def _words(values: list[str]) -> list[str]:
    return [w for v in values for w in v.split(",") if w]


def _bandwidth(thread_counts, say) -> dict[int, float]:
    from llamapy.bench import memory_bandwidth

    say(f"measuring memory read bandwidth at {', '.join(map(str, sorted(set(thread_counts))))} thread(s)")
    return memory_bandwidth(thread_counts)


def _ints(flag: str, values: list[str] | None, default: list[int]) -> list[int]:
    from llamapy.bench import parse_ints

    if not values:
        return default
    try:
        return [n for v in values for n in parse_ints(v)]
    except ValueError as e:
        fail(f"{flag}: {e}")


def _pairs(values: list[str] | None) -> list[tuple[int, int]]:
    from llamapy.bench import parse_pair

    try:
        return [parse_pair(v) for v in values or []]
    except ValueError as e:
        fail(f"-pg: {e}")


def _models(values: list[str] | None) -> list[str | None]:
    """-m may repeat and each may be a comma list, as in llama-bench; none means the default model."""
    names = [name for v in values or [] for name in v.split(",") if name]
    return names or [None]


def _check_models(paths: list[str]) -> None:
    """Read every model's header first, so a bad later file fails before minutes of measuring."""
    from llamapy.gguf.reader import GGUFFile
    from llamapy.models import check_architecture

    for path in dict.fromkeys(paths):
        with GGUFFile(path) as gguf:
            check_architecture(gguf.kv.get("general.architecture"))


def _check_threads(counts: list[int], most: int) -> None:
    # numba cannot start more threads than it was configured with, and a row must not claim more.
    bad = [n for n in counts if not 1 <= n <= most]
    if bad:
        fail(f"-t {bad[0]}: threads must be 1 to {most} (numba's NUMBA_NUM_THREADS on this machine)")


def _progress(message: str) -> None:
    print(f"llamapy bench: {message}", file=sys.stderr, flush=True)


def _emit(text: str) -> None:
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()
