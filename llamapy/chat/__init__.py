"""Chat: templates (jinja2 sandbox and built-ins), a model's chat format, and conversation state."""

from .conversation import Chat, MessageTooLong, Turn, read_messages
from .format import ChatFormat, chat_format, end_of_turn_tokens, prompt_tokens
from .templates import BUILTIN_TEMPLATES, ChatTemplateError, read_template_file, render

__all__ = ["BUILTIN_TEMPLATES", "Chat", "ChatFormat", "ChatTemplateError", "MessageTooLong", "Turn",
           "chat_format", "end_of_turn_tokens", "prompt_tokens", "read_messages", "read_template_file", "render"]
