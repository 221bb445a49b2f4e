"""Splicing a continuation into a stream the app is reading, one class per inbound API that can be continued.

A splice notes every event the app receives (the text, the ids, whether anything but text was sent). After a
resume it rewrites the continuation's events, already in the app's API, into the original stream, and notes
them as the app gets them: the app's ids and numbering, no second opening, the broken-off text block or item
going on, and a usage that adds up what every attempt was billed (the interrupted attempts' prompts and
delivered text, estimated where their usage never came, plus the continuation's own). Since what it notes is
the app's stream, a continuation that breaks off in turn is resumed from there like the original.
"""

from __future__ import annotations

import json
from typing import Any

from llmroute.model import Backend


class Splice:
    """What the app has been sent of one stream in its API's events, and how to write a continuation's
    events into it. One subclass per API that can be continued."""

    asks_natively = True
    """Whether the API itself can ask a backend to continue a partial answer (`body`); if not, a continuation
    goes through the chat translation, also on a backend that serves the API natively."""

    def __init__(self) -> None:
        self.text: list[str] = []
        """The answer's text the app has received so far."""
        self.stuck = False
        """Something other than text was sent (tool calls, thinking): no continuation can carry it on."""
        self.before = 0
        """Output tokens the interrupted attempts were billed (estimated from the text they delivered)."""
        self.prompts = 0
        """Input tokens the interrupted attempts were billed (as reported, or estimated)."""
        self.reported_in: int | None = None
        """The current attempt's prompt tokens when its stream reported them before it ended (Messages)."""
        self.resumed = False
        self.trim = False
        """The prefill lost trailing white space: drop it from the start of the continuation's text."""

    def resume(self, *, trim: bool) -> None:
        """A continuation starts: from now on (until the next resume) its events go on from what the app has.
        `trim`: its prefill lost trailing white space (see `trim`)."""
        self.resumed = True
        self.reported_in = None
        self.trim = trim

    @property
    def sequence(self) -> int:
        """The next event number the app expects (0 for APIs that do not number their events)."""
        return 0

    def body(self, body: dict[str, Any], text: str, backend: Backend) -> dict[str, Any] | None:
        """The request in this API asking `backend` (which serves it natively) to continue `text`; None when
        the API cannot ask that."""
        raise NotImplementedError

    def relay(self, data: bytes) -> bytes:
        """Note what `data` (whole SSE events) tells the app; after a resume, the events rewritten into the
        original stream."""
        raise NotImplementedError

    def _lstrip(self, text: str) -> str:
        """The continuation's text without the white space the app already has (see `trim`)."""
        if not self.trim:
            return text
        text = text.lstrip()
        self.trim = not text
        return text


def chat_prefill(body: dict[str, Any], text: str, backend: Backend) -> dict[str, Any]:
    """The chat request that asks `backend` to continue `text`, in the way its provider takes a prefill:
    Anthropic's final assistant turn (no trailing white space), vLLM's `continue_final_message`, DeepSeek's
    and Mistral's `prefix: true`."""
    final: dict[str, Any] = {"role": "assistant", "content": text}
    request = {**body, "messages": [*body["messages"], final]}
    if backend.provider == "anthropic":
        final["content"] = text.rstrip()  # Anthropic refuses a prefill ending in white space
    elif backend.self_hosted:
        request["continue_final_message"] = True  # vLLM
        request["add_generation_prompt"] = False
    else:
        final["prefix"] = True  # DeepSeek, Mistral
    return request


