"""The LLMRoute model shared by sidecar and operator: schema, parsing, validation and compilation."""

from .durations import format_duration, parse_duration
from .parse import Problem, RouteInvalid, parse_document, parse_spec
from .spec import (
    Api,
    Backend,
    OutlierDetection,
    Price,
    Priority,
    PriorityPolicy,
    RetryPolicy,
    Route,
    SecretRef,
    SecretValue,
    Strategy,
    Weights,
)
from .table import (
    EMPTY_TABLE,
    CaResolver,
    CompileResult,
    KeyResolver,
    RoutingTable,
    compile_table,
    resolve_keys,
    route_spec,
    table_version,
)

__all__ = [
    "EMPTY_TABLE",
    "Api",
    "Backend",
    "CaResolver",
    "CompileResult",
    "KeyResolver",
    "OutlierDetection",
    "Price",
    "Priority",
    "PriorityPolicy",
    "Problem",
    "RetryPolicy",
    "Route",
    "RouteInvalid",
    "RoutingTable",
    "SecretRef",
    "SecretValue",
    "Strategy",
    "Weights",
    "compile_table",
    "format_duration",
    "parse_document",
    "parse_duration",
    "parse_spec",
    "resolve_keys",
    "route_spec",
    "table_version",
]
