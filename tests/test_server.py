"""`llamapy serve` from the outside: one server (subprocess, 127.0.0.1, a free port, -np 4, an API key)
for the module, driven by the official openai client, raw HTTP, the load script and a headless Chromium.

No assertion here is about time: the waits have generous deadlines only so that a hung server fails
the test instead of hanging it.
"""

import base64
import fcntl
import http.client
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import model_path

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key-1234"
N_PARALLEL, N_CTX = 4, 2048  # slots of 512 tokens
N_CTX_SLOT = N_CTX // N_PARALLEL
START_DEADLINE = 180.0


class Server:
    def __init__(self, proc, port):
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}"

    def request(self, method, path, body=None, key=KEY, headers=None, raw: bytes | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        h = dict(headers or {})
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, data, h)
            r = conn.getresponse()
            text = r.read().decode()
        finally:
            conn.close()
        try:
            return r.status, json.loads(text)
        except json.JSONDecodeError:
            return r.status, text

    def post(self, path, body, **kw):
        return self.request("POST", path, body, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def chat(self, content, max_tokens=12, **extra):
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0,
                **extra}
        status, out = self.post("/v1/chat/completions", body)
        assert status == 200, out
        return out

    def idle(self, deadline=60.0) -> list[dict]:
        end = time.monotonic() + deadline
        while True:
            status, slots = self.get("/slots")
            assert status == 200
            if not any(s["is_processing"] for s in slots) or time.monotonic() > end:
                return slots
            time.sleep(0.05)

    def metric(self, name) -> float:
        status, text = self.get("/metrics")
        assert status == 200
        for line in text.splitlines():
            if line.startswith(f"llamapy:{name} "):
                return float(line.split()[1])
        raise AssertionError(f"no metric {name}")


@pytest.fixture(scope="module")
def server():
    cmd = [sys.executable, "-m", "llamapy.commands.main", "serve", "-m", str(model_path("smollm2")), "--port", "0",
           "-np", str(N_PARALLEL), "-c", str(N_CTX), "--api-key", KEY, "-t", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        line = proc.stderr.readline()
        assert "listening on http://127.0.0.1:" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        s = Server(proc, port)
        # The socket is open at once; /health answers 503 until the model is loaded.
        end = time.monotonic() + START_DEADLINE
        while True:
            status, body = s.get("/health", key=None)
            if status == 200:
                break
            assert status == 503 and body["error"]["type"] == "unavailable_error", body
            assert proc.poll() is None and time.monotonic() < end, "the server did not come up"
            time.sleep(0.1)
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its stderr pipe drained
        yield s
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


# --- the openai client ------------------------------------------------------------------------------


def test_openai_client_chat_stream_and_not(client):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1.gguf", messages=messages,
                                           max_tokens=10, temperature=0)
    reply = whole.choices[0].message.content
    assert reply and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens >= 1 and whole.usage.prompt_tokens > 10
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    stream = client.chat.completions.create(messages=messages, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, model="SmolLM2-135M-Instruct.Q4_1")
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # The prompt was cached by the first request: all of it but the last token is reused.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == whole.usage.prompt_tokens - 1


def test_openai_client_completion_stream_and_not(client):
    whole = client.completions.create(model="SmolLM2-135M-Instruct.Q4_1.gguf", prompt="The capital of France is",
                                      max_tokens=8, temperature=0)
    text = whole.choices[0].text
    assert text and whole.usage.completion_tokens == 8 and whole.choices[0].finish_reason == "length"
    assert whole.model == "SmolLM2-135M-Instruct.Q4_1.gguf"
    stream = client.completions.create(model="SmolLM2-135M-Instruct.Q4_1.gguf", prompt="The capital of France is",
                                       max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == text
    assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]


# --- batching ---------------------------------------------------------------------------------------

PROMPTS = ["Name a color.", "What is 2 + 2?", "Say hello in French.", "Name a fruit.", "What is the sun?",
           "Count to five.", "Name an ocean.", "Give me a word that rhymes with cat."]


