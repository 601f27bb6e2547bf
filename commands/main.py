"""`llamapy`: one entry point, llama.cpp's tools as subcommands."""

from __future__ import annotations

import typer

from llamapy import __version__

from . import bench, chat, convert, imatrix, perplexity, quantize, run, simple

app = typer.Typer(
    name="llamapy",
    help="llama.cpp's tools in Python: run GGUF language models on the CPU.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"llamapy {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """llama.cpp's tools in Python: run GGUF language models on the CPU."""


app.command("chat", help="Chat with a model in the terminal, as llama-cli's conversation mode.")(chat.chat)
app.command("simple", help="Greedy continuation of a prompt, as llama-simple.")(simple.simple)
app.command("run", help="Generate from a prompt with sampling, as llama-run.")(run.run)
app.command("bench", help="Prompt and generation speed, as llama-bench.")(bench.bench)
app.command("perplexity", help="Perplexity and KL-divergence of a model on a text, as llama-perplexity.")(
    perplexity.perplexity
)

app.command("quantize", help=quantize.HELP, epilog=quantize.TYPES_HELP)(quantize.quantize)
app.command("convert", help=convert.HELP)(convert.convert)
app.command("imatrix", help="Importance matrix of a model over a text, as llama-imatrix.")(imatrix.imatrix)

if __name__ == "__main__":
    app()
