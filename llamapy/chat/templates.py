"""Chat templates: Jinja text rendered the way transformers renders it, plus built-ins by name.

transformers compiles `tokenizer.chat_template` in jinja2's ImmutableSandboxedEnvironment with
trim_blocks, lstrip_blocks and loop controls, a `tojson` that does not escape HTML, and the globals
`raise_exception`, `strftime_now` and `namespace`; the special tokens (`bos_token`, `eos_token`, …)
are passed as variables. Rendering here follows that, so a template gives the same text in both.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A template that does not compile or render; the message is one line and names --chat-template."""


# Built-ins are written without a BOS: the tokenizer adds one where the model wants it.
BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama2": (
        "{% set ns = namespace(system='', open=false) %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set ns.system = message['content'] %}"
        "{% elif message['role'] == 'user' %}"
        "{{ '[INST] ' }}"
        "{% if ns.system %}{{ '<<SYS>>\n' + ns.system + '\n<</SYS>>\n\n' }}{% set ns.system = '' %}{% endif %}"
        "{{ message['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + message['content'] + '</s>' }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    "llama3": (
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
        " + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "mistral": (
        "{% set ns = namespace(system='') %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
        "{% elif message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + '[/INST]' }}"
        "{% set ns.system = '' %}"
        "{% else %}{{ ' ' + message['content'] + '</s>' }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    "gemma": (
        "{% set ns = namespace(system='') %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set ns.system = message['content'] | trim %}"
        "{% else %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' }}"
        "{% if ns.system and role != 'model' %}{{ ns.system + '\n\n' }}{% set ns.system = '' %}{% endif %}"
        "{{ message['content'] | trim + '<end_of_turn>\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    "phi3": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}

# Special tokens that reveal a model's chat format, most telling first.
FORMAT_MARKERS: list[tuple[str, tuple[str, ...]]] = [
    ("gemma", ("<start_of_turn>",)),
    ("llama3", ("<|start_header_id|>", "<|eot_id|>")),
    ("chatml", ("<|im_start|>",)),
    ("phi3", ("<|assistant|>", "<|end|>")),
    ("zephyr", ("<|assistant|>",)),
    ("mistral", ("[INST]",)),
]
FALLBACK_TEMPLATE = "chatml"  # llama.cpp's choice when nothing else fits

# Texts of the tokens that close a turn in the templates above (and in the real models' own).
END_OF_TURN_TEXTS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|endoftext|>")


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    try:
        return environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(
            f"the chat template does not compile (line {e.lineno}: {e.message}); choose another with --chat-template"
        ) from None


def render(source: str, messages: list[dict], add_generation_prompt: bool = True, tools: list | None = None,
           **variables) -> str:
    """The template's text for messages; variables are bos_token, eos_token and anything else it reads."""
    template = compile_template(source)
    try:
        return template.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                               **variables)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(
            f"the chat template failed to render: {e.message or type(e).__name__}; "
            "choose another with --chat-template") from None
    except (TypeError, KeyError, IndexError, AttributeError, ValueError) as e:
        raise ChatTemplateError(
            f"the chat template failed to render: {e}; choose another with --chat-template") from None


def detect_format(token_texts) -> str:
    """The built-in format a vocabulary's special tokens point to (chatml when none does)."""
    present = set(token_texts)
    for name, markers in FORMAT_MARKERS:
        if all(m in present for m in markers):
            return name
    return FALLBACK_TEMPLATE


def read_template_file(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ChatTemplateError(f"cannot read --chat-template-file {path}: {e.strerror}") from None
