"""The shadow probe's body per backend: `max_tokens` until a backend names it as unsupported."""

from __future__ import annotations

from llmroute.sidecar.probebody import ProbeBodies
from llmroute.sidecar.upstream.errors import UpstreamError, error_from_response
from llmroute.sim.anthropic_wire import AnthropicDialect
from llmroute.sim.openai_wire import AzureOpenAIDialect, OpenAIDialect


def refusal(body: bytes) -> UpstreamError:
    return error_from_response(400, {}, body)


def test_a_chat_probe_caps_the_output_with_max_tokens_until_a_backend_refuses_it() -> None:
    bodies = ProbeBodies()
    assert bodies.body("o3", "chat")["max_tokens"] == 16
    assert bodies.learn("o3", "chat", refusal(OpenAIDialect().parameter_error("max_tokens")))
    renamed = bodies.body("o3", "chat")
    assert renamed["max_completion_tokens"] == 16 and "max_tokens" not in renamed
    assert bodies.body("gpt4o", "chat")["max_tokens"] == 16  # other backends keep the usual cap
    # A refusal after the switch is news of another kind: the prober pauses as for any bad request.
    assert not bodies.learn("o3", "chat", refusal(OpenAIDialect().parameter_error("max_completion_tokens")))


def test_each_body_is_a_copy_the_caller_may_change() -> None:
    bodies = ProbeBodies()
    bodies.body("a", "chat")["stream"] = True
    assert "stream" not in bodies.body("a", "chat")


def test_only_a_refusal_of_the_cap_changes_the_body() -> None:
    bodies = ProbeBodies()
    assert not bodies.learn("a", "chat", refusal(OpenAIDialect().parameter_error("temperature")))
    assert not bodies.learn("a", "chat", refusal(OpenAIDialect().context_error(20, 10)))
    assert not bodies.learn("a", "chat", refusal(b"<html>Bad Request</html>"))
    # Anthropic and the other APIs have one name for the cap: nothing to switch to.
    assert not bodies.learn("a", "messages", refusal(AnthropicDialect().parameter_error("max_tokens")))
    assert not bodies.learn("a", "completions", refusal(OpenAIDialect().parameter_error("max_tokens")))
    assert bodies.body("a", "chat")["max_tokens"] == 16


def test_a_refusal_that_names_the_other_cap_only_in_its_message_counts() -> None:
    # Servers that copy OpenAI's message but leave `param` out (Azure's short error shape, proxies).
    body = AzureOpenAIDialect().error_body(400, "Use 'max_completion_tokens' instead of 'max_tokens'.")
    bodies = ProbeBodies()
    assert bodies.learn("azure", "chat", refusal(body))
    assert "max_completion_tokens" in bodies.body("azure", "chat")
