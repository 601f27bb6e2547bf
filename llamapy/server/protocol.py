"""The OpenAI wire format: requests checked field by field, responses and stream chunks shaped.

Every problem with a request becomes one `ApiError` (HTTP status, message, llama.cpp's error type),
which the app sends as `{"error": {"code", "message", "type"}}`; nothing here touches the model.
Field names and defaults follow OpenAI's API, plus llama.cpp's extras (top_k, min_p, repeat_penalty,
cache_prompt, n_predict, ignore_eos). Unknown fields are ignored, as both servers do.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass, field

from ..sampling import SamplingParams

ROLES = ("system", "user", "assistant", "tool")
MAX_STOPS = 16
MAX_INT = 2**63 - 1


class ApiError(Exception):
    """A request the server refuses: status, one-line message, llama.cpp's error type, extra fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", **extra):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.extra = extra

    def body(self) -> dict:
        return {"error": {"code": self.status, "message": self.message, "type": self.type, **self.extra}}


def bad(message: str) -> ApiError:
    return ApiError(400, message)


# --- reading a request -------------------------------------------------------------------------


def parse_json(body: bytes) -> dict:
    """The body as a JSON object, or a 400 saying where it breaks."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise bad("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise bad(f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise bad(f"the request body must be a JSON object, got {_json_type(data)}")
    try:  # JSON's \ud800 escapes can smuggle in lone surrogates, which are not text
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise bad("the request holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is "
                  "not text") from None
    return data


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def get_bool(data: dict, name: str, default: bool) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"'{name}' must be a boolean, got {_json_type(value)}")
    return value


def get_int(data: dict, name: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
    value = data.get(name)
    if value is None:
        return default
    # JSON has one number type: 16.0 is accepted as 16, 16.5 is not an integer.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"'{name}' must be an integer, got {_json_type(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise bad(f"'{name}' must be {_range_text(lo, hi)}, got {value}")
    return value


def get_float(data: dict, name: str, default: float, lo: float | None = None, hi: float | None = None) -> float:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(f"'{name}' must be a number, got {_json_type(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise bad(f"'{name}' must be {_range_text(lo, hi)}, got {value}")
    return float(value)


def _range_text(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}"


def get_stop(data: dict) -> tuple[str, ...]:
    value = data.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise bad("'stop' must be a string or an array of strings")
    if len(value) > MAX_STOPS:
        raise bad(f"'stop' holds at most {MAX_STOPS} strings, got {len(value)}")
    return tuple(s for s in value if s)


@dataclass(frozen=True)
class Options:
    """What a completion request asks for, beyond its prompt."""

    model: str | None
    stream: bool
    include_usage: bool
    max_tokens: int  # -1: until an end token or the context is full
    params: SamplingParams
    stop: tuple[str, ...]
    cache_prompt: bool
    ignore_eos: bool


def read_options(data: dict) -> Options:
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise bad(f"'model' must be a string, got {_json_type(model)}")
    n = get_int(data, "n", 1)
    if n != 1:
        raise bad(f"'n' must be 1 (one choice per request), got {n}")
    stream = get_bool(data, "stream", False)
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad(f"'stream_options' must be an object, got {_json_type(options)}")
    include_usage = get_bool(options or {}, "include_usage", False)
    # OpenAI's two names and llama.cpp's; the first one given wins.
    max_tokens = -1
    for name in ("max_completion_tokens", "max_tokens", "n_predict"):
        if data.get(name) is not None:
            max_tokens = get_int(data, name, -1, lo=-1, hi=MAX_INT)
            if max_tokens == 0 and name != "n_predict":
                raise bad(f"'{name}' must be at least 1, got 0")
            break
    seed = get_int(data, "seed", None, lo=-(2**63), hi=2**64 - 1)
    params = SamplingParams(
        temp=get_float(data, "temperature", 0.8, lo=0.0, hi=100.0),
        top_k=get_int(data, "top_k", 40, lo=0, hi=MAX_INT),
        top_p=get_float(data, "top_p", 0.95, lo=0.0, hi=1.0),
        min_p=get_float(data, "min_p", 0.05, lo=0.0, hi=1.0),
        repeat_penalty=get_float(data, "repeat_penalty", 1.0, lo=0.0, hi=100.0),
        repeat_last_n=get_int(data, "repeat_last_n", 64, lo=0, hi=1 << 20),
        frequency_penalty=get_float(data, "frequency_penalty", 0.0, lo=-2.0, hi=2.0),
        presence_penalty=get_float(data, "presence_penalty", 0.0, lo=-2.0, hi=2.0),
        seed=None if seed is None or seed < 0 else seed,
    )
    if params.repeat_penalty == 0:
        raise bad("'repeat_penalty' must be positive, got 0")
    return Options(model, stream, include_usage, max_tokens, params, get_stop(data),
                   get_bool(data, "cache_prompt", True), get_bool(data, "ignore_eos", False))


def read_messages(data: dict) -> list[dict]:
    """`messages` as [{"role", "content": str}]: text parts of a content array are joined."""
    messages = data.get("messages")
    if messages is None:
        raise bad("'messages' is required")
    if not isinstance(messages, list):
        raise bad(f"'messages' must be an array, got {_json_type(messages)}")
    if not messages:
        raise bad("'messages' is empty: give at least one message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object, got {_json_type(m)}")
        role = m.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ROLES:
            raise bad(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {json.dumps(role)}")
        out.append({"role": role, "content": _content_text(m.get("content"), i)})
    return out


def _content_text(content, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"messages[{i}].content[{j}] must be a text part {{\"type\": \"text\", \"text\": ...}} "
                          "(this server reads text only)")
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"messages[{i}].content must be a string or an array of text parts, got {_json_type(content)}")


def read_prompt(data: dict, n_vocab: int) -> str | list[int]:
    """`prompt` of /v1/completions: a string, token ids, or an array holding one of those."""
    prompt = data.get("prompt")
    if prompt is None:
        raise bad("'prompt' is required")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # one prompt in an array, as OpenAI's clients may send it
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        bad_ids = [t for t in prompt if not 0 <= t < n_vocab]
        if bad_ids:
            raise bad(f"'prompt' token {bad_ids[0]} is outside the vocabulary (0..{n_vocab - 1})")
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise bad("'prompt' holds one prompt per request (several prompts in one array are not supported)")
    raise bad(f"'prompt' must be a string or an array of token ids, got {_json_type(prompt)}")


# --- writing a response ------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(18)}"


@dataclass
class Usage:
    """What one request cost and how fast it ran (llama.cpp's `timings`)."""

    n_prompt: int = 0  # prompt tokens in all
    n_cached: int = 0  # of them found in the slot's cache
    prompt_ms: float = 0.0
    n_generated: int = 0
    predicted_ms: float = 0.0
    extra: dict = field(default_factory=dict)

    def usage(self) -> dict:
        return {"completion_tokens": self.n_generated, "prompt_tokens": self.n_prompt,
                "total_tokens": self.n_prompt + self.n_generated,
                "prompt_tokens_details": {"cached_tokens": self.n_cached}}

    def timings(self) -> dict:
        n_eval = self.n_prompt - self.n_cached
        return {
            "cache_n": self.n_cached,
            "prompt_n": n_eval,
            "prompt_ms": self.prompt_ms,
            "prompt_per_token_ms": self.prompt_ms / n_eval if n_eval else 0.0,
            "prompt_per_second": 1e3 * n_eval / self.prompt_ms if self.prompt_ms else 0.0,
            "predicted_n": self.n_generated,
            "predicted_ms": self.predicted_ms,
            "predicted_per_token_ms": self.predicted_ms / self.n_generated if self.n_generated else 0.0,
            "predicted_per_second": 1e3 * self.n_generated / self.predicted_ms if self.predicted_ms else 0.0,
        }


class Shaper:
    """Response bodies and stream chunks of one request (chat or text completion)."""

    def __init__(self, chat: bool, model: str, fingerprint: str):
        self.chat = chat
        self.model = model
        self.fingerprint = fingerprint
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())

    def _envelope(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint}

    def response(self, text: str, finish: str, usage: Usage) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self._envelope("chat.completion" if self.chat else "text_completion"), "choices": [choice],
                "usage": usage.usage(), "timings": usage.timings()}

    def chunk(self, text: str | None = None, finish: str | None = None, first: bool = False,
              usage: Usage | None = None) -> dict:
        """A stream chunk: text (the first chat chunk also names the role), the finish, or the usage."""
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion")
        if usage is not None:
            return {**body, "choices": [], "usage": usage.usage(), "timings": usage.timings()}
        if self.chat:
            delta = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {**body, "choices": [choice]}


def sse(data: dict | str) -> bytes:
    """One server-sent event: `data: {...}` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
