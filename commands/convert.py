"""`llamapy convert`: a Hugging Face checkpoint folder to GGUF, as llama.cpp's convert_hf_to_gguf.py.

Progress (one bar, per tensor) and the summary go to stderr; the output file appears only when complete.
"""

from __future__ import annotations

import sys

import typer

from ._common import user_errors

HELP = ("Convert a Hugging Face checkpoint folder (config.json, safetensors, tokenizer) to GGUF, as llama.cpp's "
        "convert_hf_to_gguf.py. Families: LLaMA 2/3, Mistral, Qwen2, Qwen3, Gemma 3 (see docs/convert.md).")


class _Bar:
    """One stderr line, redrawn per tensor (every 25th line when stderr is not a terminal)."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()

    def __call__(self, done: int, total: int, name: str) -> None:
        width = 24
        filled = width * done // total
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done:4d}/{total} {name}"
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K" + ("\n" if done == total else ""))
        elif done == total or done % 25 == 1:
            self.stream.write(line + "\n")
        self.stream.flush()


@user_errors
def convert(
    hf_dir: str = typer.Argument(..., metavar="HF_DIR", help="Checkpoint folder (config.json, *.safetensors)."),
    outfile: str = typer.Option(None, "--outfile", help="Output GGUF (default: NAME-SIZE-TYPE.gguf in HF_DIR)."),
    outtype: str = typer.Option("auto", "--outtype", help="f32, f16, bf16, q8_0, or auto (f16/bf16 as the "
                                "checkpoint's first matrix)."),
) -> None:
    from llamapy.convert import CheckpointError, TokenizerError, UnsupportedModel
    from llamapy.convert import convert as run_convert

    try:
        result = run_convert(hf_dir, outfile, outtype.lower(), on_tensor=_Bar())
    except (CheckpointError, TokenizerError, UnsupportedModel, KeyError, OSError) as e:
        raise ValueError(_one_line(e)) from None
    for warning in result.warnings:
        print(f"convert: warning: {warning}", file=sys.stderr)
    mib = result.n_bytes / 2**20
    pre = f", pre {result.pre}" if result.pre else ""
    print(f"convert: {result.path} ({result.arch}, {result.outtype.upper()}): {result.n_tensors} tensors, "
          f"{result.n_params / 1e6:.2f} M parameters, {mib:.2f} MiB, tokenizer {result.tokenizer}{pre}, "
          f"in {result.seconds:.2f} s", file=sys.stderr)


def _one_line(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"config.json lacks {e.args[0]!r}, which this family needs"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
