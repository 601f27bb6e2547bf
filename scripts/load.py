#!/usr/bin/env python3
"""Load generator for an OpenAI-compatible server on this machine (llamapy serve, llama-server).

N clients send streaming chat (or text) completions back to back until --requests are done or
--duration has passed, whichever comes first; it then reports requests/s, aggregate generated
tokens/s, and percentiles of the time to first token (TTFT) and of the inter-token latency (ITL:
the gaps between content chunks of one stream). Standard library only, so it runs anywhere.

Bounded on purpose: loopback addresses only (it is a measuring tool, not a way to flood someone
else's server), at most 10 000 requests, at most an hour.

    python scripts/load.py --url http://127.0.0.1:8080 -c 4 -n 32 --max-tokens 64
    python scripts/load.py --url http://127.0.0.1:8080 -c 4 -n 32 --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_REQUESTS = 10_000
MAX_DURATION = 3600.0

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works.",
    "List some tips for learning a new language.",
    "Describe the water cycle to a child.",
    "What are the benefits of regular exercise?",
    "Write a poem about autumn leaves.",
    "How do airplanes stay in the air?",
    "Give me a recipe for a simple vegetable soup.",
    "Why is the sky blue?",
    "Summarize the plot of a classic adventure novel.",
    "What should I pack for a weekend hiking trip?",
    "Explain the difference between weather and climate.",
    "Describe a busy market in the morning.",
    "How does a computer store information?",
    "Write a letter thanking a teacher.",
    "What makes a good night's sleep?",
]


@dataclass
class Sample:
    ok: bool
    ttft: float | None = None  # seconds from sending to the first content chunk
    gaps: list[float] = field(default_factory=list)  # seconds between content chunks
    n_chunks: int = 0
    n_tokens: int = 0  # completion_tokens from the usage chunk (content chunks when absent)
    seconds: float = 0.0
    error: str | None = None


def loopback_only(host: str) -> None:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as e:
        raise SystemExit(f"load.py: cannot resolve {host}: {e}") from None
    outside = [a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if outside:
        raise SystemExit(f"load.py: refusing {host} ({', '.join(sorted(outside))}): loopback addresses only")


def one_request(url, path: str, body: dict, headers: dict, timeout: float) -> Sample:
    conn_class = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(url.hostname, url.port or (443 if url.scheme == "https" else 80), timeout=timeout)
    start = time.perf_counter()
    sample = Sample(ok=False)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **headers})
        r = conn.getresponse()
        if r.status != 200:
            sample.error = f"HTTP {r.status}: {r.read(300).decode(errors='replace')}"
            return sample
        last = None
        for raw in r:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                sample.ok = True
                break
            event = json.loads(data)
            if "error" in event:
                sample.error = event["error"].get("message", "error")
                break
            if event.get("usage"):
                sample.n_tokens = event["usage"].get("completion_tokens", 0)
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
                if text:
                    now = time.perf_counter()
                    if last is None:
                        sample.ttft = now - start
                    else:
                        sample.gaps.append(now - last)
                    last = now
                    sample.n_chunks += 1
        if not sample.n_tokens:
            sample.n_tokens = sample.n_chunks
    except (OSError, http.client.HTTPException, json.JSONDecodeError) as e:
        sample.error = f"{type(e).__name__}: {e}"
    finally:
        sample.seconds = time.perf_counter() - start
        conn.close()
    return sample


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def run(args) -> dict:
    url = urlsplit(args.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise SystemExit(f"load.py: --url must be http://HOST:PORT, got {args.url!r}")
    loopback_only(url.hostname)
    chat = not args.completions
    path = "/v1/chat/completions" if chat else "/v1/completions"
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    counter = iter(range(args.requests))
    lock = threading.Lock()
    samples: list[Sample] = []
    deadline = time.perf_counter() + args.duration

    def body(i: int) -> dict:
        prompt = PROMPTS[i % len(PROMPTS)]
        b = {"stream": True, "stream_options": {"include_usage": True}, "max_tokens": args.max_tokens,
             "temperature": args.temperature, "seed": i, "ignore_eos": args.ignore_eos, "cache_prompt": True}
        if args.model:
            b["model"] = args.model
        if chat:
            b["messages"] = [{"role": "user", "content": prompt}]
        else:
            b["prompt"] = prompt
        return b

    def client():
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            s = one_request(url, path, body(i), headers, args.timeout)
            with lock:
                samples.append(s)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()) + args.timeout)
    wall = time.perf_counter() - started
    with lock:
        done = list(samples)
    ok = [s for s in done if s.ok]
    ttft = [s.ttft for s in ok if s.ttft is not None]
    gaps = [g for s in ok for g in s.gaps]
    tokens = sum(s.n_tokens for s in ok)

    def ms(v):
        return None if v is None else round(1e3 * v, 2)

    return {
        "url": args.url, "endpoint": path, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "requests": len(done), "succeeded": len(ok), "failed": len(done) - len(ok),
        "errors": sorted({s.error for s in done if s.error})[:5],
        "wall_s": round(wall, 3), "requests_per_s": round(len(ok) / wall, 3) if wall else 0.0,
        "generated_tokens": tokens, "generated_tokens_per_s": round(tokens / wall, 2) if wall else 0.0,
        "ttft_ms": {f"p{p}": ms(percentile(ttft, p)) for p in (50, 90, 99)},
        "itl_ms": {f"p{p}": ms(percentile(gaps, p)) for p in (50, 90, 99)},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL (loopback only)")
    p.add_argument("-c", "--concurrency", type=int, default=4, help="clients sending at once")
    p.add_argument("-n", "--requests", type=int, default=32, help=f"requests in all (at most {MAX_REQUESTS})")
    p.add_argument("--duration", type=float, default=300.0, help=f"stop sending after this many seconds "
                   f"(at most {MAX_DURATION:.0f})")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per reply")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="generate exactly --max-tokens tokens (llama.cpp's ignore_eos; default on)")
    p.add_argument("--completions", action="store_true", help="use /v1/completions instead of chat")
    p.add_argument("--model", help="model name to send (default: none)")
    p.add_argument("--api-key", help="sent as Authorization: Bearer KEY")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = p.parse_args(argv)
    if not 1 <= args.concurrency <= 256:
        p.error("-c must be 1 to 256")
    if not 1 <= args.requests <= MAX_REQUESTS:
        p.error(f"-n must be 1 to {MAX_REQUESTS}")
    if not 0 < args.duration <= MAX_DURATION:
        p.error(f"--duration must be more than 0 and at most {MAX_DURATION:.0f}")
    if args.max_tokens < 1:
        p.error("--max-tokens must be at least 1")
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['succeeded']}/{report['requests']} requests in {report['wall_s']:.1f} s: "
              f"{report['requests_per_s']:.2f} req/s, {report['generated_tokens_per_s']:.1f} generated t/s "
              f"({report['concurrency']} clients, {report['max_tokens']} tokens each)")
        for name in ("ttft_ms", "itl_ms"):
            row = report[name]
            print(f"  {name[:-3].upper():5} ms: " + "  ".join(f"{k} {v}" for k, v in row.items()))
        for e in report["errors"]:
            print(f"  error: {e}", file=sys.stderr)
    return 0 if report["failed"] == 0 and report["succeeded"] else 1


if __name__ == "__main__":
    sys.exit(main())
