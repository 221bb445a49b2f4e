"""The shadow probe's body per backend: `max_tokens` until a backend refuses it as unsupported."""

from __future__ import annotations

import json
from typing import Any

from llmroute.model import parse_spec
from llmroute.model.spec import Backend
from llmroute.sidecar.probebody import ProbeBodies
from llmroute.sidecar.runtime import RouteRuntime, UpstreamPool
from llmroute.sidecar.upstream.errors import UpstreamError, error_from_response
from llmroute.sim.anthropic_wire import AnthropicDialect
from llmroute.sim.openai_wire import AzureOpenAIDialect, OpenAIDialect


def refusal(body: bytes) -> UpstreamError:
    return error_from_response(400, {}, body)


REFUSES_MAX_TOKENS = refusal(OpenAIDialect().parameter_error("max_tokens"))


def spec(*backends: tuple[str, str]) -> dict[str, Any]:
    """A route over (name, url) backends, all serving model "m"."""
    entries = [{"name": n, "provider": "openai", "url": url, "model": "m"} for n, url in backends]
    return {"models": ["chat"], "backends": entries}


def runtime(*backends: tuple[str, str], previous: RouteRuntime | None = None) -> RouteRuntime:
    return RouteRuntime(parse_spec(spec(*backends), name="r", namespace="ns"), UpstreamPool(), previous)


def backend(name: str = "o3", url: str = "http://o3.example/v1") -> Backend:
    return runtime((name, url)).by_name[name].spec


def test_a_chat_probe_caps_the_output_with_max_tokens_until_a_backend_refuses_it() -> None:
    bodies, o3, other = ProbeBodies(), backend(), backend("gpt4o", "http://gpt4o.example/v1")
    sent = bodies.body(o3, "chat")
    assert sent["max_tokens"] == 16
    assert bodies.learn(o3, "chat", sent, REFUSES_MAX_TOKENS)
    renamed = bodies.body(o3, "chat")
    assert renamed["max_completion_tokens"] == 16 and "max_tokens" not in renamed
    assert bodies.body(other, "chat")["max_tokens"] == 16  # other backends keep the usual cap
    # A server that refuses the renamed cap too (a proxy or an old API version that does not know it): the
    # probes go back to max_tokens, after the usual pause for a probe refused as a bad request.
    assert not bodies.learn(o3, "chat", renamed, refusal(OpenAIDialect().parameter_error("max_completion_tokens")))
    assert bodies.body(o3, "chat")["max_tokens"] == 16


def test_a_second_probe_sent_before_the_first_refusal_came_back_is_not_paused() -> None:
    # Two probes may be in flight at once (a recovery's proof): both went out with max_tokens.
    bodies, o3 = ProbeBodies(), backend()
    first, second = bodies.body(o3, "chat"), bodies.body(o3, "chat")
    assert bodies.learn(o3, "chat", first, REFUSES_MAX_TOKENS)
    assert bodies.learn(o3, "chat", second, REFUSES_MAX_TOKENS)


def test_the_debug_view_names_the_cap_of_chat_probes_only() -> None:
    bodies, o3 = ProbeBodies(), backend()
    assert bodies.cap(o3) == "max_tokens"
    bodies.learn(o3, "chat", bodies.body(o3, "chat"), REFUSES_MAX_TOKENS)
    assert bodies.cap(o3) == "max_completion_tokens"
    entry = {"name": "c", "provider": "anthropic", "url": "http://claude.example/v1", "model": "c"}
    claude = parse_spec({"models": ["c"], "backends": [entry]}, name="r", namespace="ns").backends[0]
    assert bodies.cap(claude) is None  # probed through the Messages API


def test_each_body_is_a_copy_the_caller_may_change() -> None:
    bodies, o3 = ProbeBodies(), backend()
    bodies.body(o3, "chat")["stream"] = True
    assert "stream" not in bodies.body(o3, "chat")


def test_only_a_refusal_of_the_cap_as_unsupported_changes_the_body() -> None:
    bodies, o3 = ProbeBodies(), backend()
    sent = bodies.body(o3, "chat")
    assert not bodies.learn(o3, "chat", sent, refusal(OpenAIDialect().parameter_error("temperature")))
    assert not bodies.learn(o3, "chat", sent, refusal(OpenAIDialect().context_error(20, 10)))
    assert not bodies.learn(o3, "chat", sent, refusal(b"<html>Bad Request</html>"))
    # OpenAI's out-of-range answer names the field too, and says what the model "supports".
    too_large = (
        "max_tokens is too large: 99999. This model supports at most 16384 completion tokens, whereas you"
        " provided 99999."
    )
    assert not bodies.learn(o3, "chat", sent, refusal(_doc({"message": too_large, "param": "max_tokens"})))
    # vLLM's context-length answer names both fields; a 503 may say anything.
    vllm = "'max_tokens' or 'max_completion_tokens' is too large: 99999. This model's maximum context length is 4096."
    assert not bodies.learn(o3, "chat", sent, refusal(_doc({"message": vllm})))
    unavailable = error_from_response(503, {}, _doc({"message": "'max_tokens' is not supported right now"}))
    assert not bodies.learn(o3, "chat", sent, unavailable)
    # Anthropic and the other APIs have one name for the cap: nothing to switch to.
    messages = bodies.body(o3, "messages")
    assert not bodies.learn(o3, "messages", messages, refusal(AnthropicDialect().parameter_error("max_tokens")))
    completions = bodies.body(o3, "completions")
    assert not bodies.learn(o3, "completions", completions, REFUSES_MAX_TOKENS)
    assert bodies.body(o3, "chat")["max_tokens"] == 16


def _doc(error: dict[str, str]) -> bytes:
    """An OpenAI error body with these fields."""
    return json.dumps({"error": {"type": "invalid_request_error", **error}}).encode()


def test_a_refusal_that_names_the_cap_only_in_its_message_counts() -> None:
    # Servers that copy OpenAI's message but leave `param` out (Azure's short error shape, proxies).
    message = (
        "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
    )
    body = AzureOpenAIDialect().error_body(400, message)
    bodies, azure = ProbeBodies(), backend("azure", "http://azure.example")
    assert bodies.learn(azure, "chat", bodies.body(azure, "chat"), refusal(body))
    assert "max_completion_tokens" in bodies.body(azure, "chat")


def test_what_was_learnt_follows_the_server_across_route_updates() -> None:
    before = runtime(("o3", "http://o3.example/v1"), ("other", "http://other.example/v1"))
    o3 = before.by_name["o3"].spec
    assert before.probe_bodies.learn(o3, "chat", before.probe_bodies.body(o3, "chat"), REFUSES_MAX_TOKENS)
    # The same server under the same name, another backend added: still renamed.
    kept = runtime(("o3", "http://o3.example/v1"), ("new", "http://new.example/v1"), previous=before)
    assert "max_completion_tokens" in kept.probe_bodies.body(kept.by_name["o3"].spec, "chat")
    # The name now points at another server (a vLLM in its place): it starts again from max_tokens.
    swapped = runtime(("o3", "http://vllm.example/v1"), previous=kept)
    assert "max_tokens" in swapped.probe_bodies.body(swapped.by_name["o3"].spec, "chat")
    # And the first server, back under the name, is not remembered: it was forgotten when it left the route.
    back = runtime(("o3", "http://o3.example/v1"), previous=swapped)
    assert "max_tokens" in back.probe_bodies.body(back.by_name["o3"].spec, "chat")
