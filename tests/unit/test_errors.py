"""One-line messages from pydantic's validation errors (every config, spec and request model uses it)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError, model_validator

from slotune.errors import validation_message


class _Spec(BaseModel):
    rate: float
    count: int

    @model_validator(mode="after")
    def _consistent(self) -> _Spec:
        if self.count < self.rate:
            raise ValueError("count must be at least the rate")
        return self


def _errors(**kw: object) -> list:
    with pytest.raises(ValidationError) as exc:
        _Spec(**kw)
    return exc.value.errors()


def test_first_error_where_and_what_then_how_many_more() -> None:
    errors = _errors(rate="fast", count="many")
    assert validation_message(errors) == "rate: Input should be a valid number, unable to parse string as a number" \
        " (and 1 more)"
    assert validation_message(errors, limit=2).count(";") == 1 and "(and" not in validation_message(errors, limit=2)


def test_model_level_error_says_top_level_without_pydantics_prefix() -> None:
    assert validation_message(_errors(rate=5, count=1)) == "(top level): count must be at least the rate"
    # On a command line there is no top level: the message names the options itself.
    assert validation_message(_errors(rate=5, count=1), top_level=None) == "count must be at least the rate"


def test_skipped_location_parts() -> None:
    errors = [{"loc": ("when", "check", "function-after[x]", "field"), "msg": "Value error, unknown fact"}]
    assert validation_message(errors, skip=("check",)) == "when.field: unknown fact"


def test_json_output_is_always_rfc_json():
    """A figure that overflowed (two engines' counters near 1.7e308 summed) prints as null, not Infinity."""
    import json
    import math

    from slotune.files import to_json

    text = to_json({"prompt_tokens_per_second": 1.7e308 * 2, "nested": [math.nan, 1.5], "n": 3})
    assert json.loads(text, parse_constant=lambda name: pytest.fail(name)) == {
        "prompt_tokens_per_second": None, "nested": [None, 1.5], "n": 3}


def test_one_line_keeps_the_first_line_and_an_html_title() -> None:
    from slotune.errors import one_line

    assert one_line("(sqlite3.DatabaseError) file is not a database\n(Background on this error at: x)") == \
        "(sqlite3.DatabaseError) file is not a database"
    page = "404: <!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n<body>\n<h1>Not Found</h1>\n</body>"
    assert one_line(page) == "404: 404 Not Found"
    assert one_line("x" * 500, 20) == "x" * 19 + "…"
    assert one_line("") == ""
