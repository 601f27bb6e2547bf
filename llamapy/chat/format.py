"""A model's chat format: which template, how its text becomes tokens, which tokens end a turn."""

from __future__ import annotations

from dataclasses import dataclass

from .templates import BUILTIN_TEMPLATES, END_OF_TURN_TEXTS, ChatTemplateError, detect_format, render

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


@dataclass(frozen=True)
class ChatFormat:
    source: str  # the Jinja text
    name: str  # "the model's own", a built-in's name, or a file name
    bos_token: str
    eos_token: str
    chosen_from_tokens: bool = False  # the model has no template: a built-in was picked from its vocabulary

    def render(self, messages: list[dict], add_generation_prompt: bool = True, tools: list | None = None) -> str:
        return render(self.source, messages, add_generation_prompt, tools=tools,
                      bos_token=self.bos_token, eos_token=self.eos_token)


def _token_text(tokenizer, token: int | None) -> str:
    return tokenizer.token_text(token) if token is not None else ""


def chat_format(model, chat_template: str | None = None, name: str | None = None) -> ChatFormat:
    """The format for `model`: chat_template is a built-in's name, a Jinja text, or None (the model's
    own template; a built-in chosen from its special tokens when it has none)."""
    tok = model.tokenizer
    bos, eos = _token_text(tok, tok.bos_id), _token_text(tok, tok.eos_id)
    if chat_template is None:
        own = model.gguf.kv.get(CHAT_TEMPLATE_KEY)
        if own:
            return ChatFormat(str(own), "the model's own", bos, eos)
        specials = (tok.vocab.texts[t] for t in tok.vocab.special_ids)
        picked = detect_format(specials)
        return ChatFormat(BUILTIN_TEMPLATES[picked], picked, bos, eos, chosen_from_tokens=True)
    if chat_template in BUILTIN_TEMPLATES:
        return ChatFormat(BUILTIN_TEMPLATES[chat_template], chat_template, bos, eos)
    if "{" not in chat_template:
        raise ChatTemplateError(
            f"unknown chat template {chat_template!r} for --chat-template "
            f"(built-ins: {', '.join(BUILTIN_TEMPLATES)}; or give a Jinja file with --chat-template-file)")
    return ChatFormat(chat_template, name or "custom", bos, eos)


def prompt_tokens(model, fmt: ChatFormat, text: str) -> list[int]:
    """Tokens of rendered chat text; a BOS the template wrote is dropped when the tokenizer adds one."""
    tok = model.tokenizer
    if tok.add_bos and fmt.bos_token and text.startswith(fmt.bos_token):
        text = text[len(fmt.bos_token):]
    return tok.encode(text, special=True)


def end_of_turn_tokens(model) -> frozenset[int]:
    """Ids of the turn-closing tokens the vocabulary has, beyond its own end-of-generation ones."""
    tok = model.tokenizer
    ids = {tok.token_id(text) for text in END_OF_TURN_TEXTS}
    ids.discard(None)
    return frozenset(t for t in ids if tok.is_control(t) or t in tok.vocab.special_ids)
