"""`llamapy serve`: llama-server. An OpenAI-compatible HTTP server with parallel slots and a chat page.

The socket is bound first and the model loads on the engine thread, so /health answers 503 until it
is ready. Notices go to stderr; Ctrl-C (or SIGTERM) stops the server.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import time
from pathlib import Path
from typing import Annotated

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
    user_errors,
)

DEFAULT_CTX = 4096

ApiKeys = Annotated[list[str] | None, typer.Option(
    "--api-key", help="Require this key (Authorization: Bearer KEY or X-Api-Key); may repeat. /health and the "
    "chat page stay open.")]


def say(message: str) -> None:
    print(f"llamapy serve: {message}", file=sys.stderr, flush=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@user_errors
def serve(
    model: str = typer.Option(None, "-m", "--model", help="GGUF model path (default: SmolLM2-135M-Instruct)."),
    hf_repo: str = typer.Option(None, "-hf", "--hf-repo", help="Hugging Face repo user/repo[:QUANT]."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", help="Port to listen on (0: any free one)."),
    parallel: int = typer.Option(1, "-np", "--parallel", help="Slots: requests served at once (batched together)."),
    ctx_size: int = typer.Option(DEFAULT_CTX, "-c", "--ctx-size", help="Context size in tokens, shared by the "
                                 "slots (each gets c / np)."),
    batch_size: int = typer.Option(512, "-b", "--batch-size", help="Prompt tokens per forward pass."),
    threads: int = typer.Option(None, "-t", "--threads", help="Threads (default: all cores)."),
    api_key: ApiKeys = None,
    chat_template: str = typer.Option(None, "--chat-template", help="Built-in template name or Jinja text."),
    chat_template_file: str = typer.Option(None, "--chat-template-file", help="Jinja chat template file."),
    alias: str = typer.Option(None, "-a", "--alias", help="Model name in /v1/models and requests (default: the "
                              "file name)."),
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
    import uvicorn

    from llamapy.chat import read_template_file
    from llamapy.server.app import ServerConfig, create_app
    from llamapy.server.engine import Engine

    if not 0 <= port <= 65535:
        fail(f"--port must be 0 to 65535, got {port}")
    if parallel < 1:
        fail(f"-np must be at least 1, got {parallel}")
    if ctx_size < parallel * 8:
        fail(f"-c {ctx_size} leaves fewer than 8 tokens per slot for -np {parallel}")
    if batch_size < 1:
        fail(f"-b must be at least 1, got {batch_size}")
    keys = tuple(k for k in api_key or () if k)
    if api_key and len(keys) != len(api_key):
        fail("--api-key must not be empty")
    template = read_template_file(chat_template_file) if chat_template_file else chat_template
    options = run_options(threads, threads_batch, ubatch_size, cache_type_k, cache_type_v, flash_attn, mlock, no_mmap,
                          n_gpu_layers, numerics)
    path = model_path(model, hf_repo)  # a missing file fails here, before anything listens

    def load():
        m = open_model(str(path), None, rpc, tensor_split, options)
        m.chat_format(template)  # an unknown template name fails the start, not the first request
        return m

    n_ctx_slot = ctx_size // parallel
    config = ServerConfig(alias or Path(path).name, str(path), keys, template)
    uv_server = None

    def load_failed(message: str) -> None:
        if uv_server is not None:
            uv_server.should_exit = True

    engine = Engine(load, parallel, n_ctx_slot, batch_size, threads, on_load_error=load_failed)
    app = create_app(engine, config)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    if not is_loopback(host):
        say(f"warning: listening on {host} without TLS: prompts, replies and API keys cross the network in clear "
            "text; put a TLS proxy in front of it" + ("" if keys else ", and set --api-key"))
    url_host = f"[{host}]" if ":" in host else host
    say(f"listening on http://{url_host}:{bound} ({parallel} slot(s) of {n_ctx_slot} tokens); loading {path}")
    started = time.perf_counter()
    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # Ctrl-C, SIGTERM: end the running replies, then shut down
            engine.close()
            super().handle_exit(sig, frame)

    uv_server = Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                      timeout_graceful_shutdown=10))
    _announce_when_ready(engine, started)
    uv_server.run(sockets=[sock])
    if engine.load_error is not None:
        fail(engine.load_error)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        fail(f"cannot listen on {host}:{port}: {e.strerror}")
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _announce_when_ready(engine, started: float) -> None:
    import threading

    def wait():
        while not engine.ready.wait(0.5):
            if engine.load_error is not None:
                return
        say(f"model loaded in {time.perf_counter() - started:.1f} s; ready")

    threading.Thread(target=wait, name="llamapy-announce", daemon=True).start()