class ChatSplice(Splice):
    """Chat completion chunks: after a resume, the continuation's chunks under the original id and model,
    without its second role chunk."""

    def __init__(self) -> None:
        super().__init__()
        self._id: Any = None
        self._model: Any = None

    def body(self, body: dict[str, Any], text: str, backend: Backend) -> dict[str, Any]:
        return chat_prefill(body, text, backend)

    def relay(self, data: bytes) -> bytes:
        if not data:
            return data
        out: list[bytes] = []
        for event in data.split(b"\n\n"):
            if not event.startswith(b"data: {"):
                if event:
                    out.append(event + b"\n\n")
                continue
            chunk = json.loads(event[6:])
            choices = chunk.get("choices") or []
            delta = (choices[0].get("delta") or {}) if choices else {}
            if self._id is None:
                self._id, self._model = chunk.get("id"), chunk.get("model")
            if delta.get("tool_calls"):
                self.stuck = True
            if isinstance(delta.get("content"), str):
                if self.resumed:
                    delta["content"] = self._lstrip(delta["content"])
                self.text.append(delta["content"])
            if not self.resumed:
                out.append(event + b"\n\n")
                continue
            opening = set(delta) <= {"role", "content"} and not delta.get("content")
            if choices and opening and not choices[0].get("finish_reason"):
                continue  # the continuation's own opening: the app already has one
            chunk["id"], chunk["model"] = self._id, self._model
            usage = chunk.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                usage["prompt_tokens"] = usage.get("prompt_tokens", 0) + self.prompts
                usage["completion_tokens"] += self.before
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            out.append(b"data: " + _dump(chunk) + b"\n\n")
        return b"".join(out)


class _Named(Splice):
    """A splice of an API with named SSE events (Messages, Responses): before a resume each event is noted and
    goes out as it came; after it, each is rewritten into the original stream (and noted as the app gets it),
    or dropped."""

    def relay(self, data: bytes) -> bytes:
        if not data:
            return data
        out: list[bytes] = []
        for event in data.split(b"\n\n"):
            if not event:
                continue
            kind, doc = named_event(event)
            if doc is None:
                out.append(event + b"\n\n")
            elif not self.resumed:
                self._note(kind, doc)
                out.append(event + b"\n\n")
            elif self._rewrite(kind, doc):
                self._note(kind, doc)
                out.append(_event(kind, doc))
        return b"".join(out)

    def _note(self, kind: str, doc: dict[str, Any]) -> None:
        """Record what the event, as the app gets it, tells the app."""
        raise NotImplementedError

    def _rewrite(self, kind: str, doc: dict[str, Any]) -> bool:
        """After a resume: rewrite the continuation's event (in place) as the original stream's; False drops it.
        What it tells the app is then noted by `_note`."""
        raise NotImplementedError


class MessagesSplice(_Named):
    """Anthropic Messages events. After a resume the continuation's message_start is dropped (the app has
    one), its first text block becomes the block that broke off (its start dropped, its index mapped), its
    later blocks are numbered on, and its message_delta reports the whole answer's tokens."""

    def __init__(self) -> None:
        super().__init__()
        self._open: int | None = None  # the index of the block the app has seen start but not stop
        self._next = 0  # the index the next new block gets in the app's stream
        self._offset = 0  # continuation block i is the app's block i + offset

    def body(self, body: dict[str, Any], text: str, backend: Backend) -> dict[str, Any] | None:
        """The Messages request with `text` as the final assistant turn (after the app's own prefill, if any),
        without trailing white space, which Anthropic refuses in a prefill."""
        messages = list(body["messages"])
        last = messages[-1] if messages else None
        if isinstance(last, dict) and last.get("role") == "assistant":
            prefill = _plain_text(last.get("content"))
            if prefill is None:
                return None  # the app's own final turn is not plain text: nothing to append to
            messages.pop()
            text = prefill + text
        return {**body, "messages": [*messages, {"role": "assistant", "content": text.rstrip()}]}

    def _note(self, kind: str, doc: dict[str, Any]) -> None:
        index = doc.get("index")
        if kind == "message_start":
            self.reported_in = _input_tokens(doc.get("message"))
        elif kind == "content_block_start" and isinstance(index, int):
            if (doc.get("content_block") or {}).get("type") != "text":
                self.stuck = True
            self._open, self._next = index, index + 1
        elif kind == "content_block_stop":
            self._open = None
        elif kind == "content_block_delta":
            delta = doc.get("delta") or {}
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                self.text.append(delta["text"])
            else:
                self.stuck = True

    def _rewrite(self, kind: str, doc: dict[str, Any]) -> bool:
        if kind == "message_start":
            self._offset = self._open if self._open is not None else self._next
            self.reported_in = _input_tokens(doc.get("message"))
            return False
        index = doc.get("index")
        if isinstance(index, int):
            if kind == "content_block_start" and index == 0 and self._open is not None:
                return False  # it goes on in the block that broke off
            doc["index"] = index + self._offset
            delta = doc.get("delta") or {}
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                delta["text"] = self._lstrip(delta["text"])
            return True
        usage = doc.get("usage")
        if kind == "message_delta" and isinstance(usage, dict):
            if isinstance(usage.get("output_tokens"), int):
                usage["output_tokens"] += self.before
            own = usage.get("input_tokens") or self.reported_in or 0  # a translated message_start says 0
            usage["input_tokens"] = own + self.prompts
        return True


