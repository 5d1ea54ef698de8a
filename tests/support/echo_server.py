"""A trivially fast OpenAI-compatible streaming endpoint, to measure the load generator itself (a test
double: part of the testing package, never of the wheel).

It answers `/v1/completions` and `/v1/chat/completions` with SSE chunks shaped like vLLM's (one
token per chunk, a final `usage` chunk when asked, `data: [DONE]`), optionally after a first-token
delay and a per-token delay; `/v1/models`, vLLM's `/tokenize` (one token per word) and `/stats`
(requests served, most in flight at once). Plain asyncio streams: no framework, so it costs little
next to the client it serves.

    python -m tests.support.echo_server --port 0 [--ttft-ms 0] [--itl-ms 0] [--model echo]
    (prints "listening on PORT" once it accepts connections)

In a test: `with EchoServer(itl=0.01) as srv: run_load(srv.url, "echo", ...)` (a background thread).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    connections: int = 0  # TCP connections accepted (a client that reuses them keeps this low)
    dropped: int = 0  # generation requests closed with no response (`EchoConfig.drop_requests`)
    arrivals: list[float] = field(default_factory=list)  # loop time at which each request arrived
    prompts: list[str] = field(default_factory=list)  # each request's prompt (messages joined), in arrival order
    max_tokens: list[int] = field(default_factory=list)  # each recorded request's reply cap, in arrival order


@dataclass
class EchoConfig:
    model: str = "echo"
    ttft: float = 0.0  # seconds before the first token
    itl: float = 0.0  # seconds between tokens
    record_arrivals: bool = False
    record_prompts: bool = False
    serial: bool = False  # one request generates at a time: a server with a capacity, queueing beyond it
    burst: bool = False  # every token of a stream in one write: what a backed-up server or a starved client shows
    # The first N generation requests are read and their connection closed with no response: what a
    # client sees when the server closes a pooled keep-alive connection as the request goes out.
    drop_requests: int = 0


def _text(content: Any) -> str:
    """A chat message's text: a string, or OpenAI content parts (`[{"type": "text", "text": ...}]`,
    what `vllm bench serve`'s openai-chat backend sends) joined."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def _sse(obj: Any) -> bytes:
    data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Handler:
    def __init__(self, cfg: EchoConfig, stats: Stats) -> None:
        self.cfg, self.stats = cfg, stats
        self.engine = asyncio.Lock() if cfg.serial else None

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            while True:  # keep-alive: one request after another on this connection
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                await self.route(method, path, body, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def route(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        if method == "GET" and path == "/v1/models":
            return await self.json(writer, 200, {"object": "list", "data": [{"id": self.cfg.model, "object": "model"}]})
        if method == "GET" and path == "/stats":
            s = self.stats
            return await self.json(writer, 200, {"requests": s.requests, "in_flight": s.in_flight,
                                                 "max_in_flight": s.max_in_flight, "prompt_tokens": s.prompt_tokens,
                                                 "completion_tokens": s.completion_tokens})
        if method == "POST" and path == "/tokenize":
            req = json.loads(body or b"{}")
            n = len(str(req.get("prompt", "")).split())
            return await self.json(writer, 200, {"count": n, "tokens": list(range(n)), "max_model_len": 1 << 20})
        if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            if self.stats.dropped < self.cfg.drop_requests:
                self.stats.dropped += 1
                raise ConnectionResetError("dropped on purpose: no response")  # the handler closes it
            return await self.generate(path.endswith("chat/completions"), json.loads(body or b"{}"), writer)
        return await self.json(writer, 404, {"error": {"message": f"no route {method} {path}", "code": 404}})

    async def json(self, writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (status, len(data), data))
        await writer.drain()

    async def tokens(self, writer: asyncio.StreamWriter, chat: bool, kind: str, n: int) -> None:
        if self.cfg.ttft:
            await asyncio.sleep(self.cfg.ttft)
        if self.cfg.burst:  # one write (one send), so the client reads the whole stream at once
            chunks = [self.chunk(chat, kind, i, n) for i in range(n)]
            writer.write(b"".join(chunks))
            return await writer.drain()
        for i in range(n):
            if i and self.cfg.itl:
                await asyncio.sleep(self.cfg.itl)
            writer.write(self.chunk(chat, kind, i, n))
            await writer.drain()

    def chunk(self, chat: bool, kind: str, i: int, n: int) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": {"content": " tok"}} if chat else {"index": 0, "text": " tok"}
        choice["finish_reason"] = "length" if i == n - 1 else None
        return _sse({"id": "x", "object": kind, "model": self.cfg.model, "choices": [choice]})

    async def generate(self, chat: bool, req: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        if req.get("model") != self.cfg.model:
            return await self.json(writer, 404, {"error": {"message": f"The model `{req.get('model')}` does not exist.",
                                                           "type": "NotFoundError", "code": 404}})
        s = self.stats
        s.requests += 1
        if self.cfg.record_arrivals:
            s.arrivals.append(asyncio.get_running_loop().time())
        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)
        try:
            if chat:
                prompt = " ".join(_text(m.get("content", "")) for m in req.get("messages", []))
                n = int(req.get("max_completion_tokens") or req.get("max_tokens") or 16)
            else:
                prompt = str(req.get("prompt", ""))
                n = int(req.get("max_tokens") or 16)
            if self.cfg.record_prompts:
                s.prompts.append(prompt)
                s.max_tokens.append(n)
            p = len(prompt.split())
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            kind = "chat.completion.chunk" if chat else "text_completion"
            if self.engine is not None:
                async with self.engine:
                    await self.tokens(writer, chat, kind, n)
            else:
                await self.tokens(writer, chat, kind, n)
            if (req.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}
                writer.write(_sse({"id": "x", "object": kind, "model": self.cfg.model, "choices": [], "usage": usage}))
            writer.write(_sse(b"[DONE]") + b"0\r\n\r\n")
            await writer.drain()
            s.prompt_tokens += p
            s.completion_tokens += n
        finally:
            s.in_flight -= 1


async def serve(cfg: EchoConfig, host: str = "127.0.0.1", port: int = 0,
                ready: Any = None, stats: Stats | None = None) -> None:
    """Serve until cancelled; `ready(port)` is called once it listens."""
    handler = _Handler(cfg, stats if stats is not None else Stats())
    server = await asyncio.start_server(handler, host, port, backlog=4096)
    async with server:
        if ready is not None:
            ready(server.sockets[0].getsockname()[1])
        await server.serve_forever()


class EchoServer:
    """The echo server on 127.0.0.1 in a background thread (its own event loop), as a context manager."""

    def __init__(self, *, model: str = "echo", ttft: float = 0.0, itl: float = 0.0, record_arrivals: bool = False,
                 record_prompts: bool = False, serial: bool = False, burst: bool = False, drop_requests: int = 0):
        self.cfg = EchoConfig(model=model, ttft=ttft, itl=itl, record_arrivals=record_arrivals,
                              record_prompts=record_prompts, serial=serial, burst=burst, drop_requests=drop_requests)
        self.stats = Stats()
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, name="echo-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()

            def ready(port: int) -> None:
                self.port = port
                self._ready.set()

            with contextlib.suppress(asyncio.CancelledError):
                await serve(self.cfg, ready=ready, stats=self.stats)

        asyncio.run(main())

    def __enter__(self) -> EchoServer:  # noqa: PYI034
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("echo server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.support.echo_server", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", default="echo")
    ap.add_argument("--ttft-ms", type=float, default=0.0)
    ap.add_argument("--itl-ms", type=float, default=0.0)
    a = ap.parse_args(argv)
    cfg = EchoConfig(model=a.model, ttft=a.ttft_ms / 1000, itl=a.itl_ms / 1000)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(cfg, a.host, a.port, ready=lambda port: print(f"listening on {port}", flush=True)))


if __name__ == "__main__":
    main()
