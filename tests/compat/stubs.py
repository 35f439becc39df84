"""gRPC stubs built at test time from upstream Orisun's protos (tests/compat/protos/).

Upstream's client protos are ``package eventstore`` in a file named ``eventstore.proto``, like
Orisun's own (``orisun._proto``), which protobuf registers in its default descriptor pool when it
is imported: generating and importing upstream's code normally would clash with it. So each set
of protos is compiled by grpc_tools' protoc into a FileDescriptorSet (``--include_imports``) and
loaded into a private ``DescriptorPool``; message classes come from that pool, and callables are
made on the RPC paths of its service descriptors, with those classes as (de)serializers. What
goes over the wire is then exactly what upstream's generated clients send and expect.
"""

from __future__ import annotations

import importlib.resources
import tempfile
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

PROTOS = Path(__file__).resolve().parent / "protos"


def compile_descriptor_set(include: Path, files: list[str]) -> descriptor_pb2.FileDescriptorSet:
    """``files`` (relative to ``include``) and everything they import, compiled by grpc_tools' protoc."""
    from grpc_tools import protoc  # a test dependency (grpcio-tools), not the server's

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="orisun-compat-") as tmp:
        out = Path(tmp) / "descriptors.pb"
        status = protoc.main(["grpc_tools.protoc", f"-I{include}", f"-I{well_known}",
                              f"--descriptor_set_out={out}", "--include_imports", *files])
        if status != 0:
            raise RuntimeError(f"protoc failed ({status}) on {files} in {include}")
        descriptors = descriptor_pb2.FileDescriptorSet()
        descriptors.ParseFromString(out.read_bytes())
    return descriptors


class Protos:
    """One set of upstream's protos, in a descriptor pool of its own."""

    def __init__(self, folder: str, files: list[str]) -> None:
        self.folder = folder
        self.pool = descriptor_pool.DescriptorPool()
        # --include_imports lists every file after the files it imports: they load in order.
        for file in compile_descriptor_set(PROTOS / folder, files).file:
            self.pool.Add(file)

    def message(self, full_name: str) -> type[Message]:
        """The message class of ``full_name`` (e.g. ``eventstore.SaveEventsRequest``)."""
        cls: type[Message] = message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))
        return cls

    def service(self, full_name: str) -> ServiceDescriptor:
        return self.pool.FindServiceByName(full_name)

    def stub(self, channel: grpc.Channel, service: str) -> Stub:
        return Stub(self, channel, self.service(service))


class Stub:
    """Callables for every RPC of a service, by RPC name, as a generated stub has them."""

    def __init__(self, protos: Protos, channel: grpc.Channel, service: ServiceDescriptor) -> None:
        self.service = service
        self._methods: dict[str, Any] = {}
        for method in service.methods:
            self._methods[method.name] = _callable(protos, channel, service, method)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._methods[name]
        except KeyError:
            raise AttributeError(f"{self.service.full_name} has no RPC {name}") from None

    @property
    def rpcs(self) -> set[str]:
        return set(self._methods)


def _callable(protos: Protos, channel: grpc.Channel, service: ServiceDescriptor, method: MethodDescriptor) -> Any:
    request = protos.message(method.input_type.full_name)
    response = protos.message(method.output_type.full_name)
    path = f"/{service.full_name}/{method.name}"
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
        (method.client_streaming, method.server_streaming)]
    return kind(path, request_serializer=request.SerializeToString, response_deserializer=response.FromString)


def node_client() -> Protos:
    """OrisunLabs/orisun-node-client at df80552: the last release of the stream/version API."""
    return Protos("node-client-df80552", ["eventstore.proto"])


def java_client() -> Protos:
    """oexza/Orisun at 4c0ec17, clients/java: pub/sub data as bytes."""
    return Protos("java-client-4c0ec17", ["eventstore.proto"])


def upstream_head() -> Protos:
    """The node client's HEAD: ``orisun.Admin`` (admin.proto) and ``orisun.EventStore``
    (eventstore.proto, which admin.proto imports under that name)."""
    return Protos("upstream-head", ["admin.proto", "eventstore.proto"])