def _stream_chat(server, content, max_tokens, out, i, close_after=None, on_close=None):
    """One streaming request over raw HTTP: the content of each chunk, the finish and the usage."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json", "X-Api-Key": KEY})
    r = conn.getresponse()
    pieces, finish, usage, done = [], None, None, False
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            break
        event = json.loads(line[6:])
        if event.get("usage"):
            usage = event["usage"]
        for choice in event["choices"]:
            if choice["delta"].get("content"):
                pieces.append(choice["delta"]["content"])
            finish = choice["finish_reason"] or finish
        if close_after is not None and len(pieces) >= close_after:
            if on_close is not None:
                on_close()
            break
    conn.close()  # before [DONE]: the client has gone away
    out[i] = {"pieces": pieces, "finish": finish, "usage": usage, "done": done}


def test_concurrent_greedy_streams_equal_each_request_alone(server):
    alone = [server.chat(p, max_tokens=8) for p in PROMPTS]
    passes = server.metric("n_decode_total")
    results = [None] * len(PROMPTS)
    threads = [threading.Thread(target=_stream_chat, args=(server, p, 8, results, i)) for i, p in enumerate(PROMPTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for want, got in zip(alone, results, strict=True):
        assert got is not None and got["done"]
        assert "".join(got["pieces"]) == want["choices"][0]["message"]["content"]
        assert got["finish"] == want["choices"][0]["finish_reason"]
        n = want["usage"]["completion_tokens"]
        assert got["usage"]["completion_tokens"] == n
        # One chunk per generated token that has text; an end token adds none: nothing lost or repeated.
        assert len(got["pieces"]) == n - (got["finish"] == "stop")
    # The 8 requests shared forward passes (4 slots, the rest queued): far fewer passes than tokens.
    generated = sum(r["usage"]["completion_tokens"] for r in results)
    assert server.metric("n_decode_total") - passes < generated
    assert all(not s["is_processing"] for s in server.idle())


def test_cancelled_stream_frees_its_slot(server):
    cancelled = server.metric("requests_cancelled_total")
    out = [None]
    seen = {}

    def while_streaming():  # HTTP answers while the engine generates; the slot shows the job
        seen["health"] = server.get("/health", key=None)[0]
        seen["slots"] = server.get("/slots")[1]

    _stream_chat(server, "Tell me a very long story about dragons.", 400, out, 0, close_after=2,
                 on_close=while_streaming)
    assert not out[0]["done"] and len(out[0]["pieces"]) >= 2
    assert seen["health"] == 200
    busy = [s for s in seen["slots"] if s["is_processing"]]
    assert len(busy) == 1 and busy[0]["state"] == "generating" and busy[0]["n_decoded"] >= 2
    slots = server.idle()
    assert all(not s["is_processing"] for s in slots)
    assert server.metric("requests_cancelled_total") == cancelled + 1
    # The slot stopped long before 400 tokens: its cache holds the prompt and a few tokens only.
    assert max(s["n_past"] for s in slots) < 300
    assert server.chat("Name a color.", max_tokens=4)["usage"]["completion_tokens"] >= 1


def test_client_gone_before_a_whole_reply_frees_its_slot(server):
    cancelled = server.metric("requests_cancelled_total")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    body = {"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json", "X-Api-Key": KEY})
    end = time.monotonic() + 60
    while not any(s["is_processing"] for s in server.get("/slots")[1]) and time.monotonic() < end:
        time.sleep(0.02)
    conn.close()  # a non-streaming client that stops waiting
    assert all(not s["is_processing"] for s in server.idle())
    assert server.metric("requests_cancelled_total") == cancelled + 1


# --- prefix reuse -----------------------------------------------------------------------------------


def test_next_chat_turn_reuses_the_slot_cache(server):
    first = [{"role": "system", "content": "You are a terse assistant who likes geography."},
             {"role": "user", "content": "What is the capital of Italy?"}]
    status, a = server.post("/v1/chat/completions", {"messages": first, "max_tokens": 8, "temperature": 0})
    assert status == 200
    turn = first + [a["choices"][0]["message"], {"role": "user", "content": "And of Spain?"}]
    status, b = server.post("/v1/chat/completions", {"messages": turn, "max_tokens": 8, "temperature": 0})
    assert status == 200
    cached = b["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= a["usage"]["prompt_tokens"]  # the whole first turn, and the reply's tokens
    assert b["timings"]["cache_n"] == cached
    assert b["timings"]["prompt_n"] == b["usage"]["prompt_tokens"] - cached
    status, c = server.post("/v1/chat/completions", {"messages": turn, "max_tokens": 8, "temperature": 0,
                                                     "cache_prompt": False})
    assert status == 200 and c["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert c["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


# --- the other endpoints ----------------------------------------------------------------------------


def test_tokenize_detokenize_apply_template_props_metrics(server):
    status, t = server.post("/tokenize", {"content": "Hello world"})
    assert status == 200 and len(t["tokens"]) == 2
    status, d = server.post("/detokenize", {"tokens": t["tokens"]})
    assert status == 200 and d["content"] == "Hello world"
    status, p = server.post("/tokenize", {"content": "Hi", "with_pieces": True})
    assert p["tokens"][0]["piece"] == "Hi"
    status, a = server.post("/apply-template", {"messages": [{"role": "user", "content": "Hi"}]})
    assert status == 200 and "<|im_start|>user\nHi<|im_end|>" in a["prompt"]
    status, props = server.get("/props")
    assert status == 200 and props["total_slots"] == N_PARALLEL and props["n_ctx"] == N_CTX_SLOT
    status, slots = server.get("/slots")
    assert [s["id"] for s in slots] == list(range(N_PARALLEL)) and slots[0]["n_ctx"] == N_CTX_SLOT
    status, text = server.get("/metrics")
    assert status == 200 and "# TYPE llamapy:tokens_predicted_total counter" in text
    assert server.metric("requests_total") >= 1


# --- bad input --------------------------------------------------------------------------------------

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]

BAD = [
    ("malformed JSON", CHAT, b'{"messages": [', 400, "not valid JSON"),
    ("not an object", CHAT, b"[1, 2]", 400, "must be a JSON object"),
    ("not UTF-8", CHAT, b'{"messages": "\xff"}', 400, "UTF-8"),
    ("messages a string", CHAT, {"messages": "Hi"}, 400, "'messages' must be an array"),
    ("max_tokens a string", CHAT, {"messages": HI, "max_tokens": "x"}, 400, "'max_tokens' must be an integer"),
    ("temperature a string", CHAT, {"messages": HI, "temperature": "hot"}, 400, "'temperature' must be a number"),
    ("stream a string", CHAT, {"messages": HI, "stream": "yes"}, 400, "'stream' must be a boolean"),
    ("content a number", CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "content must be"),
    ("unknown role", CHAT, {"messages": [{"role": "wizard", "content": "Hi"}]}, 400, "role must be one of"),
    ("top_p out of range", CHAT, {"messages": HI, "top_p": 2}, 400, "'top_p' must be between 0.0 and 1.0"),
    ("n = 2", CHAT, {"messages": HI, "n": 2}, 400, "'n' must be 1"),
    ("huge max_tokens", CHAT, {"messages": HI, "max_tokens": 10**12}, 400, f"({N_CTX_SLOT} tokens)"),
    ("max_tokens past int64", CHAT, {"messages": HI, "max_tokens": 10**30}, 400, "'max_tokens' must be between"),
    ("empty messages", CHAT, {"messages": []}, 400, "'messages' is empty"),
    ("no messages", CHAT, {"prompt": "Hi"}, 400, "'messages' is required"),
    ("unknown model", CHAT, {"messages": HI, "model": "gpt-17"}, 404, "'gpt-17' is not served here"),
    ("prompt over context", "/v1/completions", {"prompt": "hello " * 600}, 400, f"({N_CTX_SLOT} tokens"),
    ("prompt ids outside vocabulary", "/v1/completions", {"prompt": [1, 10**9]}, 400, "outside the vocabulary"),
    ("empty prompt", "/v1/completions", {"prompt": ""}, 400, "the prompt is empty"),
    ("1 MB prompt", "/v1/completions", {"prompt": "x" * 1_000_000}, 400, "at least"),
    ("1 MB message", CHAT, {"messages": [{"role": "user", "content": "x" * 1_000_000}]}, 400, "at least"),
    ("lone surrogate", CHAT, b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "surrogate"),
    ("5 MB body", CHAT, b'{"messages": "' + b"x" * 5_000_000 + b'"}', 413, "limit"),
    ("detokenize bad id", "/detokenize", {"tokens": [-1]}, 400, "outside the vocabulary"),
]


@pytest.mark.parametrize("name, path, body, status, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_its_status_and_one_error_object(server, name, path, body, status, words):
    raw = body if isinstance(body, bytes) else None
    got, out = server.post(path, None if raw else body, raw=raw)
    assert got == status, out
    assert isinstance(out, dict) and set(out) == {"error"}, out
    error = out["error"]
    assert error["code"] == status and words in error["message"], error
    assert error["type"] in ("invalid_request_error", "not_found_error", "exceed_context_size_error")
    assert "Traceback" not in error["message"]


def test_prompt_over_context_names_both_sizes(server):
    status, out = server.post("/v1/completions", {"prompt": "hello " * 600})
    error = out["error"]
    assert status == 400 and error["type"] == "exceed_context_size_error"
    assert error["n_ctx"] == N_CTX_SLOT and error["n_prompt_tokens"] > N_CTX_SLOT
    assert f"{error['n_prompt_tokens']} tokens" in error["message"] and str(N_CTX_SLOT) in error["message"]


def test_api_key_required_but_health_and_page_open(server):
    assert server.get("/health", key=None) == (200, {"status": "ok"})
    status, page = server.get("/", key=None)
    assert status == 200 and "<title>llamapy</title>" in page
    for key in (None, "wrong-key"):
        status, out = server.post(CHAT, {"messages": HI}, key=key)
        assert status == 401 and out["error"]["type"] == "authentication_error", out
        assert server.get("/v1/models", key=key)[0] == 401
        assert server.get("/slots", key=key)[0] == 401
    status, out = server.request("GET", "/v1/models", key=None, headers={"X-Api-Key": KEY})
    assert status == 200 and out["data"][0]["id"] == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_only_loopback_hosts_go_without_the_no_tls_warning():
    from llamapy.commands.serve import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com"))


def test_unknown_route_and_method_get_error_objects(server):
    status, out = server.get("/v2/nothing")
    assert status == 404 and out["error"]["type"] == "not_found_error"
    status, out = server.get(CHAT)
    assert status == 405 and out["error"]["code"] == 405


def test_server_still_serves_after_the_battery(server):
    assert server.proc.poll() is None
    out = server.chat("Name a color.", max_tokens=4)
    assert out["choices"][0]["message"]["content"]


# --- the load script --------------------------------------------------------------------------------


def test_load_script_reports_rates_and_latencies(server):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "load.py"), "--url", server.url, "-c", "2",
                             "-n", "4", "--max-tokens", "4", "--api-key", KEY, "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["succeeded"] == 4 and report["generated_tokens"] == 16
    assert report["requests_per_s"] > 0 and report["ttft_ms"]["p50"] > 0 and report["itl_ms"]["p90"] > 0
    refused = subprocess.run([sys.executable, str(ROOT / "scripts" / "load.py"), "--url", "http://192.0.2.1:8080"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "loopback addresses only" in refused.stderr


# --- the chat page in a real browser ----------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _high_fd(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe)."""

    def __init__(self, exe: str, profile: str):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Away from 3 and 4 first, so that the redirections below cannot overwrite each other (bash, not
        # dash: dash takes one-digit descriptors only).
        to_browser_r, from_browser_w = (_high_fd(fd) for fd in (to_browser_r, from_browser_w))
        # The browser reads commands on fd 3 and writes replies on fd 4.
        cmd = ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', exe, "--headless",
               "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
               "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
               "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(cmd, pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._id = 0
        self.session = None

    def call(self, method, params=None, session=True, deadline=60.0):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        end = time.monotonic() + deadline
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = end - time.monotonic()
            assert left > 0, f"the browser did not answer {method}"
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                assert chunk, "the browser closed its pipe"
                self._buffer += chunk

    def open(self, url):
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", {"width": 960, "height": 640, "deviceScaleFactor": 1,
                                                          "mobile": False})
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete' && !!document.getElementById('input')")

    def js(self, expression):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def wait_for(self, expression, deadline=120.0):
        end = time.monotonic() + deadline
        while True:
            value = self.js(expression)
            if value:
                return value
            assert time.monotonic() < end, f"never true: {expression}"
            time.sleep(0.1)

    def type_and_enter(self, selector, text):
        self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", {"text": text})
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                 "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13})

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self):
        try:
            self.call("Browser.close", session=False, deadline=10)
        except (AssertionError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


LAST_REPLY = """(() => {
  const all = document.querySelectorAll('.msg.assistant');
  const last = all[all.length - %d];
  return last && last.dataset.done === '1' ?
    {text: last.querySelector('.content').textContent, stats: last.querySelector('.stats').textContent} : null;
})()"""


def test_chat_page_streams_a_reply_in_headless_chromium(server, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    question, follow_up = "What is the capital of Germany?", "And of Italy?"
    browser = Browser(exe, tempfile.mkdtemp(dir=tmp_path))
    try:
        browser.open(server.url + "/")
        # Without the key the server says 401 and the page asks for it.
        browser.type_and_enter("#input", question)
        notice = browser.wait_for("!document.getElementById('notice').hidden && "
                                  "document.getElementById('notice').textContent")
        assert "API key" in notice
        browser.js(f"""(() => {{
            for (const [id, v] of [['api-key', {json.dumps(KEY)}], ['temperature', '0'], ['max-tokens', '16']]) {{
                const e = document.getElementById(id); e.value = v; e.dispatchEvent(new Event('change'));
            }}
            document.getElementById('input').value = '';
        }})()""")
        browser.type_and_enter("#input", question)
        first = browser.wait_for(LAST_REPLY % 1)
        browser.type_and_enter("#input", follow_up)
        browser.wait_for("document.querySelectorAll('.msg.assistant').length === 2")
        second = browser.wait_for(LAST_REPLY % 1)
        browser.screenshot(tmp_path / "page.png")
        if os.environ.get("LLAMAPY_SCREENSHOT"):
            shutil.copy(tmp_path / "page.png", os.environ["LLAMAPY_SCREENSHOT"])
        assert browser.js("document.getElementById('model').textContent") == "SmolLM2-135M-Instruct.Q4_1.gguf"
    finally:
        browser.close()
    # What the page streamed is the reply the API gives for the same conversation, greedy.
    turn1 = [{"role": "user", "content": question}]
    status, want1 = server.post(CHAT, {"messages": turn1, "max_tokens": 16, "temperature": 0})
    assert first["text"] == want1["choices"][0]["message"]["content"]
    turn2 = turn1 + [{"role": "assistant", "content": first["text"]}, {"role": "user", "content": follow_up}]
    status, want2 = server.post(CHAT, {"messages": turn2, "max_tokens": 16, "temperature": 0})
    assert second["text"] == want2["choices"][0]["message"]["content"]
    assert "t/s" in first["stats"]
    cached = re.search(r"(\d+) cached", second["stats"])
    assert cached and int(cached.group(1)) > 0, second["stats"]  # the page sent the whole conversation
    assert (tmp_path / "page.png").stat().st_size > 5000


# --- last: it stops the module's server -------------------------------------------------------------


def test_sigterm_ends_a_running_reply_with_an_error_object_then_exits(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    body = {"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json", "X-Api-Key": KEY})
    r = conn.getresponse()
    events = []
    for raw in r:
        line = raw.decode().strip()
        if line.startswith("data: "):
            events.append(line[6:])
            if len(events) == 2:
                server.proc.terminate()  # SIGTERM while the reply runs
    conn.close()
    last = json.loads(events[-1])
    assert last == {"error": {"code": 503, "message": "the server is shutting down", "type": "unavailable_error"}}
    # uvicorn shuts down, then lets SIGTERM end the process as it would have
    assert len(events) < 400 and server.proc.wait(60) in (0, -signal.SIGTERM)
