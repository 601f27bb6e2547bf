"""`llamapy chat` as a user meets it: through a pseudo-terminal (pexpect), and as a script's stdin.

What the stats line reports is checked against the conversation itself: P + C is the whole rendered
conversation in tokens, and C (reused) is exactly what the cache held from the turn before.
"""

import io
import json
import os
import re
import subprocess
import sys
import time

import pytest
from conftest import model_path

from llamapy import load
from llamapy.chat import prompt_tokens
from llamapy.session import common_prefix

pexpect = pytest.importorskip("pexpect")

LLAMAPY = [sys.executable, "-m", "llamapy.commands.main"]
SYSTEM = "You are a helpful assistant."
# prompt_toolkit draws `> ` as '>' and then moves the cursor over the space.
PROMPT = r">(?:\x08)?(?:\x1b\[\d*C| )"
STATS = (r"\[ prompt: (\d+) new tokens \((\d+) reused\), [\d.]+ t/s \| generation: (\d+) tokens, [\d.]+ t/s \| "
         r"context: (\d+)/(\d+) \]")
CTRL_C_LIMIT_S = 2.0


@pytest.fixture(scope="module")
def model():
    return load(model_path("smollm2"))


class Terminal:
    def __init__(self, tmp_path, *args):
        env = dict(os.environ, PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm", LLAMAPY_CACHE=str(tmp_path))
        self.child = pexpect.spawn(LLAMAPY[0], [*LLAMAPY[1:], "chat", *args], env=env, encoding="utf-8",
                                   timeout=180, dimensions=(50, 250))
        self.child.expect(PROMPT)

    def turn(self, text: str) -> dict:
        """Send a message; the stats line's numbers once the reply is done and `> ` is back."""
        self.child.sendline(text)
        return self.stats()

    def stats(self) -> dict:
        self.child.expect(STATS)
        p, c, g, used, n_ctx = map(int, self.child.match.groups())
        self.child.expect(PROMPT)
        return {"prompt": p, "reused": c, "generated": g, "used": used, "n_ctx": n_ctx}

    def command(self, line: str, answer: str) -> None:
        self.child.sendline(line)
        self.child.expect(answer)
        self.child.expect(PROMPT)


def conversation_tokens(model, messages: list[dict]) -> list[int]:
    fmt = model.chat_format()
    return prompt_tokens(model, fmt, fmt.render(messages))


def saved(path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_chat_in_a_terminal(tmp_path, model):
    term = Terminal(tmp_path, "--temp", "0", "-n", "200", "-c", "2048", "-sys", SYSTEM)
    questions = ["What is the capital of Germany?", "And of Italy?", "Name three colors."]
    turns = [term.turn(q) for q in questions]
    first_save = tmp_path / "three.json"
    term.command(f"/save {first_save}", "saved 7 messages")
    messages = saved(first_save)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3
    assert [m["content"] for m in messages if m["role"] == "user"] == questions
    assert all(m["content"].strip() for m in messages if m["role"] == "assistant")

    # Turns 2 and 3 evaluate only the new part: C is what the cache held after the turn before.
    for k, stats in enumerate(turns):
        rendered = conversation_tokens(model, messages[:2 + 2 * k])
        assert stats["prompt"] + stats["reused"] == len(rendered)
        assert stats["reused"] == (0 if k == 0 else turns[k - 1]["used"])
        assert stats["prompt"] < len(rendered) // 2 or k == 0

    # /clear: the next turn reuses the system prompt (and the user turn's opening), nothing more.
    term.command("/clear", "conversation cleared")
    after_clear = term.turn("Who wrote Hamlet?")
    system_only = conversation_tokens(model, messages[:1])
    cached = conversation_tokens(model, messages)
    fresh = conversation_tokens(model, [messages[0], {"role": "user", "content": "Who wrote Hamlet?"}])
    assert after_clear["reused"] == common_prefix(cached, fresh)
    assert len(system_only) - 1 <= after_clear["reused"] <= len(system_only) + 3

    # /save + /load round-trip the messages.
    term.command(f"/load {first_save}", "loaded 7 messages")
    second_save = tmp_path / "again.json"
    term.command(f"/save {second_save}", "saved 7 messages")
    assert saved(second_save) == messages

    # /regen replaces the last reply: same messages before it, one reply in its place.
    regen = term.turn("/regen")
    assert regen["generated"] > 0
    regen_save = tmp_path / "regen.json"
    term.command(f"/save {regen_save}", "saved 7 messages")
    after_regen = saved(regen_save)
    assert after_regen[:-1] == messages[:-1] and after_regen[-1]["role"] == "assistant"

    # Ctrl-C in the middle of a long reply: back at `> ` quickly, and the chat goes on.
    term.child.sendline("Write a long story about a dragon who learns to bake bread.")
    term.child.expect(r"\x1b\[\?2004l")  # the prompt has let go of the terminal: the reply is streaming
    term.child.expect(r"\w+ \w+ \w+")  # a few words of it
    started = time.perf_counter()
    term.child.sendintr()
    term.child.expect("reply stopped")
    term.child.expect(PROMPT)
    back_after = time.perf_counter() - started
    print(f"Ctrl-C to prompt: {back_after:.2f} s")
    assert back_after < CTRL_C_LIMIT_S
    after_interrupt = term.turn("What is the capital of Spain?")
    assert after_interrupt["generated"] > 0 and after_interrupt["reused"] > 0

    # Ctrl-C on an empty line says how to leave; Ctrl-D leaves with exit 0.
    term.child.sendintr()
    term.child.expect("Ctrl-D or /exit")
    term.child.expect(PROMPT)
    time.sleep(0.3)  # a Ctrl-D sent before prompt_toolkit has the terminal in raw mode would be lost
    term.child.sendeof()
    term.child.expect(pexpect.EOF)
    term.child.close()
    assert term.child.exitstatus == 0


def test_input_lines_join_on_backslash_and_triple_quotes():
    from llamapy.commands.chat_input import ScriptInput

    text = 'one\ntwo \\\nthree\n"""\nblock line 1\n\nblock line 3\n"""\nlast\\\n'
    assert list(ScriptInput(io.StringIO(text))) == ["one", "two \nthree", "block line 1\n\nblock line 3", "last\n"]


def test_scripted_chat_prints_one_reply_per_line():
    # The check is `printf ... | llamapy chat -n 48 --temp 0`; 12 tokens a reply keep the test short.
    result = subprocess.run([*LLAMAPY, "chat", "-n", "12", "--temp", "0"],
                            input="What is the capital of France?\nAnd of Italy?\n", capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    stats = re.findall(STATS, result.stderr)
    assert len(stats) == 2 and all(int(generated) > 1 for _, _, generated, _, _ in stats), result.stderr
    replies = result.stdout.rstrip("\n").split("\n\n")
    assert len(replies) >= 2 and replies[0].strip() and replies[-1].strip(), result.stdout


def test_full_context_drops_old_turns_and_refuses_an_oversized_message():
    long_message = " ".join(["word"] * 300)
    lines = ["What is the capital of Germany?", "And of Italy?", "And of Spain?", long_message, "Thanks!"]
    result = subprocess.run([*LLAMAPY, "chat", "-c", "64", "-n", "8", "--temp", "0", "-sys", SYSTEM],
                            input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "dropped the 1 oldest exchange(s), the system prompt kept" in result.stderr
    refusals = [line for line in result.stderr.splitlines() if "does not fit" in line]
    assert len(refusals) == 1 and "it was not sent" in refusals[0]
    stats = re.findall(STATS, result.stderr)
    assert len(stats) == len(lines) - 1  # every message but the oversized one was answered
    assert all(int(used) <= 64 for _, _, _, used, _ in stats)


def test_gemma3_chats_through_the_gemma_template_chosen_from_its_tokens():
    result = subprocess.run([*LLAMAPY, "chat", "-m", model_path("gemma3"), "-n", "6", "--temp", "0"],
                            input="What is the capital of France?\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "using the built-in 'gemma' (chosen from its special tokens)" in result.stderr
    assert result.stdout.strip() and len(re.findall(STATS, result.stderr)) == 1
