"""Chat: templates (jinja2 sandbox and built-ins) and conversation state."""
