"""QuotaKey between the typed policy model and the wire: one mapping for the operator and the sidecar."""

from __future__ import annotations

from llmroute.model.policy import Quantity, QuotaKey

from . import load_pb2

_QUANTITY: dict[Quantity, load_pb2.Quantity] = {
    "usd": load_pb2.USD,
    "requests": load_pb2.REQUESTS,
    "tokens": load_pb2.TOKENS,
}
_FROM_WIRE: dict[int, Quantity] = {number: name for name, number in _QUANTITY.items()}


def key_message(key: QuotaKey) -> load_pb2.QuotaKey:
    """A QuotaKey on the wire."""
    return load_pb2.QuotaKey(
        namespace=key.namespace, policy=key.policy, limit=key.limit, quantity=_QUANTITY[key.quantity]
    )


def key_of(message: load_pb2.QuotaKey) -> QuotaKey | None:
    """A QuotaKey from the wire (None for a quantity this build does not know, a newer peer's)."""
    quantity = _FROM_WIRE.get(message.quantity)
    if quantity is None:
        return None
    return QuotaKey(message.namespace, message.policy, message.limit, quantity)
