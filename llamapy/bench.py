"""Prompt and generation speed measured the way llama-bench measures it, and its output formats.

A test is one point of the cartesian product of the parameter lists: a model, a batch size, a thread
count and one of pp<n> (a prompt of n random tokens), tg<n> (n tokens decoded one at a time) or
pp<n>+tg<m> (both, timed together). Each test gets a fresh KV cache, one untimed warm-up, then `reps`
timed runs that each start from an empty cache. Beyond llama-bench, generation rows carry the weight
bytes streamed per second and, when measured, the share of this machine's memory read bandwidth.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import platform
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from . import __version__
from .kv_cache import cache_type
from .quants.types import FILE_TYPE_NAMES, QUANT_TYPES

DEFAULT_N_PROMPT = 512
DEFAULT_N_GEN = 128
DEFAULT_N_BATCH = 2048  # llama-bench's default; the engine runs a whole batch in one forward pass
DEFAULT_REPS = 5
FORMATS = ("md", "csv", "json", "jsonl")

# general.file_type → the name llama.cpp prints, and the file type a tensor type names: the registry's.
FTYPE_NAMES = FILE_TYPE_NAMES
# Without general.file_type llama.cpp names the file after its most common tensor type, K-quants as
# their "Medium" mix, and marks the name as guessed.
_FTYPE_OF_TENSOR_TYPE = {t.name: t.file_type for t in QUANT_TYPES.values() if t.file_type is not None}


# --- parameters -------------------------------------------------------------------------------------

_RANGE = re.compile(r"(\d+)(?:-(\d+)(?:([+*])(\d+))?)?")


def parse_ints(text: str) -> list[int]:
    """A comma list in llama-bench's syntax, where an item may be a range `first-last[+step|*factor]`."""
    values: list[int] = []
    for item in text.split(","):
        match = _RANGE.fullmatch(item.strip())
        if match is None:
            raise ValueError(f"{text!r} is not a list of non-negative integers (e.g. 128,512 or 64-512*2)")
        values.extend(_expand(*match.groups()))
    return values


def _expand(first: str, last: str | None, op: str | None, step: str | None) -> list[int]:
    lo, hi, n = int(first), int(last or first), int(step or 1)
    # A step that cannot grow the value would loop forever.
    if (op == "*" and (n < 2 or lo == 0)) or (op != "*" and n < 1):
        raise ValueError(f"range {first}-{last}{op}{step} never reaches its end")
    out, value = [], lo
    while value <= hi:
        out.append(value)
        value = value * n if op == "*" else value + n
    return out


