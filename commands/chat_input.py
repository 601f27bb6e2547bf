"""Where the chat's messages come from: a terminal (prompt_toolkit) or a script's stdin.

Both yield one message at a time and end at end of input. Continuation rules are shared: a line
ending in a backslash continues on the next line; a line of three double quotes opens a block that
the next such line closes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

BLOCK = '"""'
PROMPT = "> "
CONTINUATION = "... "


def join_lines(next_line) -> str | None:
    """One message from successive lines (next_line(continued) returns a line, or None at the end)."""
    line = next_line(False)
    if line is None:
        return None
    if line.strip() == BLOCK:
        block = []
        while (line := next_line(True)) is not None and line.strip() != BLOCK:
            block.append(line)
        return "\n".join(block)
    parts = []
    while line is not None and line.endswith("\\"):
        parts.append(line[:-1])
        line = next_line(True)
    parts.append(line or "")
    return "\n".join(parts)


class ScriptInput:
    """stdin that is not a terminal: each line (joined by trailing backslashes) is one message."""

    def __init__(self, stream):
        self.stream = stream

    def _line(self, continued: bool) -> str | None:
        line = self.stream.readline()
        return None if line == "" else line.rstrip("\r\n")

    def __iter__(self) -> Iterator[str]:
        while (text := join_lines(self._line)) is not None:
            yield text


def history_path() -> str:
    from llamapy.hub import cache_dir

    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / "chat_history")


def _bindings():
    """Ctrl-C clears a line that has text and, on an empty one, tells how to leave."""
    from prompt_toolkit.key_binding import KeyBindings

    keys = KeyBindings()

    @keys.add("c-c")
    def _(event):
        if event.current_buffer.text:
            event.current_buffer.reset()
        else:
            event.app.exit(exception=KeyboardInterrupt())

    return keys


class TerminalInput:
    """The `> ` prompt: line editing and persistent history; Ctrl-C clears the line, Ctrl-D leaves."""

    def __init__(self):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        try:
            history = FileHistory(history_path())
        except OSError:
            history = InMemoryHistory()
        self.prompt = PromptSession(history=history, key_bindings=_bindings())

    def _line(self, continued: bool) -> str | None:
        while True:
            try:
                return self.prompt.prompt(CONTINUATION if continued else PROMPT)
            except EOFError:
                return None
            except KeyboardInterrupt:
                if continued:
                    return None
                print("(to leave: Ctrl-D or /exit)", file=sys.stderr, flush=True)

    def __iter__(self) -> Iterator[str]:
        while (text := join_lines(self._line)) is not None:
            yield text

