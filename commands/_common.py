"""What the subcommands share: turning library errors into one line on stderr, threads, model loading."""

from __future__ import annotations

import functools
import signal
import sys
import threading
from typing import Annotated

import typer

from llamapy.chat.templates import ChatTemplateError
from llamapy.config import ConfigError
from llamapy.distributed.errors import DistributedError
from llamapy.gguf.reader import GGUFError
from llamapy.hub import ModelNotFound
from llamapy.kv_cache import ContextFull
from llamapy.models import UnknownArchitecture
from llamapy.models.blocks import MissingTensor
from llamapy.quants.types import UnsupportedQuantType

# Errors a user can cause with bad input: reported as one line, never as a traceback.
USER_ERRORS = (
    FileNotFoundError, IsADirectoryError, PermissionError, GGUFError, ModelNotFound, ContextFull,
    UnknownArchitecture, UnsupportedQuantType, MissingTensor, ConfigError, ChatTemplateError, ValueError,
    UnicodeDecodeError, DistributedError,
)


def fail(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def user_errors(func):
    """Report bad input as `error: ...` on stderr with exit 1; Ctrl-C exits 130 quietly."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            print(file=sys.stderr)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(0) from None
        except Exception as e:
            # Ctrl-C landing inside a numba kernel surfaces as another error caused by KeyboardInterrupt.
            if _caused_by_interrupt(e):
                print(file=sys.stderr)
                raise typer.Exit(130) from None
            if not isinstance(e, USER_ERRORS):
                raise
            fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)

    return wrapper


def _caused_by_interrupt(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


class DeferredInterrupt:
    """Ctrl-C as a flag checked between steps, so it never lands inside a numba kernel (which turns it
    into an opaque SystemError). Works on the main thread only; elsewhere Ctrl-C stays as it was."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False



def set_threads(n: int | None) -> None:
    """-t: numba's thread count (default: all cores)."""
    if n is None or n <= 0:
        return
    import numba

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


# --rpc and -ts, shared by every command that opens a model: `rpc: Rpc = None, tensor_split: TensorSplit = None`.
Rpc = Annotated[str | None, typer.Option(
    "--rpc", help="Run the layers on the workers of the Dask scheduler at tcp://HOST:8786 (start it with llamapy "
    "rpc-scheduler, and llamapy rpc-server on each host); see docs/distributed.md.")]
TensorSplit = Annotated[str | None, typer.Option(
    "-ts", "--tensor-split", help="With --rpc: each worker's share of the layers, workers in address order, "
    "e.g. 3,1 (default: in proportion to their free memory).")]


# The performance parameters (llamapy.options.RunOptions), llama.cpp's names; docs/performance.md.
ThreadsBatch = Annotated[int | None, typer.Option(
    "-tb", "--threads-batch", help="Threads for prompt batches (default: as -t).")]
UBatch = Annotated[int, typer.Option("-ub", "--ubatch-size", help="Most tokens per forward pass (physical batch).")]
CacheTypeK = Annotated[str, typer.Option("-ctk", "--cache-type-k", help="KV cache type of keys: f16, f32, q8_0, q4_0.")]
CacheTypeV = Annotated[str, typer.Option("-ctv", "--cache-type-v", help="KV cache type of values: f16, f32, q8_0, "
                                         "q4_0 (quantized needs -fa on/auto).")]
FlashAttn = Annotated[str, typer.Option("-fa", "--flash-attn", help="Flash attention: on, off or auto (= on).")]
Mlock = Annotated[bool, typer.Option("--mlock", help="Keep the weights in RAM (mlock).")]
Numerics = Annotated[str, typer.Option(
    "--numerics", help="exact: llama.cpp's AVX2 arithmetic bit for bit; fast: without its attention split and "
    "batch-size kernel choices (docs/performance.md).")]
NoMmap = Annotated[bool, typer.Option("--no-mmap", help="Read the model into memory instead of mapping it.")]
GpuLayers = Annotated[str | None, typer.Option("-ngl", "--n-gpu-layers", "--gpu-layers",
                                               help="Accepted for llama.cpp command lines; llamapy has no GPU "
                                               "backend yet.")]


def warn_gpu_layers(n_gpu_layers) -> None:
    """-ngl: accepted so that llama.cpp command lines paste, with one line saying it does nothing."""
    if n_gpu_layers is not None:
        print(f"warning: -ngl {n_gpu_layers} ignored: llamapy has no GPU backend yet, every layer runs on the CPU",
              file=sys.stderr)


def run_options(threads=None, threads_batch=None, ubatch=512, cache_type_k="f16", cache_type_v="f16",
                flash_attn="auto", mlock=False, no_mmap=False, n_gpu_layers=None, numerics="exact"):
    """The RunOptions of a command line (a bad value is a one-line error); -ngl gets its one line."""
    from llamapy.options import RunOptions

    warn_gpu_layers(n_gpu_layers)
    return RunOptions(threads=threads if threads and threads > 0 else None, threads_batch=threads_batch,
                      n_ubatch=ubatch, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                      flash_attn=str(flash_attn).lower(), use_mmap=not no_mmap, use_mlock=mlock,
                      numerics=str(numerics).lower())


def open_model(spec: str | None, hf_repo: str | None = None, rpc: str | None = None,
               tensor_split: str | None = None, options=None):
    """-m PATH (default model when None) or -hf user/repo[:QUANT].

    rpc (--rpc tcp://SCHEDULER:8786): a DistributedModel, the same interface with its layers on that Dask
    cluster's workers, split by tensor_split (-ts "3,1") or else by the workers' free memory."""
    from llamapy.model import Model

    path = model_path(spec, hf_repo)
    if rpc is None:
        if tensor_split is not None:
            raise ValueError("-ts/--tensor-split splits layers across --rpc workers; give --rpc too")
        model = Model(path, options)
    else:
        from llamapy.distributed.client import DistributedModel
        from llamapy.distributed.plan import parse_tensor_split
        from llamapy.distributed.server import quiet_logs

        split = parse_tensor_split(tensor_split)
        quiet_logs()  # the client's errors reach the user as one line, not as Dask's log records
        # options: -t/-tb for this host's part (embeddings, head); -ctk/-ctv/-fa for every worker's too
        model = DistributedModel(path, rpc, split, options)
    if model.mlock_error:
        print(f"warning: {model.mlock_error}", file=sys.stderr)
    return model


def model_path(spec: str | None, hf_repo: str | None = None):
    from llamapy.hub import resolve_hf, resolve_model

    if hf_repo and spec:
        raise ValueError("give either -m or -hf, not both")
    return resolve_hf(hf_repo) if hf_repo else resolve_model(spec)


def sampling_options(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed) -> dict:
    return dict(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                repeat_last_n=repeat_last_n, seed=None if seed is None or seed < 0 else seed)
