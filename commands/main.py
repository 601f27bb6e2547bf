"""`llamapy`: one entry point, llama.cpp's tools as subcommands.

A subcommand's module (and the library it pulls in: numba, the models, the chat templates) is imported
only when that subcommand runs or shows its own help; `llamapy --help` lists them from the summaries
registered here. Add a subcommand with one `command(...)` line.
"""

from __future__ import annotations

import atexit
import gc
from importlib import import_module

import typer
from typer.core import TyperCommand, TyperGroup

from llamapy import __version__

# name -> (target "module:function" in llamapy.commands, summary, help attribute, epilog attribute, one_shot)
_COMMANDS: dict[str, tuple[str, str, str | None, str | None, bool]] = {}


def command(name: str, target: str, summary: str, help: str | None = None, epilog: str | None = None,
            one_shot: bool = False) -> None:
    """Register `llamapy NAME`, run by TARGET ("module:function", a Typer-style function in llamapy.commands).

    SUMMARY is what `llamapy --help` lists, and `llamapy NAME --help` shows unless HELP names an attribute
    of the module holding a longer text; EPILOG likewise names an attribute shown after the options.
    ONE_SHOT: a batch job that ends the process (quantize): see _one_shot."""
    _COMMANDS[name] = (target, summary, help, epilog, one_shot)


def _one_shot() -> None:
    """No cyclic garbage collection for the rest of this process, and none at its exit.

    Importing numba and loading its first kernel create some 10^5 long-lived objects (types, typing
    templates, registries); the collector walks them all again and again while they are made (0.1-0.3 s
    of collections) and once more as the interpreter shuts down (another 0.3-0.5 s), more than a Q8_0
    quantization of SmolLM2 takes.  A batch job's few cycles can wait for the exit."""
    gc.disable()
    atexit.register(gc.freeze)  # atexit runs before the shutdown's collections, which then skip it all


class _LazyCommand(TyperCommand):
    """Stands in for a subcommand in listings; builds the real one (importing its module) when it runs."""

    def __init__(self, name: str, context_settings: dict | None = None):
        super().__init__(name, help=_COMMANDS[name][1], context_settings=context_settings)
        self._real: TyperCommand | None = None

    def real(self) -> TyperCommand:
        if self._real is None:
            target, summary, help_attr, epilog_attr, one_shot = _COMMANDS[self.name]
            if one_shot:
                _one_shot()  # before the import: that is where numba's objects are made
            module_name, function = target.split(":")
            module = import_module(f"{__package__}.{module_name}")
            sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
            sub.command(self.name, help=getattr(module, help_attr) if help_attr else summary,
                        epilog=getattr(module, epilog_attr) if epilog_attr else None,
                        context_settings=self.context_settings)(getattr(module, function))
            self._real = typer.main.get_command(sub)
        return self._real

    def make_context(self, info_name, args, parent=None, **extra):
        return self.real().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        return self.real().invoke(ctx)

    def get_params(self, ctx):
        return self.real().get_params(ctx)

    def format_help(self, ctx, formatter):
        return self.real().format_help(ctx, formatter)


class _LazyGroup(TyperGroup):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in _COMMANDS:
            self.commands.setdefault(name, _LazyCommand(name, context_settings=self.context_settings))


app = typer.Typer(
    name="llamapy",
    cls=_LazyGroup,
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


command("chat", "chat:chat", "Chat with a model in the terminal, as llama-cli's conversation mode.")
command("simple", "simple:simple", "Greedy continuation of a prompt, as llama-simple.", one_shot=True)
command("run", "run:run", "Generate from a prompt with sampling, as llama-run.", one_shot=True)
command("bench", "bench:bench", "Prompt and generation speed, as llama-bench.")
command("perplexity", "perplexity:perplexity", "Perplexity and KL-divergence of a model on a text, as "
        "llama-perplexity.")
command("quantize", "quantize:quantize", "Quantize a GGUF model, as llama-quantize: IN.gguf [OUT.gguf] TYPE [THREADS].",
        help="HELP", epilog="TYPES_HELP", one_shot=True)
command("convert", "convert:convert", "Convert a Hugging Face checkpoint folder to GGUF, as llama.cpp's "
        "convert_hf_to_gguf.py.", help="HELP")
command("imatrix", "imatrix:imatrix", "Importance matrix of a model over a text, as llama-imatrix.")
command("serve", "serve:serve", "An OpenAI-compatible HTTP server with parallel slots, as llama-server.")
command("rpc-server", "rpc_server:rpc_server", "A Dask worker holding model layers for --rpc clients, as "
        "llama.cpp's rpc-server.", help="HELP")
command("rpc-scheduler", "rpc_scheduler:rpc_scheduler", "The Dask scheduler that rpc-server workers join and "
        "--rpc clients reach.")

if __name__ == "__main__":
    app()
