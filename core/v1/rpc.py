"""Typed gRPC bindings of the llmroute.v1 services, built from the generated descriptors.

grpcio-tools' `*_pb2_grpc.py` modules are untyped; these few lines give the operator and the sidecar
the same method paths and (de)serializers with types mypy can check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from . import load_pb2, routes_pb2

ROUTE_DISCOVERY = routes_pb2.DESCRIPTOR.services_by_name["RouteDiscovery"].full_name
LOAD_REPORTING = load_pb2.DESCRIPTOR.services_by_name["LoadReporting"].full_name
STREAM_ROUTES = f"/{ROUTE_DISCOVERY}/StreamRoutes"
STREAM_LOAD = f"/{LOAD_REPORTING}/StreamLoad"
TYPE_ROUTES = "type.llmroute.io/llmroute.v1.RoutingTable"
"""RouteRequest/RouteResponse type_url of the routing table (an empty type_url means the same)."""
TYPE_POLICIES = "type.llmroute.io/llmroute.v1.PolicySet"
"""RouteRequest/RouteResponse type_url of the policies that apply to a sidecar."""

RoutesHandler = Callable[[AsyncIterator[routes_pb2.RouteRequest], grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]
LoadHandler = Callable[[AsyncIterator[load_pb2.LoadReport], grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]


def _route_response(response: routes_pb2.RouteResponse | bytes) -> bytes:
    """A RouteResponse on the wire; the control plane may hand it over already serialized."""
    return response if isinstance(response, bytes) else response.SerializeToString()


def add_services(server: grpc.aio.Server, stream_routes: RoutesHandler, stream_load: LoadHandler) -> None:
    """Register both services' handlers (each reads and writes through its context) on `server`."""
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                ROUTE_DISCOVERY,
                {
                    "StreamRoutes": grpc.stream_stream_rpc_method_handler(
                        stream_routes,
                        request_deserializer=routes_pb2.RouteRequest.FromString,
                        response_serializer=_route_response,
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                LOAD_REPORTING,
                {
                    "StreamLoad": grpc.stream_stream_rpc_method_handler(
                        stream_load,
                        request_deserializer=load_pb2.LoadReport.FromString,
                        response_serializer=load_pb2.LoadDirective.SerializeToString,
                    )
                },
            ),
        )
    )


def stream_routes(
    channel: grpc.aio.Channel,
) -> grpc.aio.StreamStreamMultiCallable[routes_pb2.RouteRequest, routes_pb2.RouteResponse]:
    """The StreamRoutes call of RouteDiscovery on `channel`."""
    return channel.stream_stream(
        STREAM_ROUTES,
        request_serializer=routes_pb2.RouteRequest.SerializeToString,
        response_deserializer=routes_pb2.RouteResponse.FromString,
    )


def stream_load(
    channel: grpc.aio.Channel,
) -> grpc.aio.StreamStreamMultiCallable[load_pb2.LoadReport, load_pb2.LoadDirective]:
    """The StreamLoad call of LoadReporting on `channel`."""
    return channel.stream_stream(
        STREAM_LOAD,
        request_serializer=load_pb2.LoadReport.SerializeToString,
        response_deserializer=load_pb2.LoadDirective.FromString,
    )
