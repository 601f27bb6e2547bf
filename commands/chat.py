"""`llamapy chat`: llama-cli's conversation mode. A prompt `> `, streamed replies, a cache kept across turns.

The model runs on this (the main) thread; Ctrl-C during a reply sets a flag that the generation loop
checks between tokens (never an exception inside a kernel), ends that reply and returns to the prompt.
Replies go to stdout, everything else (stats lines, notices) to stderr.
With stdin not a terminal each input line is one message.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from llamapy.distributed.errors import DistributedError

from ._common import (
    CacheTypeK,
    CacheTypeV,
    DeferredInterrupt,
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
    open_model,
    run_options,
    sampling_options,
    set_threads,
    user_errors,
)
from .chat_input import ScriptInput, TerminalInput

DEFAULT_CTX = 4096

HELP = """commands:
  /help           this list
  /clear          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt (empty: none) and start over
  /regen          answer the last message again
  /save FILE      write the conversation as JSON messages
  /load FILE      read a conversation written by /save (OpenAI-style messages)
  /stats          context use and totals
  /exit, /bye     leave (Ctrl-D too)
input: end a line with \\ to continue it; a line of \"\"\" opens and closes a multi-line block.
Ctrl-C stops a reply."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def stats_line(timings, session) -> str:
    return (f"[ prompt: {timings.n_prompt} new tokens ({timings.n_reused} reused), {timings.prompt_tps:.1f} t/s | "
            f"generation: {timings.n_generated} tokens, {timings.generate_tps:.1f} t/s | "
            f"context: {session.n_past}/{session.n_ctx} ]")


class ChatLoop:
    """Reads messages and commands, streams replies, keeps the totals /stats shows."""

    def __init__(self, chat, reader, show_timings: bool, interactive: bool, launched: float, verbose: bool):
        self.chat = chat
        self.reader = reader
        self.show_timings = show_timings
        self.interactive = interactive
        self.launched = launched
        self.verbose = verbose
        self.n_replies = 0
        self.totals = {"prompt": 0, "reused": 0, "generated": 0}

    # --- replies ------------------------------------------------------------------------------

    def send(self, text: str | None) -> None:
        """Answer text (None: the last user message again), streaming the reply to stdout."""
        from llamapy.chat import ChatTemplateError, MessageTooLong

        try:
            turn = self.chat.prepare(text)
        except MessageTooLong as e:
            say(f"chat: {e}")
            return
        except ChatTemplateError as e:
            if not self.interactive:
                fail(str(e))
            say(f"error: {e}")
            return
        if turn.n_dropped:
            say(f"chat: context full: dropped the {turn.n_dropped} oldest exchange(s), the system prompt kept")
        if self.n_replies and not self.interactive:
            sys.stdout.write("\n")  # a blank line between replies
        self.n_replies += 1
        self.stream(turn)

    def stream(self, turn) -> None:
        out = sys.stdout
        finish = None
        try:
            with DeferredInterrupt() as ctrl_c, contextlib.closing(self.chat.respond(turn)) as steps:
                for step in steps:
                    if step.text:
                        out.write(step.text)
                        out.flush()
                    finish = step.finish
                    if ctrl_c.requested:
                        finish = "interrupted"
                        break
        except KeyboardInterrupt:
            finish = "interrupted"
        except DistributedError as e:  # --rpc: a worker was lost; the next message re-plans onto the rest
            if not self.interactive:
                raise
            self.chat.messages = turn.messages[:-1]  # as before the message: send it again to retry
            out.write("\n")
            say(f"error: {e}")
            return
        out.write("\n")
        out.flush()
        self.report(finish)

    def report(self, finish: str | None) -> None:
        t = self.chat.last_timings
        if t is None:
            return
        self.totals["prompt"] += t.n_prompt
        self.totals["reused"] += t.n_reused
        self.totals["generated"] += t.n_generated
        if finish == "interrupted":
            say("chat: reply stopped (Ctrl-C)")
        elif finish == "context":
            say("chat: the context is full; the reply was cut (the oldest turns go next time)")
        if self.verbose and self.n_replies == 1 and t.first_token_at:
            say(f"chat: first token {t.first_token_at - self.launched:.2f} s after start")
        if self.show_timings:
            say(stats_line(t, self.chat.session))

    # --- commands -----------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Run a /command; False when the chat should end."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/bye", "/quit"):
            return False
        handler = {
            "/help": lambda: say(HELP), "/clear": self.clear, "/regen": self.regen, "/stats": self.stats,
            "/system": lambda: self.system(arg), "/save": lambda: self.save(arg), "/load": lambda: self.load(arg),
        }.get(name)
        if handler is None:
            say(f"chat: unknown command {name} (/help lists them)")
        else:
            handler()
        return True

    def clear(self) -> None:
        self.chat.clear()
        say("chat: conversation cleared" + (" (system prompt kept)" if self.chat.system else ""))

    def system(self, text: str) -> None:
        self.chat.set_system(text or None)
        self.chat.clear()
        say("chat: system prompt " + ("set" if text else "removed") + "; conversation cleared")

    def regen(self) -> None:
        if not self.chat.pop_reply():
            say("chat: no reply to regenerate")
            return
        self.send(None)

    def save(self, path: str) -> None:
        if not path:
            say("chat: /save needs a file name")
            return
        try:
            self.chat.save(path)
        except OSError as e:
            say(f"chat: cannot write {path}: {e.strerror}")
            return
        say(f"chat: saved {len(self.chat.messages)} messages to {path}")

    def load(self, path: str) -> None:
        if not path:
            say("chat: /load needs a file name")
            return
        try:
            self.chat.load(path)
        except (OSError, ValueError) as e:
            say(f"chat: cannot load {path}: {getattr(e, 'strerror', None) or e}")
            return
        say(f"chat: loaded {len(self.chat.messages)} messages from {path}")

    def stats(self) -> None:
        s, c = self.chat.session, self.chat
        say(f"chat: context {s.n_past}/{s.n_ctx} tokens, {len(c.messages)} messages, template: {c.format.name}; "
            f"totals: {self.totals['prompt']} prompt tokens evaluated ({self.totals['reused']} reused), "
            f"{self.totals['generated']} generated")

    # --- the loop -----------------------------------------------------------------------------

    def run(self, first: str | None, single_turn: bool) -> None:
        if first is not None:
            self.send(first)
            if single_turn:
                return
        for text in self.reader:
            if text.startswith("/") and text.split(" ", 1)[0][1:].isalpha():
                if not self.command(text):
                    return
                continue
            if not text.strip():
                continue
            self.send(text)
            if single_turn:
                return


