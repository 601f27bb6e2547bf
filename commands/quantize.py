"""`llamapy quantize`: llama-quantize. IN.gguf [OUT.gguf] TYPE [THREADS], with its flags and type names.

Progress (one bar, per tensor) and the summary go to stderr; the output file appears only when complete.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys

import typer


# _common imports every library module a command's errors can come from (chat templates, models,
# the hub): about 0.1 s of start-up that quantizing never needs.  It is imported only on the way out
# with an error, where its user_errors gives the one-line report every command gives.
def fail(message: str, code: int = 1) -> None:
    from ._common import fail

    fail(message, code)


def user_errors(func):
    """_common.user_errors, importing _common only when an exception leaves `func`."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except BaseException as e:
            from ._common import user_errors as report

            return report(_raise)(e)

    return wrapper


def _raise(e: BaseException):
    raise e


def set_threads(n: int | None) -> None:
    """THREADS: numba's thread count (default: all cores), as _common.set_threads."""
    if n is None or n <= 0:
        return
    import numba

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _type_table() -> str:
    from llamapy.quantize.mixes import ALIASES, FILE_TYPES
    from llamapy.quants.types import QUANT_TYPES

    lines = ["Allowed quantization types (name or general.file_type number), bits per weight of the main type:", ""]
    for f in FILE_TYPES.values():
        bpw = "" if f.name == "COPY" else f"{QUANT_TYPES[f.default_type].bits_per_weight:6.4g} bpw"
        lines.append(f"  {f.file_type:2d}  {f.name:<7} {bpw:>10}  {f.help}")
    for alias, target in ALIASES.items():
        lines.append(f"      {alias:<7} alias for {target}")
    return "\n".join(lines)


HELP = (
    "Quantize a GGUF model, as llama-quantize: IN.gguf [OUT.gguf] TYPE [THREADS].\n\n"
    "Without OUT the file is ggml-model-TYPE.gguf beside IN; it appears only once complete."
)
TYPES_HELP = _type_table()


def _parse_type(name: str):
    from llamapy.quantize.mixes import FILE_TYPES, file_type_named

    if name.isdigit():  # llama-quantize also takes the numeric file type
        for f in FILE_TYPES.values():
            if f.file_type == int(name) and f.name != "COPY":
                return f
    return file_type_named(name)


def _tensor_type(name: str | None):
    from llamapy.quants.types import quant_type_named

    return None if name is None else quant_type_named(name).type_id


def _split_args(args: list[str]):
    """IN [OUT] TYPE [THREADS]: the second word is the type if it parses as one, else OUT."""
    if len(args) < 2:
        fail("usage: llamapy quantize [options] IN.gguf [OUT.gguf] TYPE [THREADS]")
    inp, rest = args[0], args[1:]
    try:
        ftype = _parse_type(rest[0])
        out, rest = None, rest[1:]
    except ValueError:
        if len(rest) < 2:
            raise  # a lone unknown type: its error lists the valid ones
        out, ftype, rest = rest[0], _parse_type(rest[1]), rest[2:]
    threads = None
    if rest:
        if not rest[0].lstrip("-").isdigit() or len(rest) > 1:
            fail(f"invalid thread count {' '.join(rest)!r}")
        threads = int(rest[0])
    return inp, out, ftype, threads


