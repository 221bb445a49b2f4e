"""SimProvider: a real HTTP server that answers like an LLM API, following a scripted Behavior."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from http import HTTPStatus
from typing import Literal

from llmroute.http import HTTPServer, Request, Response, StreamingResponse
from llmroute.sim.anthropic_wire import AnthropicDialect
from llmroute.sim.behavior import Behavior, Schedule
from llmroute.sim.dialect import ChatRequest, Completion, Dialect, Endpoint, Format, dump
from llmroute.sim.openai_wire import AzureOpenAIDialect, OpenAIDialect
from llmroute.sim.stats import SimStats

Kind = Literal["openai", "anthropic", "azure-openai"]
_ID_MARK = "@sim-id@"  # stands in for the id (wherever it appears) in a cached body
DRAW_KEY = re.compile(rb"\[sim-draw ([\w.:-]{1,80})\]")
"""A request whose body carries `[sim-draw KEY]` (in a prompt, which every proxy forwards) draws its latency
from KEY alone: two arms of a benchmark that send the same keys see the same latencies, whatever else each
arm sent, and a key is as slow (the same quantile) on every backend. Outcomes (errors) still come from the
provider's own draws."""
_DIALECTS: dict[str, type[Dialect]] = {
    "openai": OpenAIDialect,
    "anthropic": AnthropicDialect,
    "azure-openai": AzureOpenAIDialect,
}