def parse_pair(text: str) -> tuple[int, int]:
    """-pg's `pp,tg`."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a pair pp,tg of non-negative integers (e.g. 512,128)")
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class Test:
    model: str
    n_prompt: int
    n_gen: int
    n_batch: int
    n_threads: int
    # The swept performance parameters (SWEEPS), llama-bench's names; defaults as llama.cpp's.
    n_ubatch: int = 512
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: str = "auto"
    use_mmap: bool = True
    n_threads_batch: int | None = None  # -tb: prompt passes (None: as n_threads)

    @property
    def name(self) -> str:
        if self.n_gen == 0:
            return f"pp{self.n_prompt}"
        if self.n_prompt == 0:
            return f"tg{self.n_gen}"
        return f"pp{self.n_prompt}+tg{self.n_gen}"

    @property
    def n_tokens(self) -> int:
        return self.n_prompt + self.n_gen

    @property
    def is_generation(self) -> bool:
        return self.n_prompt == 0


SWEEPS = ("use_mmap", "n_ubatch", "type_k", "type_v", "flash_attn", "n_threads_batch")
SWEEP_DEFAULTS = {name: Test.__dataclass_fields__[name].default for name in SWEEPS}


def plan(models: Iterable[str], n_prompt: Iterable[int], n_gen: Iterable[int],
         pg: Iterable[tuple[int, int]], n_batch: Iterable[int], n_threads: Iterable[int],
         **sweeps: Iterable) -> list[Test]:
    """Every combination, in llama-bench's order: model, mmap, batch, the other parameters, threads,
    then pp, tg and pp+tg tests. sweeps: lists for the SWEEPS names (missing: the default).

    Model outermost means each model is loaded once; zero-length tests are dropped as llama-bench does.
    """
    unknown = set(sweeps) - set(SWEEPS)
    if unknown:
        raise ValueError(f"unknown bench parameter {sorted(unknown)[0]}")
    kinds = ([(p, 0) for p in n_prompt if p > 0] + [(0, g) for g in n_gen if g > 0]
             + [(p, g) for p, g in pg if p or g])
    lists = [list(sweeps.get(name) or [SWEEP_DEFAULTS[name]]) for name in SWEEPS]
    tests = []
    for m in models:
        for mmap_ in lists[0]:
            for b in n_batch:
                for ub, tk, tv, fa, tb in itertools.product(*lists[1:]):
                    if fa == "off" and cache_type(tv).block:
                        continue  # a quantized V cache needs flash attention, as in llama.cpp
                    tests += [Test(m, p, g, b, t, ub, tk, tv, fa, mmap_, tb) for t in n_threads for p, g in kinds]
    return tests


def swept(tests: list[Test]) -> list[str]:
    """The SWEEPS whose value is not the default in some test: the columns a table shows."""
    return [name for name in SWEEPS if any(getattr(t, name) != SWEEP_DEFAULTS[name] for t in tests)]


# --- the model's description -------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelInfo:
    filename: str
    model_type: str  # "<arch> <size> <ftype>", llama.cpp's model description
    size: int  # bytes of all tensors
    n_params: int
    bytes_per_token: int  # weight bytes one generated token reads
    n_vocab: int
    bos_id: int | None  # None: the model adds no BOS, so tests start from a random token


def describe(model) -> ModelInfo:
    tensors = model.gguf.tensors.values()
    n_params = sum(t.n_elements for t in tensors)
    tok = model.tokenizer
    return ModelInfo(
        filename=model.path,
        model_type=f"{model.config.arch} {size_label(model.config.size_label, n_params)} {ftype_name(model)}",
        size=sum(t.n_bytes for t in tensors),
        n_params=n_params,
        bytes_per_token=weight_bytes_per_token(model.gguf.tensors),
        n_vocab=model.config.n_vocab,
        bos_id=tok.bos_id if tok.add_bos and tok.bos_id is not None else None,
    )


def size_label(label: str, n_params: int) -> str:
    """The file's own general.size_label, else the parameter count rounded to a label."""
    if label:
        return label
    if n_params >= 1e9:
        return f"{n_params / 1e9:.1f}B".replace(".0B", "B")
    return f"{round(n_params / 1e6)}M"


def ftype_name(model) -> str:
    file_type = model.config.file_type
    if file_type >= 0:
        return FTYPE_NAMES.get(file_type, "unknown, may not work")
    counts: dict[str, int] = {}
    for t in model.gguf.tensors.values():
        counts[t.type_name] = counts.get(t.type_name, 0) + 1
    common = max(counts, key=counts.get) if counts else "F32"
    return "(guessed) " + FTYPE_NAMES[_FTYPE_OF_TENSOR_TYPE.get(common, 0)]


def weight_bytes_per_token(tensors: dict) -> int:
    """Bytes of weights one token's forward pass reads.

    Every matrix is read in full except the token embedding, of which one row is gathered; a model
    without output.weight multiplies by the embedding as its output head, which reads all of it again.
    """
    total = sum(t.n_bytes for t in tensors.values())
    embd = tensors.get("token_embd.weight")
    if embd is None:
        return total
    row = embd.n_bytes // (embd.n_elements // embd.shape[0])
    head = embd.n_bytes if "output.weight" not in tensors else 0
    return total - embd.n_bytes + row + head


# --- measuring ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """numba's thread count for the block, restored after so library callers keep their own."""
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"{n} threads asked for, numba has 1 to {numba.config.NUMBA_NUM_THREADS} "
                         "(NUMBA_NUM_THREADS sets the most)")
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _first_token(info: ModelInfo, rng: np.random.Generator) -> int:
    return info.bos_id if info.bos_id is not None else int(rng.integers(info.n_vocab))


def run_prompt(model, cache, info: ModelInfo, n_prompt: int, n_batch: int, rng: np.random.Generator) -> None:
    """n_prompt random tokens (BOS first where the model adds one) in forward passes of n_batch
    (the caller passes min(-b, -ub): the most tokens one pass takes)."""
    for start in range(0, n_prompt, n_batch):
        ids = rng.integers(info.n_vocab, size=min(n_batch, n_prompt - start), dtype=np.int64)
        if start == 0:
            ids[0] = _first_token(info, rng)
        model.forward(ids, cache)


