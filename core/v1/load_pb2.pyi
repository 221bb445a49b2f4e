# Generated from protos/llmroute/v1/load.proto by `python -m llmroute.v1.generate`; do not edit.
# mypy: disable-error-code="type-arg"
from llmroute.v1 import routes_pb2 as _routes_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Quantity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUANTITY_UNSPECIFIED: _ClassVar[Quantity]
    USD: _ClassVar[Quantity]
    REQUESTS: _ClassVar[Quantity]
    TOKENS: _ClassVar[Quantity]
QUANTITY_UNSPECIFIED: Quantity
USD: Quantity
REQUESTS: Quantity
TOKENS: Quantity

class Histogram(_message.Message):
    __slots__ = ("counts", "sum_ms")
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SUM_MS_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedScalarFieldContainer[int]
    sum_ms: float
    def __init__(self, counts: _Optional[_Iterable[int]] = ..., sum_ms: _Optional[float] = ...) -> None: ...

class Failures(_message.Message):
    __slots__ = ("connect_failure", "reset", "timeout", "server_error", "rate_limited", "client_error", "auth")
    CONNECT_FAILURE_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    SERVER_ERROR_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITED_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ERROR_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    connect_failure: int
    reset: int
    timeout: int
    server_error: int
    rate_limited: int
    client_error: int
    auth: int
    def __init__(self, connect_failure: _Optional[int] = ..., reset: _Optional[int] = ..., timeout: _Optional[int] = ..., server_error: _Optional[int] = ..., rate_limited: _Optional[int] = ..., client_error: _Optional[int] = ..., auth: _Optional[int] = ...) -> None: ...

class BackendLoad(_message.Message):
    __slots__ = ("route", "backend", "requests", "successes", "failures", "in_flight", "latency", "ttft", "tokens_in", "tokens_out", "spend_usd")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    TTFT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_OUT_FIELD_NUMBER: _ClassVar[int]
    SPEND_USD_FIELD_NUMBER: _ClassVar[int]
    route: str
    backend: str
    requests: int
    successes: int
    failures: Failures
    in_flight: int
    latency: Histogram
    ttft: Histogram
    tokens_in: int
    tokens_out: int
    spend_usd: float
    def __init__(self, route: _Optional[str] = ..., backend: _Optional[str] = ..., requests: _Optional[int] = ..., successes: _Optional[int] = ..., failures: _Optional[_Union[Failures, _Mapping]] = ..., in_flight: _Optional[int] = ..., latency: _Optional[_Union[Histogram, _Mapping]] = ..., ttft: _Optional[_Union[Histogram, _Mapping]] = ..., tokens_in: _Optional[int] = ..., tokens_out: _Optional[int] = ..., spend_usd: _Optional[float] = ...) -> None: ...

class QuotaKey(_message.Message):
    __slots__ = ("namespace", "policy", "limit", "quantity")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    policy: str
    limit: str
    quantity: Quantity
    def __init__(self, namespace: _Optional[str] = ..., policy: _Optional[str] = ..., limit: _Optional[str] = ..., quantity: _Optional[_Union[Quantity, str]] = ...) -> None: ...

class QuotaUsage(_message.Message):
    __slots__ = ("key", "window_start", "used", "reserved", "demand", "rejected", "granted", "smallest_ask")
    KEY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    SMALLEST_ASK_FIELD_NUMBER: _ClassVar[int]
    key: QuotaKey
    window_start: int
    used: float
    reserved: float
    demand: float
    rejected: int
    granted: float
    smallest_ask: float
    def __init__(self, key: _Optional[_Union[QuotaKey, _Mapping]] = ..., window_start: _Optional[int] = ..., used: _Optional[float] = ..., reserved: _Optional[float] = ..., demand: _Optional[float] = ..., rejected: _Optional[int] = ..., granted: _Optional[float] = ..., smallest_ask: _Optional[float] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("node", "interval_seconds", "backends", "quotas", "grants_version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    GRANTS_VERSION_FIELD_NUMBER: _ClassVar[int]
    node: _routes_pb2.Node
    interval_seconds: float
    backends: _containers.RepeatedCompositeFieldContainer[BackendLoad]
    quotas: _containers.RepeatedCompositeFieldContainer[QuotaUsage]
    grants_version: int
    def __init__(self, node: _Optional[_Union[_routes_pb2.Node, _Mapping]] = ..., interval_seconds: _Optional[float] = ..., backends: _Optional[_Iterable[_Union[BackendLoad, _Mapping]]] = ..., quotas: _Optional[_Iterable[_Union[QuotaUsage, _Mapping]]] = ..., grants_version: _Optional[int] = ...) -> None: ...

class QuotaGrant(_message.Message):
    __slots__ = ("key", "window_start", "window_end", "granted")
    KEY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    key: QuotaKey
    window_start: int
    window_end: int
    granted: float
    def __init__(self, key: _Optional[_Union[QuotaKey, _Mapping]] = ..., window_start: _Optional[int] = ..., window_end: _Optional[int] = ..., granted: _Optional[float] = ...) -> None: ...

class LoadDirective(_message.Message):
    __slots__ = ("report_interval_seconds", "grants", "grants_version")
    REPORT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    GRANTS_VERSION_FIELD_NUMBER: _ClassVar[int]
    report_interval_seconds: float
    grants: _containers.RepeatedCompositeFieldContainer[QuotaGrant]
    grants_version: int
    def __init__(self, report_interval_seconds: _Optional[float] = ..., grants: _Optional[_Iterable[_Union[QuotaGrant, _Mapping]]] = ..., grants_version: _Optional[int] = ...) -> None: ...
