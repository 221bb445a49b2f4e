# Generated from protos/llmroute/v1/routes.proto by `python -m llmroute.v1.generate`; do not edit.
# mypy: disable-error-code="type-arg"
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Node(_message.Message):
    __slots__ = ("pod", "namespace", "labels", "sidecar_version")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    POD_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SIDECAR_VERSION_FIELD_NUMBER: _ClassVar[int]
    pod: str
    namespace: str
    labels: _containers.ScalarMap[str, str]
    sidecar_version: str
    def __init__(self, pod: _Optional[str] = ..., namespace: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., sidecar_version: _Optional[str] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("node", "version_info", "response_nonce", "error_detail", "type_url")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_INFO_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_NONCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    node: Node
    version_info: str
    response_nonce: str
    error_detail: str
    type_url: str
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., version_info: _Optional[str] = ..., response_nonce: _Optional[str] = ..., error_detail: _Optional[str] = ..., type_url: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("namespace", "name", "generation", "spec_json", "api_keys", "ca_bundles")
    class ApiKeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class CaBundlesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    CA_BUNDLES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    generation: int
    spec_json: str
    api_keys: _containers.ScalarMap[str, str]
    ca_bundles: _containers.ScalarMap[str, str]
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., generation: _Optional[int] = ..., spec_json: _Optional[str] = ..., api_keys: _Optional[_Mapping[str, str]] = ..., ca_bundles: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RoutingTable(_message.Message):
    __slots__ = ("routes",)
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    def __init__(self, routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("namespace", "name", "generation", "spec_json")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    generation: int
    spec_json: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., generation: _Optional[int] = ..., spec_json: _Optional[str] = ...) -> None: ...

class PolicySet(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    def __init__(self, policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("version_info", "nonce", "table", "type_url", "policies")
    VERSION_INFO_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    version_info: str
    nonce: str
    table: RoutingTable
    type_url: str
    policies: PolicySet
    def __init__(self, version_info: _Optional[str] = ..., nonce: _Optional[str] = ..., table: _Optional[_Union[RoutingTable, _Mapping]] = ..., type_url: _Optional[str] = ..., policies: _Optional[_Union[PolicySet, _Mapping]] = ...) -> None: ...
