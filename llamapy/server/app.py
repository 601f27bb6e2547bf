"""The ASGI app (Starlette): OpenAI-compatible routes, llama-server's extras, the chat page, API keys.

The event loop never runs the model: a completion request is checked and tokenized here (tokenizing
in a worker thread), handed to the engine as a Job, and its events come back through an asyncio
queue that the engine thread fills with loop.call_soon_threadsafe. A client that goes away cancels
its job, which frees the slot at the engine's next step.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from .engine import Engine, Event, Job
from .protocol import (
    ApiError,
    Shaper,
    bad,
    get_bool,
    parse_json,
    read_messages,
    read_options,
    read_prompt,
    sse,
)

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 4 * 1024 * 1024

log = logging.getLogger("llamapy.server")


@dataclass
class ServerConfig:
    model_name: str  # the id /v1/models lists and requests may name
    model_path: str
    api_keys: tuple[str, ...] = ()
    chat_template: str | None = None  # a built-in's name or Jinja text; None: the model's own
    max_body_bytes: int = MAX_BODY_BYTES

    def model_names(self) -> set[str]:
        path = Path(self.model_path)
        return {self.model_name, str(path), path.name, path.stem}


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


class Server:
    """The routes, over one engine."""

    def __init__(self, engine: Engine, config: ServerConfig):
        self.engine = engine
        self.config = config
        self.started = time.time()
        self._format = None
        self._end_tokens = None
        self._longest_piece: int | None = None

    # --- plumbing ------------------------------------------------------------------------------

    def route(self, handler, public: bool = False):
        async def endpoint(request: Request) -> Response:
            try:
                if not public:
                    self.check_key(request)
                return await handler(request)
            except ApiError as e:
                return error_response(e)
            except Exception as e:  # a bug of ours: one line to the client, the traceback to the log
                log.exception("request failed")
                return error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))

        return endpoint

    def check_key(self, request: Request) -> None:
        keys = self.config.api_keys
        if not keys:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if given is None:
            raise ApiError(401, "an API key is required: send 'Authorization: Bearer KEY' or 'X-Api-Key: KEY'",
                           "authentication_error")
        if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
            raise ApiError(401, "invalid API key", "authentication_error")

    async def body(self, request: Request) -> dict:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body has {int(declared)} bytes, more than the {limit}-byte limit",
                           "invalid_request_error")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body is larger than the {limit}-byte limit", "invalid_request_error")
            chunks.append(chunk)
        return parse_json(b"".join(chunks))

    def model(self):
        if self.engine.load_error is not None:
            raise ApiError(503, f"the model failed to load: {self.engine.load_error}", "unavailable_error")
        if not self.engine.ready.is_set():
            raise ApiError(503, "Loading model", "unavailable_error")
        return self.engine.model

    def chat_format(self):
        if self._format is None:
            from ..chat.format import end_of_turn_tokens

            model = self.model()
            self._format = model.chat_format(self.config.chat_template)
            self._end_tokens = end_of_turn_tokens(model)
        return self._format

    def check_model_name(self, name: str | None) -> None:
        if name is not None and name not in self.config.model_names():
            raise ApiError(404, f"model {name!r} is not served here; this server serves {self.config.model_name!r} "
                           "(GET /v1/models)", "not_found_error")

    # --- health, models, props ------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        self.model()
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        c = self.config
        meta = None
        if self.engine.ready.is_set():
            m = self.engine.model
            cfg = m.config
            meta = {"vocab_type": "spm" if m.tokenizer.is_spm else "bpe", "n_vocab": cfg.n_vocab,
                    "n_ctx": self.engine.n_ctx_slot, "n_ctx_train": cfg.n_ctx_train, "n_embd": cfg.n_embd,
                    "size": Path(c.model_path).stat().st_size, "architecture": cfg.arch}
        return JSONResponse({"object": "list", "data": [{
            "id": c.model_name, "object": "model", "created": int(self.started), "owned_by": "llamapy",
            "meta": meta}]})

    async def props(self, request: Request) -> Response:
        model = self.model()
        fmt = self.chat_format()
        return JSONResponse({
            "model_alias": self.config.model_name, "model_path": self.config.model_path,
            "total_slots": self.engine.n_parallel, "n_ctx": self.engine.n_ctx_slot,
            "n_vocab": model.config.n_vocab, "chat_template": fmt.source, "chat_template_name": fmt.name,
            "build_info": f"llamapy {__version__}"})

    # --- tokens and templates -------------------------------------------------------------------

    async def tokenize(self, request: Request) -> Response:
        data = await self.body(request)
        model = self.model()
        content = data.get("content")
        if not isinstance(content, str):
            raise bad("'content' must be a string")
        add_special = get_bool(data, "add_special", False)
        with_pieces = get_bool(data, "with_pieces", False)
        from starlette.concurrency import run_in_threadpool

        ids = await run_in_threadpool(model.tokenize, content, add_special, True)
        if not with_pieces:
            return JSONResponse({"tokens": ids})
        tok = model.tokenizer
        pieces = [{"id": t, "piece": tok.token_to_piece(t).decode("utf-8", errors="replace")} for t in ids]
        return JSONResponse({"tokens": pieces})

    async def detokenize(self, request: Request) -> Response:
        data = await self.body(request)
        model = self.model()
        ids = data.get("tokens")
        n_vocab = model.config.n_vocab
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise bad("'tokens' must be an array of token ids")
        outside = [t for t in ids if not 0 <= t < n_vocab]
        if outside:
            raise bad(f"token {outside[0]} is outside the vocabulary (0..{n_vocab - 1})")
        return JSONResponse({"content": model.detokenize(ids)})

    async def apply_template(self, request: Request) -> Response:
        data = await self.body(request)
        messages = read_messages(data)
        return JSONResponse({"prompt": self.render(messages)})

    def render(self, messages: list[dict]) -> str:
        from ..chat.templates import ChatTemplateError

        fmt = self.chat_format()
        try:
            return fmt.render(messages, True)
        except ChatTemplateError as e:
            raise bad(f"the chat template refused the messages: {e}") from None

    def chat_tokens(self, text: str) -> list[int]:
        from ..chat.format import prompt_tokens

        return prompt_tokens(self.engine.model, self.chat_format(), text)

    def check_length(self, text: str, n_ctx: int) -> None:
        """Refuse, without tokenizing it, a text too long for any tokenization to fit: no token is longer
        than the vocabulary's longest piece (tokenizing a megabyte takes seconds)."""
        if self._longest_piece is None:
            tok = self.engine.model.tokenizer
            self._longest_piece = max(len(tok.token_to_piece(t)) for t in range(tok.n_vocab))
        n_bytes = len(text.encode("utf-8", errors="surrogatepass"))
        at_least = -(-n_bytes // self._longest_piece)
        if at_least >= n_ctx:
            raise too_long(at_least, n_ctx, f"at least {at_least} tokens ({n_bytes} bytes)")

    # --- completions ----------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        return await self.completion(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self.completion(request, chat=False)

    async def completion(self, request: Request, chat: bool) -> Response:
        from starlette.concurrency import run_in_threadpool

        data = await self.body(request)
        options = read_options(data)
        self.check_model_name(options.model)
        model = self.model()
        n_ctx = self.engine.n_ctx_slot
        if chat:
            messages = read_messages(data)
            self.chat_format()
            text = self.render(messages)
            self.check_length(text, n_ctx)
            ids = await run_in_threadpool(self.chat_tokens, text)
            end_tokens = self._end_tokens
        else:
            prompt = read_prompt(data, model.config.n_vocab)
            if isinstance(prompt, str):
                self.check_length(prompt, n_ctx)
                ids = await run_in_threadpool(model.tokenize, prompt)
            else:
                ids = prompt
            end_tokens = frozenset()
        if not ids:
            raise bad("the prompt is empty (no tokens)")
        if len(ids) >= n_ctx:
            raise too_long(len(ids), n_ctx)
        if options.max_tokens > n_ctx:
            raise bad(f"max_tokens is {options.max_tokens}, more than a slot's context holds ({n_ctx} tokens)")

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def sink(event: Event) -> None:  # engine thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(ids, sink, options.params, options.max_tokens, options.stop, end_tokens, options.cache_prompt,
                  options.ignore_eos)
        shaper = Shaper(chat, self.config.model_name, f"llamapy-{__version__}")
        self.engine.submit(job)
        if options.stream:
            return StreamingResponse(self.stream(job, events, shaper, options.include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self.collect(request, job, events, shaper)

    def cancel(self, job: Job) -> None:
        job.cancel()
        self.engine.wake()

    async def stream(self, job: Job, events: asyncio.Queue, shaper: Shaper, include_usage: bool):
        done = False
        try:
            if shaper.chat:
                yield sse(shaper.chunk("", first=True))
            while True:
                event = await events.get()
                if event.error is not None:
                    done = True
                    yield sse(engine_error(event).body())
                    return
                if event.text:
                    yield sse(shaper.chunk(event.text))
                if event.done:
                    done = True
                    last = shaper.chunk(finish=event.finish)
                    last["timings"] = event.usage.timings()
                    yield sse(last)
                    if include_usage:
                        yield sse(shaper.chunk(usage=event.usage))
                    yield sse("[DONE]")
                    return
        finally:
            if not done:  # the client went away (or the server is stopping): free the slot
                self.cancel(job)

    async def collect(self, request: Request, job: Job, events: asyncio.Queue, shaper: Shaper) -> Response:
        async def gather():
            pieces = []
            while True:
                event = await events.get()
                pieces.append(event.text)
                if event.done:
                    return "".join(pieces), event

        async def disconnected():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        result = asyncio.ensure_future(gather())
        gone = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not result.done():  # the client went away (or the server is stopping): free the slot
                self.cancel(job)
                result.cancel()
        if not result.done():
            return Response(status_code=499)  # nobody is listening
        text, event = result.result()
        if event.error is not None:
            raise engine_error(event)
        return JSONResponse(shaper.response(text, event.finish, event.usage))

    # --- state ----------------------------------------------------------------------------------

    async def slots(self, request: Request) -> Response:
        self.model()
        return JSONResponse(self.engine.slots_info())

    async def metrics(self, request: Request) -> Response:
        self.model()
        return PlainTextResponse(prometheus_text(self.engine), media_type="text/plain; version=0.0.4")

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def engine_error(event: Event) -> ApiError:
    return ApiError(event.status, event.error, "unavailable_error" if event.status == 503 else "server_error")


def too_long(n_tokens: int, n_ctx: int, what: str | None = None) -> ApiError:
    return ApiError(400, f"the prompt has {what or f'{n_tokens} tokens'}, more than a slot's context holds ({n_ctx} "
                    "tokens; -c is shared by the -np slots)", "exceed_context_size_error",
                    n_prompt_tokens=n_tokens, n_ctx=n_ctx)


def prometheus_text(engine: Engine) -> str:
    m = engine.metrics
    busy = m.n_busy_slots_total / m.n_decode_total if m.n_decode_total else 0.0
    rows = [
        ("prompt_tokens_total", "counter", "Prompt tokens evaluated (cached ones excluded)", m.prompt_tokens_total),
        ("prompt_tokens_cached_total", "counter", "Prompt tokens reused from a slot's cache",
         m.prompt_tokens_cached_total),
        ("prompt_seconds_total", "counter", "Time from admission to the end of each prompt", m.prompt_seconds_total),
        ("tokens_predicted_total", "counter", "Generated tokens", m.tokens_predicted_total),
        ("tokens_predicted_seconds_total", "counter", "Time spent generating, per request, summed",
         m.tokens_predicted_seconds_total),
        ("n_decode_total", "counter", "Forward passes of the engine", m.n_decode_total),
        ("n_tokens_max", "counter", "Largest sequence length seen (prompt + generation)", m.n_tokens_max),
        ("requests_total", "counter", "Completion requests accepted", m.requests_total),
        ("requests_cancelled_total", "counter", "Requests whose client went away", m.requests_cancelled_total),
        ("engine_busy_seconds_total", "counter", "Time the engine spent in forward passes",
         m.engine_busy_seconds_total),
        ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s",
         m.prompt_tokens_total / m.prompt_seconds_total if m.prompt_seconds_total else 0.0),
        ("predicted_tokens_seconds", "gauge", "Average generation throughput per request in tokens/s",
         m.tokens_predicted_total / m.tokens_predicted_seconds_total if m.tokens_predicted_seconds_total else 0.0),
        ("requests_processing", "gauge", "Requests in a slot", engine.n_processing),
        ("requests_deferred", "gauge", "Requests waiting for a free slot", engine.n_waiting),
        ("n_busy_slots_per_decode", "gauge", "Average busy slots per forward pass", busy),
    ]
    out = []
    for name, kind, help, value in rows:
        out += [f"# HELP llamapy:{name} {help}", f"# TYPE llamapy:{name} {kind}", f"llamapy:{name} {value:g}"
                if isinstance(value, float) else f"llamapy:{name} {value}"]
    return "\n".join(out) + "\n"


async def _http_error(request: Request, exc: HTTPException) -> Response:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = {404: f"no such endpoint: {request.method} {request.url.path}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return error_response(ApiError(exc.status_code, message, kind))


def create_app(engine: Engine, config: ServerConfig, manage_engine: bool = True) -> Starlette:
    """The Starlette app; with manage_engine the app starts the engine thread and stops it on shutdown."""
    s = Server(engine, config)
    post, get = ["POST"], ["GET"]
    routes = [
        Route("/", s.route(s.index, public=True), methods=get),
        Route("/health", s.route(s.health, public=True), methods=get),
        Route("/v1/health", s.route(s.health, public=True), methods=get),
        Route("/v1/models", s.route(s.models), methods=get),
        Route("/models", s.route(s.models), methods=get),
        Route("/props", s.route(s.props), methods=get),
        Route("/v1/chat/completions", s.route(s.chat_completions), methods=post),
        Route("/chat/completions", s.route(s.chat_completions), methods=post),
        Route("/v1/completions", s.route(s.completions), methods=post),
        Route("/completions", s.route(s.completions), methods=post),
        Route("/tokenize", s.route(s.tokenize), methods=post),
        Route("/detokenize", s.route(s.detokenize), methods=post),
        Route("/apply-template", s.route(s.apply_template), methods=post),
        Route("/slots", s.route(s.slots), methods=get),
        Route("/metrics", s.route(s.metrics), methods=get),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if manage_engine:
            engine.start()
        try:
            yield
        finally:
            if manage_engine:
                await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.server = s
    return app
