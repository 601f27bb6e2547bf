"""A conversation held in a Session: the messages, the reply loop, and what happens when the context fills.

Every turn renders the whole conversation with the template and hands the tokens to the session,
which evaluates only what differs from its cache: after a reply the cache holds prompt + reply, so the
next turn costs only the template's closing of that reply and the new message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ..generate import GenerationStep, Timings, generate
from ..kv_cache import ContextFull
from ..sampling import SamplingParams
from ..session import Session
from .format import ChatFormat, end_of_turn_tokens, prompt_tokens

ROLES = ("system", "user", "assistant", "tool")


class MessageTooLong(ContextFull):
    """One message that does not fit in the context even with every earlier turn dropped."""


@dataclass
class Turn:
    messages: list[dict]  # the conversation to render, the new user message last
    tokens: list[int]
    n_dropped: int  # earlier exchanges dropped to make room


class Chat:
    def __init__(self, model, session: Session, fmt: ChatFormat, system: str | None = None,
                 params: SamplingParams | None = None, n_predict: int = -1, stop: tuple[str, ...] = ()):
        self.model = model
        self.session = session
        self.format = fmt
        self.params = params or SamplingParams()
        self.n_predict = n_predict
        self.stop = stop
        self.end_tokens = end_of_turn_tokens(model)
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.n_replies = 0
        self.last_timings: Timings | None = None

    # --- the conversation ---------------------------------------------------------------------

    @property
    def system(self) -> str | None:
        return self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else None

    def set_system(self, text: str | None) -> None:
        rest = self.messages[1:] if self.system is not None else self.messages
        self.messages = ([{"role": "system", "content": text}] if text else []) + rest

    def clear(self) -> None:
        """Forget every turn but the system prompt (its tokens stay cached)."""
        self.messages = self.messages[:1] if self.system is not None else []

    def pop_reply(self) -> bool:
        """Remove the last assistant reply (for /regen); False when there is none to remove."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
            return True
        return False

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.messages, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    def load(self, path: str | Path) -> None:
        self.messages = read_messages(path)

    # --- tokens -------------------------------------------------------------------------------

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.format.render(messages, add_generation_prompt)

    def tokens(self, messages: list[dict]) -> list[int]:
        return prompt_tokens(self.model, self.format, self.render(messages))

    def reply_room(self) -> int:
        """Context kept free for the reply when deciding whether to drop old turns."""
        n_ctx = self.session.n_ctx
        want = self.n_predict if self.n_predict > 0 else n_ctx // 4
        return max(1, min(want, n_ctx // 2))

    def prepare(self, user_text: str | None) -> Turn:
        """The next turn: the conversation plus user_text (None: answer the last user message again),
        with the oldest exchanges dropped while it does not leave room for a reply."""
        messages = list(self.messages)
        if user_text is not None:
            messages.append({"role": "user", "content": user_text})
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("there is no user message to answer")
        n_ctx = self.session.n_ctx
        tokens = self.tokens(messages)
        dropped = 0
        while len(tokens) + self.reply_room() > n_ctx and _droppable(messages):
            messages = _drop_oldest_exchange(messages)
            dropped += 1
            tokens = self.tokens(messages)
        if len(tokens) >= n_ctx:
            raise MessageTooLong(
                f"the message does not fit: {len(tokens)} tokens with the system prompt, the context holds "
                f"{n_ctx} (-c); it was not sent")
        return Turn(messages, tokens, dropped)

    def respond(self, turn: Turn) -> Iterator[GenerationStep]:
        """Generate the reply to turn; the conversation takes the reply (a partial one if interrupted)."""
        self.messages = turn.messages
        params = self.params
        if params.seed is not None:  # a fixed seed still gives each reply (and /regen) its own draws
            params = replace(params, seed=params.seed + self.n_replies)
        self.n_replies += 1
        self.last_timings = None  # an interrupted prefill leaves none: never report the turn before's
        pieces: list[str] = []
        try:
            for step in generate(self.session, turn.tokens, self.n_predict, params, stop=self.stop,
                                 end_tokens=self.end_tokens):
                self.last_timings = step.timings
                pieces.append(step.text)
                yield step
        finally:
            self.messages = self.messages + [{"role": "assistant", "content": "".join(pieces)}]


def _droppable(messages: list[dict]) -> bool:
    """Whether there is an exchange before the last user message that can go."""
    first = 1 if messages and messages[0]["role"] == "system" else 0
    return len(messages) - first > 1


def _drop_oldest_exchange(messages: list[dict]) -> list[dict]:
    """Drop the oldest user message and the replies after it, keeping the system prompt."""
    first = 1 if messages and messages[0]["role"] == "system" else 0
    end = first + 1
    while end < len(messages) - 1 and messages[end]["role"] != "user":
        end += 1
    return messages[:first] + messages[end:]


def read_messages(path: str | Path) -> list[dict]:
    """A conversation saved as OpenAI-style JSON: a list of {"role", "content"} (or {"messages": [...]})."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict):
        data = data.get("messages")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of messages")
    messages = []
    for i, m in enumerate(data):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"{path}: message {i} needs a role ({', '.join(ROLES)}) and a string content")
        messages.append({"role": m["role"], "content": m["content"]})
    return messages
