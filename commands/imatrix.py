"""`llamapy imatrix`: llama-imatrix. Importance matrix of a model over a text, for `quantize --imatrix`.

Progress on stderr; the file is written once, complete, at the end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from ._common import fail, open_model, set_threads, user_errors


@user_errors
def imatrix(
    model: str = typer.Option(None, "-m", "--model", help="GGUF model path (default: SmolLM2-135M-Instruct)."),
    file: str = typer.Option(None, "-f", "--file", help="The calibration text."),
    output: str = typer.Option("imatrix.gguf", "-o", "--output", help="Where to write the importance matrix."),
    ctx_size: int = typer.Option(512, "-c", "--ctx-size", help="Tokens per chunk."),
    batch_size: int = typer.Option(2048, "-b", "--batch-size", help="As llama.cpp's -b: b/c chunks "
                                   "share each pass, stepped through in 512-token ubatches."),
    chunks: int = typer.Option(-1, "--chunks", help="Use at most this many chunks (-1: all)."),
    threads: int = typer.Option(None, "-t", "--threads", help="Threads (default: all cores)."),
) -> None:
    if file is None:
        fail("no calibration text: give it with -f FILE")
    from .perplexity import progress_bar, read_text

    text = read_text(Path(file))
    set_threads(threads)
    from llamapy.imatrix import ImatrixCollector, collect, save_imatrix

    m = open_model(model)
    collector = ImatrixCollector()
    start = time.perf_counter()
    n_done = 0
    bar = None
    for done in collect(m, text, ctx_size, batch_size, chunks if chunks > 0 else None, collector):
        if bar is None:
            bar = progress_bar(done.total, "chunk", "imatrix")
        bar.update(done.index - n_done)
        n_done = done.index
    if bar is not None:
        bar.close()
    save_imatrix(output, collector, [str(file)], n_done, ctx_size)
    print(f"imatrix: {len(collector.sums)} matrices over {n_done} chunks of {ctx_size} tokens in "
          f"{time.perf_counter() - start:.1f} s -> {output}", file=sys.stderr)