class _Bar:
    """One stderr line, redrawn per tensor."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()

    interrupted = False  # set by SIGINT; acted on here, between tensors (see _defer_sigint)

    def __call__(self, done) -> None:
        from llamapy.quants.types import type_name

        if _Bar.interrupted:
            raise KeyboardInterrupt

        width = 24
        filled = width * done.index // done.total
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {done.index:4d}/{done.total} "
                f"{done.name:<32} {type_name(done.src_type):>5} -> {type_name(done.dst_type):<6}")
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            if done.index == done.total:
                self.stream.write("\n")
        elif done.index == done.total or done.index % 25 == 1:
            self.stream.write(line + "\n")
        self.stream.flush()


@contextlib.contextmanager
def _defer_sigint():
    """Ctrl-C as a flag the progress callback acts on after the tensor in hand: a signal that lands
    inside numba (compiling, or in a kernel) could otherwise be lost there, and the quantizing would
    run to the end. The KeyboardInterrupt then unwinds the writer, which removes its temporary file."""
    def handle(signum, frame):
        _Bar.interrupted = True

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@user_errors
def quantize(
    args: list[str] = typer.Argument(..., metavar="IN.gguf [OUT.gguf] TYPE [THREADS]"),  # noqa: B008
    allow_requantize: bool = typer.Option(False, "--allow-requantize", help="Allow requantizing tensors "
                                          "that are already quantized (quality suffers)."),
    leave_output_tensor: bool = typer.Option(False, "--leave-output-tensor", help="Leave output.weight "
                                             "unquantized."),
    pure: bool = typer.Option(False, "--pure", help="No mix: every quantizable tensor gets the default type."),
    output_tensor_type: str = typer.Option(None, "--output-tensor-type", help="Type for output.weight."),
    token_embedding_type: str = typer.Option(None, "--token-embedding-type", help="Type for token_embd.weight."),
    imatrix: str = typer.Option(None, "--imatrix", help="Importance matrix (llama-imatrix or llamapy imatrix "
                                "GGUF) weighting the quantization search."),
    include_weights: list[str] = typer.Option(None, "--include-weights", help="Use the imatrix only for "  # noqa: B008
                                              "tensors whose name contains this (repeatable)."),
    exclude_weights: list[str] = typer.Option(None, "--exclude-weights", help="Do not use the imatrix for "  # noqa: B008
                                              "tensors whose name contains this (repeatable)."),
) -> None:
    if include_weights and exclude_weights:
        fail("--include-weights and --exclude-weights cannot be used together")
    inp, out, ftype, threads = _split_args(args)
    # One parallel region per tensor: OpenMP threads that spin between them burn the cores
    # llama-quantize would use (measured 2-3x slower on a shared 2-core machine); let them sleep.
    # Read when numba first starts its thread pool, which nothing before this line has done.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    set_threads(threads)
    from llamapy.quantize.mixes import Options
    from llamapy.quantize.model import quantize_model

    opts = Options(pure=pure, leave_output_tensor=leave_output_tensor,
                   output_tensor_type=_tensor_type(output_tensor_type),
                   token_embedding_type=_tensor_type(token_embedding_type))
    weights, info = _load_imatrix(imatrix, include_weights, exclude_weights)
    with _defer_sigint():
        summary = quantize_model(inp, out, ftype.name, allow_requantize=allow_requantize, opts=opts,
                                 imatrix=weights, imatrix_info=info, progress=_Bar())
    mib = 1024 * 1024
    print(f"quantize: {summary.path} ({ftype.name}): {summary.n_tensors} tensors, "
          f"{summary.src_bytes / mib:.2f} MiB ({summary.src_bpw:.2f} BPW) -> "
          f"{summary.dst_bytes / mib:.2f} MiB ({summary.dst_bpw:.2f} BPW) in {summary.seconds:.2f} s", file=sys.stderr)
    if summary.n_fallback:
        print(f"quantize: {summary.n_fallback} of {summary.n_tensors} tensors fell back to a 32-block type "
              "(rows not a multiple of 256)", file=sys.stderr)


def _load_imatrix(path, include, exclude):
    if path is None:
        return None, None
    from llamapy.imatrix import load_imatrix

    weights, meta = load_imatrix(path)
    if exclude:
        weights = {k: v for k, v in weights.items() if not any(p in k for p in exclude)}
    if include:
        weights = {k: v for k, v in weights.items() if any(p in k for p in include)}
    info = {"file": str(path)[:127], "datasets": [d[:127] for d in meta["datasets"]], "entries": len(weights),
            "chunks": meta["chunk_count"]}
    return weights, info
