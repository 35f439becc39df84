"""Why a request body is not a valid protobuf message, told by field (only after parsing failed).

The protobuf parser says only "String field had bad UTF-8" or "Wire format was corrupt". A client
needs to know which field: ``explain`` walks the wire format of the body again, guided by the
message's descriptor, and names the first problem it finds with a path such as
``events[2].data``. It runs only on the failure path, so it costs nothing on good requests, and it
stops after a bounded number of fields so that a large hostile body costs little even then.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

# Fields looked at before giving up naming the problem (a 4 MiB body holds up to ~2M fields).
MAX_STEPS = 200_000
# protobuf's own recursion limit: deeper bodies are invalid anyway.
MAX_DEPTH = 100

MAX_FIELD_NUMBER = 2**29 - 1

_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = range(6)


class _Problem(Exception):
    """The first problem found; its text is the explanation."""


class _GiveUp(Exception):
    """Too much to walk: name no field."""


class _Walker:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.steps = 0

    def varint(self, pos: int, end: int, what: str) -> tuple[int, int]:
        value = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise _Problem(f"{what} is cut short" if pos >= end else f"{what}: a number is too long")
            byte = self.data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos

    def message(self, descriptor: Descriptor | None, start: int, end: int, path: str, depth: int) -> None:
        """Walk the fields in data[start:end] of a message (``descriptor`` None: unknown, or a group)."""
        if depth > MAX_DEPTH:
            raise _Problem(f"{path or 'the request'} is nested too deeply")
        seen: dict[int, int] = {}
        pos = start
        while pos < end:
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise _GiveUp
            tag, pos = self.varint(pos, end, f"a field tag in {path}" if path else "a field tag")
            number, wire = tag >> 3, tag & 7
            if number == 0 or number > MAX_FIELD_NUMBER:
                problem = f"field number {number} is not allowed"
                raise _Problem(f"{path}: {problem}" if path else problem)
            field = descriptor.fields_by_number.get(number) if descriptor is not None else None
            name = self._name(path, number, field, seen)
            if wire == _VARINT:
                _, pos = self.varint(pos, end, name)
            elif wire in (_FIXED64, _FIXED32):
                pos += 8 if wire == _FIXED64 else 4
                if pos > end:
                    raise _Problem(f"{name} is cut short")
            elif wire == _LENGTH:
                length, pos = self.varint(pos, end, name)
                if length > end - pos:
                    raise _Problem(f"{name} is cut short")
                if field is not None:
                    self.value(field, pos, pos + length, name, depth)
                pos += length
            elif wire == _START_GROUP:
                pos = self.group(number, pos, end, name, depth)
            elif wire == _END_GROUP:
                where = f" in {path}" if path else ""
                raise _Problem(f"end of group {number}{where} without its start")
            else:
                raise _Problem(f"{name}: invalid wire type {wire}")

    def group(self, number: int, pos: int, end: int, name: str, depth: int) -> int:
        """Skip a (deprecated) group up to its end tag; the position after it."""
        if depth > MAX_DEPTH:
            raise _Problem(f"{name} is nested too deeply")
        while True:
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise _GiveUp
            if pos >= end:
                raise _Problem(f"{name} is cut short")
            tag, after = self.varint(pos, end, name)
            if tag == (number << 3 | _END_GROUP):
                return after
            # One field of the group: walk it as a one-field message up to the next tag.
            inner, wire = tag >> 3, tag & 7
            if inner == 0 or inner > MAX_FIELD_NUMBER:
                raise _Problem(f"{name}: field number {inner} is not allowed")
            if wire == _VARINT:
                _, pos = self.varint(after, end, name)
            elif wire in (_FIXED64, _FIXED32):
                pos = after + (8 if wire == _FIXED64 else 4)
                if pos > end:
                    raise _Problem(f"{name} is cut short")
            elif wire == _LENGTH:
                length, after = self.varint(after, end, name)
                if length > end - after:
                    raise _Problem(f"{name} is cut short")
                pos = after + length
            elif wire == _START_GROUP:
                pos = self.group(inner, after, end, name, depth + 1)
            else:
                raise _Problem(f"{name}: invalid wire type {wire}" if wire != _END_GROUP
                               else f"{name}: a group ends that did not start")

    def value(self, field: FieldDescriptor, start: int, end: int, name: str, depth: int) -> None:
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                self.data[start:end].decode("utf-8")
            except UnicodeDecodeError:
                raise _Problem(f"{name} is not valid UTF-8") from None
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            self.message(field.message_type, start, end, name, depth + 1)
        # Packed numbers and bytes: nothing the parser rejects that a client could act on.

    @staticmethod
    def _name(path: str, number: int, field: FieldDescriptor | None, seen: dict[int, int]) -> str:
        if field is None:
            return f"field {number} of {path}" if path else f"field {number}"
        name = f"{path}.{field.name}" if path else field.name
        if field.is_repeated:
            index = seen.get(number, 0)
            seen[number] = index + 1
            name = f"{name}[{index}]"
        return name


def explain(descriptor: Descriptor, data: bytes) -> str | None:
    """The first reason ``data`` is not a valid ``descriptor`` message, naming the field; None if
    none is found (within MAX_STEPS fields)."""
    try:
        _Walker(data).message(descriptor, 0, len(data), "", 0)
    except _Problem as problem:
        return str(problem)
    except _GiveUp:
        return None
    return None