class ResponsesSplice(_Named):
    """Responses API events. The API cannot ask a backend to continue a partial answer, so `body` has none:
    a continuation goes through the chat translation, whose events arrive here in the Responses shape. After
    a resume its response.created and .in_progress are dropped, its message item continues the app's open
    item and content part (their .added dropped, their .done events and the final response carrying the
    whole text), its other items are numbered on after the app's, every event is numbered on from the app's
    last sequence_number, and response.completed names the app's response, lists the app's finished items
    before the continuation's, and adds up usage."""

    asks_natively = False

    def __init__(self) -> None:
        super().__init__()
        # The app's stream, as it has received it:
        self._sequence = 0  # the next sequence_number the app expects
        self._response: dict[str, Any] = {}  # the app's response.created snapshot
        self._items: list[dict[str, Any]] = []  # the app's finished output items
        self._open: dict[str, Any] | None = None  # the app's message item being streamed: id, index, part, text
        self._count = 0  # output items the app has seen added
        # The current continuation, from its resume:
        self._from: dict[str, Any] | None = None  # the app's open item when it began (text: the open part's)
        self._kept: list[dict[str, Any]] = []  # the app's items finished when it began
        self._map: dict[str, Any] | None = None  # its item that continues the open one: id
        self._indexes: dict[Any, int] = {}  # its output_index -> the app's

    @property
    def sequence(self) -> int:
        return self._sequence

    def body(self, body: dict[str, Any], text: str, backend: Backend) -> None:
        """None: the Responses API has no way to ask for a continuation (the chat translation does)."""
        return None

    def resume(self, *, trim: bool) -> None:
        super().resume(trim=trim)
        opened = self._open
        self._from = None if opened is None else {**opened, "text": "".join(opened["text"]), "done": [*opened["done"]]}
        self._kept = [*self._items]
        self._map = None
        self._indexes = {}

    def _rewrite(self, kind: str, doc: dict[str, Any]) -> bool:
        """After a resume: the continuation's event as the original stream's, numbered on (False: dropped)."""
        if not self._map_event(kind, doc):
            return False
        doc["sequence_number"] = self._sequence
        self._sequence += 1
        return True

    def _note(self, kind: str, doc: dict[str, Any]) -> None:
        if isinstance(doc.get("sequence_number"), int):
            self._sequence = doc["sequence_number"] + 1
        if kind == "response.created" and isinstance(doc.get("response"), dict):
            self._response = doc["response"]
        elif kind == "response.output_item.added":
            item = doc.get("item") or {}
            if item.get("type") != "message":
                self.stuck = True
            self._count += 1
            self._open = {"id": item.get("id"), "index": doc.get("output_index"), "part": None, "text": [], "done": []}
        elif kind == "response.content_part.added" and self._open is not None:
            if (doc.get("part") or {}).get("type") != "output_text":
                self.stuck = True
            self._open["part"], self._open["text"] = doc.get("content_index"), []
        elif kind == "response.output_text.delta" and isinstance(doc.get("delta"), str):
            self.text.append(doc["delta"])
            if self._open is not None:
                self._open["text"].append(doc["delta"])
        elif kind == "response.content_part.done" and self._open is not None:
            self._open["part"] = None
            self._open["done"].append(doc.get("part") or {})
        elif kind == "response.output_item.done":
            self._items.append(doc.get("item") or {})
            self._open = None
        elif kind.endswith(".delta") or kind.startswith("response.reasoning"):
            self.stuck = True  # refusals, function call arguments, reasoning: not text a prefill carries

    def _map_event(self, kind: str, doc: dict[str, Any]) -> bool:
        """The continuation's event in the original stream's ids and indexes, with the whole text (False:
        dropped)."""
        if kind in ("response.created", "response.in_progress"):
            return False
        opened = self._from
        index = doc.get("output_index")
        if kind == "response.output_item.added":
            item = doc.get("item") or {}
            if opened is not None and self._map is None and item.get("type") == "message":
                self._map = {"id": item.get("id")}
                self._indexes[index] = opened["index"]
                return False  # it goes on in the app's open item
            self._indexes[index] = doc["output_index"] = self._count
            return True
        if index in self._indexes:
            doc["output_index"] = self._indexes[index]
        if opened is not None and self._map is not None and doc.get("item_id") == self._map["id"]:
            doc["item_id"] = opened["id"]
            continuing = opened["part"] is not None  # the app's content part is open: the text goes on in it
            part = doc.get("content_index")
            if kind == "response.content_part.added" and continuing and part == 0:
                return False
            if isinstance(part, int):
                doc["content_index"] = (opened["part"] if continuing else len(opened["done"])) + part
            prefix = opened["text"] if continuing and part == 0 else ""
            if kind == "response.output_text.delta" and isinstance(doc.get("delta"), str):
                doc["delta"] = self._lstrip(doc["delta"])
            elif kind == "response.output_text.done":
                doc["text"] = prefix + str(doc.get("text", ""))
            elif kind == "response.content_part.done":
                doc["part"] = {**(doc.get("part") or {}), "text": prefix + str((doc.get("part") or {}).get("text", ""))}
        if kind == "response.output_item.done":
            doc["item"] = self._item(doc.get("item") or {})
        elif kind in ("response.completed", "response.incomplete") and isinstance(doc.get("response"), dict):
            doc["response"] = self._final(doc["response"])
        return True

    def _item(self, item: dict[str, Any]) -> dict[str, Any]:
        """A finished continuation item as the app's: the item that continued the open one under its id,
        with the whole text."""
        opened = self._from
        if opened is None or self._map is None or item.get("id") != self._map["id"]:
            return item
        content = [dict(part) for part in item.get("content") or ()]
        if opened["part"] is not None and content and content[0].get("type") == "output_text":
            content[0]["text"] = opened["text"] + str(content[0].get("text", ""))
        return {**item, "id": opened["id"], "content": [*opened["done"], *content]}

    def _final(self, response: dict[str, Any]) -> dict[str, Any]:
        """The continuation's final response as the app's: its id, creation time and model, the app's items
        finished before the continuation then the continuation's (rewritten), usage added up over the
        attempts."""
        output = [*self._kept, *(self._item(item) for item in response.get("output") or ())]
        final = {**response, "output": output}
        for name in ("id", "created_at", "model"):
            if name in self._response:
                final[name] = self._response[name]
        usage = response.get("usage")
        if isinstance(usage, dict):
            usage = {**usage}
            usage["input_tokens"] = int(usage.get("input_tokens") or 0) + self.prompts
            usage["output_tokens"] = int(usage.get("output_tokens") or 0) + self.before
            usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
            final["usage"] = usage
        return final


def _plain_text(content: Any) -> str | None:
    """The text of a message's content when it is only text (a string, or text blocks); else None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        return "".join(str(b.get("text", "")) for b in content)
    return None


def _input_tokens(message: Any) -> int | None:
    """message_start's input tokens when it reported some (a stream translated from chat says 0)."""
    usage = message.get("usage") if isinstance(message, dict) else None
    count = usage.get("input_tokens") if isinstance(usage, dict) else None
    return count if isinstance(count, int) and count > 0 else None


def named_event(event: bytes) -> tuple[str, dict[str, Any] | None]:
    """An SSE event's name and JSON data (None when it has no JSON object)."""
    kind, data = "", []
    for line in event.split(b"\n"):
        if line.startswith(b"event: "):
            kind = line[7:].decode()
        elif line.startswith(b"data: "):
            data.append(line[6:])
    try:
        doc = json.loads(b"\n".join(data)) if data else None
    except ValueError:
        return kind, None
    if not isinstance(doc, dict):
        return kind, None
    return str(doc.get("type") or kind), doc


def _event(kind: str, doc: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _dump(doc) + b"\n\n"


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()