def run_generation(model, cache, info: ModelInfo, n_gen: int, rng: np.random.Generator) -> None:
    """n_gen single-token passes; the next token is drawn at random so sampling costs nothing."""
    token = _first_token(info, rng)
    for _ in range(n_gen):
        model.forward(np.array([token], dtype=np.int64), cache)
        token = int(rng.integers(info.n_vocab))


def _warm_up(model, cache, info: ModelInfo, test: Test, rng, step) -> None:
    """llama-bench's warm-up: the whole prompt, and one generated token (after it, if both)."""
    if test.n_prompt:
        step("warmup prompt run")
        with threads(test.n_threads_batch or test.n_threads):
            run_prompt(model, cache, info, test.n_prompt, min(test.n_batch, test.n_ubatch), rng)
    if test.n_gen:
        step("warmup generation run")
        run_generation(model, cache, info, 1, rng)


def _timed_run(model, cache, info: ModelInfo, test: Test, rng, step, rep: int, reps: int) -> int:
    cache.clear()
    start = time.perf_counter_ns()
    if test.n_prompt:
        step(f"prompt run {rep}/{reps}")
        with threads(test.n_threads_batch or test.n_threads):
            run_prompt(model, cache, info, test.n_prompt, min(test.n_batch, test.n_ubatch), rng)
    if test.n_gen:
        step(f"generation run {rep}/{reps}")
        run_generation(model, cache, info, test.n_gen, rng)
    return time.perf_counter_ns() - start


def measure(model, info: ModelInfo, test: Test, reps: int, warmup: bool = True,
            step: Callable[[str], None] | None = None, seed: int = 0) -> list[int]:
    """Nanoseconds of each of `reps` timed runs of `test`, each from an empty cache."""
    step = step or (lambda _: None)
    rng = np.random.default_rng(seed)
    net = getattr(model, "net", None)  # a distributed model's caches live on its workers
    if net is not None:
        net.cache_types, net.flash_attn = (test.type_k, test.type_v), test.flash_attn != "off"
    cache = model.new_cache(test.n_tokens)
    with threads(test.n_threads):
        if warmup:
            _warm_up(model, cache, info, test, rng, step)
        return [_timed_run(model, cache, info, test, rng, step, i + 1, reps) for i in range(reps)]


# --- memory bandwidth ---------------------------------------------------------------------------------

@njit(parallel=True, fastmath=True, cache=True)
def _read_all(a):
    # fastmath lets LLVM split the sum over vector lanes, so the loop is bound by loads, not adds.
    s = np.float32(0.0)
    for i in prange(a.shape[0]):
        s += a[i]
    return s


