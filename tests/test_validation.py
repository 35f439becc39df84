"""The JSON syntax check of SaveEvents' data and metadata, with its one shared decoder."""

from __future__ import annotations

import json

import pytest

from orisun.errors import InvalidArgument
from orisun.service.validation import _json, _reject_constant


@pytest.mark.parametrize("text", ["{}", " [1, 2.5e300, 99999999999999999999999] ", '"x"', "null", "\ufeff{}", "[1,",
                                  "{} x", "NaN", "-Infinity", "{\"a\": Infinity}", "", "'a'"])
def test_the_check_answers_as_json_loads_with_its_arguments_did(text: str) -> None:
    try:
        json.loads(text, parse_constant=_reject_constant, parse_int=str, parse_float=str)
        expected = None
    except ValueError as exc:
        expected = f"data: must be JSON text ({exc})"
    if expected is None:
        _json("data", text)
    else:
        with pytest.raises(InvalidArgument) as raised:
            _json("data", text)
        assert expected in str(raised.value)