def _read_text_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")


ReversePrompts = Annotated[list[str] | None, typer.Option(
    "-r", "--reverse-prompt", help="Stop the reply at this text (repeatable).")]


@user_errors
def chat(
    model: str = typer.Option(None, "-m", "--model", help="GGUF model path (default: SmolLM2-135M-Instruct)."),
    hf_repo: str = typer.Option(None, "-hf", "--hf-repo", help="Hugging Face repo user/repo[:QUANT]."),
    system: str = typer.Option(None, "-sys", "--system-prompt", help="System prompt."),
    system_file: str = typer.Option(None, "-sysf", "--system-prompt-file", help="System prompt from a file."),
    prompt: str = typer.Option(None, "-p", "--prompt", help="First user message."),
    single_turn: bool = typer.Option(False, "-st", "--single-turn", help="Answer one message, then exit."),
    chat_template: str = typer.Option(None, "--chat-template", help="Built-in template name or Jinja text."),
    chat_template_file: str = typer.Option(None, "--chat-template-file", help="Jinja chat template file."),
    n_predict: int = typer.Option(-1, "-n", "--n-predict", help="Most tokens per reply (-1: until the end)."),
    ctx_size: int = typer.Option(DEFAULT_CTX, "-c", "--ctx-size", help="Context size in tokens."),
    threads: int = typer.Option(None, "-t", "--threads", help="Threads (default: all cores)."),
    batch_size: int = typer.Option(512, "-b", "--batch-size", help="Prompt tokens per forward pass."),
    temp: float = typer.Option(0.8, "--temp", help="Temperature; 0 is greedy."),
    top_k: int = typer.Option(40, "--top-k", help="Top-k sampling (0: off)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Top-p sampling (1.0: off)."),
    min_p: float = typer.Option(0.05, "--min-p", help="Min-p sampling (0.0: off)."),
    repeat_penalty: float = typer.Option(1.0, "--repeat-penalty", help="Penalty for repeated tokens (1.0: off)."),
    repeat_last_n: int = typer.Option(64, "--repeat-last-n", help="How many recent tokens the penalty sees."),
    seed: int = typer.Option(-1, "-s", "--seed", help="RNG seed (-1: random)."),
    reverse_prompt: ReversePrompts = None,
    no_show_timings: bool = typer.Option(False, "--no-show-timings", help="No stats line after each reply."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also the time to the first reply token."),
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
    from llamapy.chat import Chat, read_template_file

    launched = time.perf_counter()
    set_threads(threads)
    if ctx_size <= 0:
        fail(f"context size must be positive, got {ctx_size}")
    if system_file is not None:
        system = _read_text_file(system_file)
    template_text = read_template_file(chat_template_file) if chat_template_file else chat_template
    m = open_model(model, hf_repo, rpc, tensor_split,
                   run_options(threads, threads_batch, ubatch_size, cache_type_k, cache_type_v, flash_attn, mlock,
                               no_mmap, n_gpu_layers, numerics))
    fmt = m.chat_format(template_text)
    if fmt.chosen_from_tokens:
        say(f"chat: the model has no chat template; using the built-in '{fmt.name}' (chosen from its special tokens)")
    options = sampling_options(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
    from llamapy.sampling import SamplingParams

    session = m.session(ctx_size, batch_size)
    conversation = Chat(m, session, fmt, system=system, params=SamplingParams(**options), n_predict=n_predict,
                        stop=tuple(reverse_prompt or ()))
    interactive = sys.stdin.isatty()
    if interactive and not (prompt is not None and single_turn):
        say("chat: /help for commands, Ctrl-D or /exit to leave")
    reader = TerminalInput() if interactive else ScriptInput(sys.stdin)
    # A single turn fails like a script does: a template error is the run's result, not a notice.
    loop = ChatLoop(conversation, reader, not no_show_timings, interactive and not single_turn, launched, verbose)
    loop.run(prompt, single_turn)