def memory_bandwidth(thread_counts: Iterable[int], mib: int = 512, passes: int = 10) -> dict[int, float]:
    """Read bandwidth in bytes/s for each thread count: the best of `passes` sums over `mib` MiB.

    The buffer is many times a server's L3 so the reads come from DRAM, and is written first because
    untouched zero pages all map to one physical page, which would be read from cache.
    """
    data = np.ones((mib << 20) // 4, dtype=np.float32)
    result = {}
    for n in sorted(set(thread_counts)):
        with threads(n):
            _read_all(data)  # compiles, and wakes numba's thread pool
            best = min(_seconds(_read_all, data) for _ in range(passes))
        result[n] = data.nbytes / best
    return result


def _seconds(fn, arg) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


# --- results ------------------------------------------------------------------------------------------

def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _stdev(values: list[float]) -> float:
    """Sample standard deviation (n - 1), 0 for fewer than two values, as llama-bench."""
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Result:
    test: Test
    model: ModelInfo
    samples_ns: list[int]
    test_time: str  # when the test started, RFC 3339 UTC
    roofline_bps: float | None = None  # memory read bandwidth at this test's thread count

    @property
    def samples_ts(self) -> list[float]:
        return [1e9 * self.test.n_tokens / ns for ns in self.samples_ns]

    @property
    def avg_ns(self) -> int:
        return int(_mean(self.samples_ns))

    @property
    def stddev_ns(self) -> int:
        return int(_stdev(self.samples_ns))

    @property
    def avg_ts(self) -> float:
        return _mean(self.samples_ts)

    @property
    def stddev_ts(self) -> float:
        return _stdev(self.samples_ts)

    @property
    def gbs(self) -> float | None:
        """Weight GB/s a generation test streamed; prompt tests reuse each weight across the batch."""
        if not self.test.is_generation:
            return None
        return self.model.bytes_per_token * self.avg_ts / 1e9

    @property
    def roofline_pct(self) -> float | None:
        if self.gbs is None or not self.roofline_bps:
            return None
        return 100.0 * self.gbs * 1e9 / self.roofline_bps


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def cpu_info() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- records: llama-bench's fields --------------------------------------------------------------------

# llama-bench's fields in its order, so scripts that index columns by position still line up. Knobs
# llamapy lacks carry the value llama-bench reports when the knob is left at its default.
FIELDS = (
    "build_commit", "build_number", "cpu_info", "gpu_info", "backends", "model_filename", "model_type",
    "model_size", "model_n_params", "n_batch", "n_ubatch", "n_threads", "cpu_mask", "cpu_strict", "poll",
    "type_k", "type_v", "n_gpu_layers", "n_cpu_moe", "split_mode", "main_gpu", "no_kv_offload",
    "flash_attn", "devices", "tensor_split", "tensor_buft_overrides", "load_mode", "lazy_mode",
    "embeddings", "no_op_offload", "no_host", "repack", "fit_target", "fit_min_ctx", "n_prompt", "n_gen",
    "n_depth", "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
)
EXTRA_FIELDS = ("weight_bytes_per_token", "avg_gbs", "roofline_gbs", "roofline_pct")
_FIXED = {
    "build_number": 0, "gpu_info": "", "backends": "CPU", "cpu_mask": "0x0", "cpu_strict": False,
    "poll": 50, "n_gpu_layers": 0, "n_cpu_moe": 0,
    "split_mode": "layer", "main_gpu": 0, "no_kv_offload": False, "devices": "auto",
    "tensor_split": "0.00", "tensor_buft_overrides": "none", "lazy_mode": "auto",
    "embeddings": False, "no_op_offload": 0, "no_host": False, "repack": False, "fit_target": 0,
    "fit_min_ctx": 0, "n_depth": 0,
}


def record(r: Result) -> dict:
    """One result as llama-bench's fields, then llamapy's extra ones (None where not measured)."""
    rec = dict(_FIXED)
    rec.update(
        build_commit=f"llamapy-{__version__}", cpu_info=cpu_info(), model_filename=r.model.filename,
        model_type=r.model.model_type, model_size=r.model.size, model_n_params=r.model.n_params,
        n_batch=r.test.n_batch, n_ubatch=r.test.n_ubatch, n_threads=r.test.n_threads,
        type_k=r.test.type_k, type_v=r.test.type_v, flash_attn={"on": 1, "off": 0}.get(r.test.flash_attn, -1),
        load_mode="mmap" if r.test.use_mmap else "none",
        n_prompt=r.test.n_prompt, n_gen=r.test.n_gen, test_time=r.test_time, avg_ns=r.avg_ns,
        stddev_ns=r.stddev_ns, avg_ts=r.avg_ts, stddev_ts=r.stddev_ts,
    )
    ordered = {name: rec[name] for name in FIELDS}
    ordered.update(samples_ns=list(r.samples_ns), samples_ts=r.samples_ts)
    roof = r.roofline_bps / 1e9 if r.roofline_bps else None
    ordered.update(weight_bytes_per_token=r.model.bytes_per_token, avg_gbs=r.gbs, roofline_gbs=roof,
                   roofline_pct=r.roofline_pct)
    return ordered


# --- printers: each returns text and never writes, so the command decides where it goes --------------

class Printer:
    def header(self) -> str:
        return ""

    def row(self, r: Result) -> str:
        raise NotImplementedError

    def footer(self) -> str:
        return ""


class JsonlPrinter(Printer):
    def row(self, r: Result) -> str:
        return json.dumps(record(r), ensure_ascii=False) + "\n"


class JsonPrinter(Printer):
    """An array written a row at a time, so an interrupted run still shows what it measured."""

    def __init__(self):
        self.rows = 0

    def header(self) -> str:
        return "[\n"

    def row(self, r: Result) -> str:
        fields = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in record(r).items())
        sep = ",\n" if self.rows else ""
        self.rows += 1
        return f"{sep}  {{\n{fields}\n  }}"

    def footer(self) -> str:
        return "\n]\n"