def _prompt_tokens(request: Request) -> int:
    """The prompt's size as the simulator counts it: roughly 4 bytes of request body per token."""
    return max(1, len(request.body) // 4)


def keyed_draws(key: str) -> random.Random:
    """The draws of a request keyed `key` (see `DRAW_KEY`)."""
    return random.Random(key)


def latency_draws(body: bytes, own: random.Random) -> random.Random:
    """The draws for the latency of a request with this body: its own from its `DRAW_KEY`, else `own`."""
    key = DRAW_KEY.search(body)
    return own if key is None else keyed_draws(key[1].decode())


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


class SimProvider:
    """One simulated backend. `url` is what a route's backend `url` would be set to."""

    def __init__(
        self,
        name: str,
        kind: Kind = "openai",
        behavior: Behavior | None = None,
        *,
        schedule: Schedule | None = None,
        models: tuple[str, ...] = ("sim-model",),
        seed: int | None = None,
    ) -> None:
        if kind not in _DIALECTS:
            raise ValueError(f"unknown provider kind {kind!r}: expected one of {sorted(_DIALECTS)}")
        if behavior is not None and schedule is not None:
            raise ValueError("give a behavior or a schedule, not both")
        self.name = name
        self.kind = kind
        self.schedule = schedule or Schedule.constant(behavior or Behavior())
        self.stats = SimStats()
        self._dialect = _DIALECTS[kind]()
        self._rng = random.Random(seed)
        self._models_body = self._dialect.models_body(models)
        self._headers = [("x-sim-backend", name)]
        self._ids = 0
        self._body_key: tuple[object, ...] = ()
        self._body_parts: list[bytes] = []
        self._started_at = time.time()
        self._host = "127.0.0.1"
        self._server = HTTPServer(self._handle, error_body=self._server_error)

    def _server_error(self, status: int, message: str, path: str, headers: Mapping[str, str]) -> bytes:
        """The HTTP server's own errors (a malformed request, a body too large) in this provider's shape."""
        return self._dialect.error_body(status, message)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen (port 0 = any free port); schedules without an epoch count from now."""
        await self._server.start(host, port)
        self._host = host
        self._started_at = time.time()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop serving; requests still running after `grace` seconds (hangs, streams) are dropped."""
        await self._server.shutdown(grace)

    @property
    def port(self) -> int:
        """The port listened on."""
        return self._server.port

    @property
    def url(self) -> str:
        """Base URL for a route: .../v1 for OpenAI and Anthropic, the bare origin for Azure."""
        origin = f"http://{self._host}:{self.port}"
        return origin if self.kind == "azure-openai" else f"{origin}/v1"

    @property
    def behavior(self) -> Behavior:
        """The behaviour in force right now."""
        return self.schedule.at(time.time() - (self.schedule.epoch or self._started_at))

    def set_behavior(self, behavior: Behavior) -> None:
        """Switch to one constant behaviour from now on."""
        self.schedule = Schedule.constant(behavior)

    # -- request handling ----------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response | StreamingResponse:
        if request.path == "/sim/stats":
            return Response(200, dump(self.stats.to_json()))
        self.stats.record(request)
        try:
            return await self._answer(request)
        except asyncio.CancelledError:  # the server cancels a handler whose client went away
            self.stats.disconnects += 1
            raise

    async def _answer(self, request: Request) -> Response | StreamingResponse:
        dialect = self._dialect
        endpoint = dialect.route(request)
        fmt = None if endpoint is None or endpoint is Endpoint.MODELS else dialect.format(endpoint)
        if endpoint is None or (fmt is None and endpoint is not Endpoint.MODELS):
            return self._error(404, "not_found", f"Unknown request URL: {request.method} {request.path}")
        behavior = self.behavior
        if behavior.api_key is not None and dialect.api_key(request.headers) != behavior.api_key:
            return self._error(401, "unauthorized", "Incorrect API key provided.")
        if fmt is None:  # the model list
            outcome = "ok" if behavior.models_stay_up else behavior.outcome(self._rng)
            if outcome != "ok":
                return await self._misbehave(outcome, request, behavior)
            self.stats.by_outcome["ok"] += 1
            return Response(200, self._models_body, self._headers)
        try:
            payload = json.loads(request.body)
        except ValueError:
            return self._error(400, "bad_request", "We could not parse the JSON body of your request.")
        chat = fmt.parse(request, payload)
        if isinstance(chat, str):
            return self._error(400, "bad_request", chat)
        refused = next((param for param in behavior.unsupported_params if param in payload), None)
        if refused is not None:
            self.stats.by_outcome["unsupported_parameter"] += 1
            return Response(400, dialect.parameter_error(refused), self._headers)
        window = behavior.context_window
        if window is not None and _prompt_tokens(request) > window:
            self.stats.by_outcome["context_length"] += 1
            return Response(400, dialect.context_error(_prompt_tokens(request), window), self._headers)
        outcome = behavior.outcome(self._rng)
        if outcome != "ok":
            return await self._misbehave(outcome, request, behavior)
        completion = self._complete(fmt, chat, behavior, request)
        if chat.stream:
            broken = self._rng.random() < behavior.midstream_failure_rate
            stall = 0.0 if broken or self._rng.random() >= behavior.midstream_stall_rate else behavior.stall
            self.stats.by_outcome["midstream_failure" if broken else "midstream_stall" if stall else "ok"] += 1
            await _sleep((behavior.ttft or behavior.latency).sample(latency_draws(request.body, self._rng)))
            chunks = self._stream(fmt, request, chat, completion, behavior, broken, stall)
            return StreamingResponse(200, chunks, [*self._headers, ("cache-control", "no-cache")])
        self.stats.by_outcome["ok"] += 1
        writing = completion.completion_tokens * behavior.json_token_delay
        await _sleep(behavior.latency.sample(latency_draws(request.body, self._rng)) + writing)
        return Response(200, self._completion_body(fmt, completion), self._headers)

    def _completion_body(self, fmt: Format, completion: Completion) -> bytes:
        """The JSON answer; consecutive answers that differ only by id reuse one encoding (benchmarks)."""
        c = completion
        key = (
            fmt,
            c.model,
            c.prompt_tokens,
            c.completion_tokens,
            c.cached_tokens,
            c.cache_write_tokens,
            c.truncated,
            c.created,
            c.inputs,
            c.base64,
            c.tool,
        )
        if key != self._body_key:
            template = fmt.completion_body(dataclasses.replace(c, id=_ID_MARK))
            self._body_key, self._body_parts = key, template.split(_ID_MARK.encode())
        return c.id.encode().join(self._body_parts)  # ids may appear several times (Responses items), or not

    def _complete(self, fmt: Format, chat: ChatRequest, behavior: Behavior, request: Request) -> Completion:
        self._ids += 1
        tokens = behavior.output_tokens if fmt.generates else 0
        truncated = chat.max_tokens is not None and chat.max_tokens < tokens
        if truncated and chat.max_tokens is not None:
            tokens = chat.max_tokens
        prompt_tokens = _prompt_tokens(request)
        cached = min(behavior.cached_tokens, prompt_tokens)
        return Completion(
            id=f"{fmt.id_prefix}{self.name}-{self._ids}",
            model=chat.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=tokens,
            cached_tokens=cached,
            cache_write_tokens=min(behavior.cache_write_tokens, prompt_tokens - cached),
            truncated=truncated,
            created=int(time.time()),
            inputs=chat.inputs,
            base64=chat.base64,
            tool=chat.tool,
        )

    async def _stream(
        self,
        fmt: Format,
        request: Request,
        chat: ChatRequest,
        completion: Completion,
        behavior: Behavior,
        broken: bool,
        stall: float,
    ) -> AsyncIterator[bytes]:
        yield fmt.stream_start(completion) + fmt.stream_token(completion, "token")
        if broken:
            failure = fmt.stream_error("simulated failure after the first chunk")
            if failure is None:
                request.abort()
            else:
                yield failure
            return
        numbered = getattr(fmt, "numbered", False)  # events with a sequence_number are made one by one
        token = b"" if numbered else fmt.stream_token(completion, " token")
        for i in range(completion.completion_tokens - 1):
            await _sleep(stall if stall and i == completion.completion_tokens // 2 else behavior.token_delay)
            yield fmt.stream_token(completion, " token") if numbered else token
        yield fmt.stream_end(completion, chat.include_usage)

    async def _misbehave(self, outcome: str, request: Request, behavior: Behavior) -> Response:
        self.stats.by_outcome[outcome] += 1
        if outcome == "reset":
            request.abort(reset=True)
        elif outcome == "hang":
            await request.wait_disconnected()
        elif outcome == "rate_limited":
            retry = behavior.retry_after
            headers = [("retry-after", str(math.ceil(retry))), ("retry-after-ms", str(round(retry * 1000)))]
            return self._response(429, "Rate limit reached, please retry later.", headers)
        else:
            status = self._rng.choice(behavior.error_statuses)
            return self._response(status, f"Simulated error: {HTTPStatus(status).phrase}.", [])
        return Response(500)  # never sent: the connection is gone

    def _error(self, status: int, outcome: str, message: str) -> Response:
        self.stats.by_outcome[outcome] += 1
        return self._response(status, message, [])

    def _response(self, status: int, message: str, headers: list[tuple[str, str]]) -> Response:
        return Response(status, self._dialect.error_body(status, message), [*self._headers, *headers])
