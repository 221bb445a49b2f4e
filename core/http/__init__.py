"""A small, fast HTTP/1.1 server on asyncio and httptools, shared by the sidecar and the simulators."""

from llmroute.http.body import BodyError, BodyStream
from llmroute.http.loop import run
from llmroute.http.messages import Handler, Request, Response, StreamingResponse
from llmroute.http.server import HTTPServer

__all__ = ["BodyError", "BodyStream", "HTTPServer", "Handler", "Request", "Response", "StreamingResponse", "run"]