class CsvPrinter(Printer):
    """llama-bench's csv: every value quoted, booleans as 0/1, no sample lists."""

    COLUMNS = FIELDS + EXTRA_FIELDS

    def header(self) -> str:
        return self._line(self.COLUMNS)

    def row(self, r: Result) -> str:
        rec = record(r)
        return self._line([_csv_value(rec[c]) for c in self.COLUMNS])

    @staticmethod
    def _line(values) -> str:
        buf = io.StringIO()
        csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n").writerow(values)
        return buf.getvalue()


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:f}"
    return str(value)


class MarkdownPrinter(Printer):
    """llama-bench's table (same columns, widths and alignment), plus GB/s and optionally roofline."""

    def __init__(self, show_batch: bool = False, roofline: dict[int, float] | None = None, swept=()):
        # (title, width): negative widths are left-aligned, as in llama-bench
        self.columns = [("model", -30), ("size", 10), ("params", 10), ("backend", -10), ("threads", 7)]
        if show_batch:
            self.columns.append(("n_batch", 7))
        self.columns += [_SWEPT_COLUMNS[name] for name in swept]
        self.columns += [("test", 15), ("t/s", 20), ("GB/s", 8)]
        if roofline:
            self.columns.append(("roofline", 8))
        self.roofline = roofline or {}

    def header(self) -> str:
        titles = "|" + "".join(f" {_pad(t, w)} |" for t, w in self.columns)
        rules = "|" + "".join(f" {'-' * (abs(w) - 1)}{':' if w > 0 else '-'} |" for _, w in self.columns)
        return f"{titles}\n{rules}\n"

    def row(self, r: Result) -> str:
        cells = _markdown_cells(r)
        return "|" + "".join(f" {_pad(cells[t], w)} |" for t, w in self.columns) + "\n"

    def footer(self) -> str:
        lines = [f"\nbuild: llamapy {__version__} (numba {numba.__version__})"]
        if self.roofline:
            bw = ", ".join(f"{bps / 1e9:.1f} GB/s at {n} thread{'s' * (n > 1)}"
                           for n, bps in sorted(self.roofline.items()))
            lines.append(f"roofline: memory read bandwidth {bw}")
        return "\n".join(lines) + "\n"


# llama-bench's column titles and widths for the swept parameters.
_SWEPT_COLUMNS = {"n_threads_batch": ("n_threads_batch", 15), "n_ubatch": ("n_ubatch", 8),
                  "type_k": ("type_k", -6), "type_v": ("type_v", -6), "flash_attn": ("fa", 4),
                  "use_mmap": ("mmap", 4)}


def _pad(text: str, width: int) -> str:
    return text.ljust(-width) if width < 0 else text.rjust(width)


def _markdown_cells(r: Result) -> dict[str, str]:
    size, n = r.model.size, r.model.n_params
    return {
        "model": r.model.model_type,
        "size": f"{size / 2**20:.2f} MiB" if size < 2**30 else f"{size / 2**30:.2f} GiB",
        "params": f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} B",
        "backend": "CPU",
        "threads": str(r.test.n_threads),
        "n_batch": str(r.test.n_batch),
        "n_threads_batch": str(r.test.n_threads_batch or r.test.n_threads),
        "n_ubatch": str(r.test.n_ubatch),
        "type_k": r.test.type_k,
        "type_v": r.test.type_v,
        "fa": r.test.flash_attn,
        "mmap": str(int(r.test.use_mmap)),
        "test": r.test.name,
        "t/s": f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}",
        "GB/s": f"{r.gbs:.2f}" if r.gbs is not None else "",
        "roofline": f"{r.roofline_pct:.1f} %" if r.roofline_pct is not None else "",
    }


def make_printer(fmt: str, show_batch: bool = False, roofline: dict[int, float] | None = None,
                 swept=()) -> Printer:
    if fmt == "md":
        return MarkdownPrinter(show_batch, roofline, swept)
    printers = {"csv": CsvPrinter, "json": JsonPrinter, "jsonl": JsonlPrinter}
    if fmt not in printers:
        raise ValueError(f"unknown output format {fmt!r} (one of: {', '.join(FORMATS)})")
    return printers[fmt]()
