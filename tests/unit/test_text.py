"""Text as storage accepts it: control characters and unpaired surrogates refused,
with the field named; line breaks only where text runs over several lines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from contracts import PointsRequested
from contracts.text import MultilineText, Text, refusal


class Form(BaseModel):
    name: Text
    description: MultilineText = ""


def refused_field(**values: str) -> tuple[str, str]:
    with pytest.raises(ValidationError) as refused:
        Form.model_validate({"name": "ok", **values})
    (error,) = refused.value.errors()
    return ".".join(map(str, error["loc"])), error["msg"]


class TestText:
    def test_accepts_letters_of_every_script_and_characters_beyond_the_basic_plane(self) -> None:
        assert Form(name="Café 积分 🎉 naïve").name == "Café 积分 🎉 naïve"

    @pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f", "\x85", "\x9f"])
    def test_refuses_a_control_character_naming_the_field_and_the_character(
        self, char: str
    ) -> None:
        field, message = refused_field(name=f"ab{char}c")

        assert field == "name"
        assert f"U+{ord(char):04X} at position 2" in message

    @pytest.mark.parametrize("char", ["\n", "\r", "\t"])
    def test_refuses_line_breaks_and_tabs_in_one_line_of_text(self, char: str) -> None:
        assert refused_field(name=f"a{char}b")[0] == "name"

    @pytest.mark.parametrize("char", ["\ud800", "\udfff"])
    def test_refuses_an_unpaired_surrogate(self, char: str) -> None:
        field, message = refused_field(name=f"a{char}")

        assert (field, "unpaired surrogate" in message) == ("name", True)

    def test_documents_the_rule_as_a_pattern_in_the_json_schema(self) -> None:
        schema = Form.model_json_schema()["properties"]["name"]

        assert schema["pattern"].startswith("^[^\\u0000-\\u001f")

    @given(st.text())
    def test_accepts_exactly_what_has_no_refused_character(self, value: str) -> None:
        clean = not any(
            ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in value
        )

        assert (refusal(value) is None) == clean


class TestMultilineText:
    def test_accepts_line_breaks_and_tabs(self) -> None:
        assert Form(name="ok", description="one\r\ntwo\tthree").description == "one\r\ntwo\tthree"

    @pytest.mark.parametrize("char", ["\x00", "\x0b", "\x0c", "\x1b", "\ud83d"])
    def test_still_refuses_other_control_characters_and_surrogates(self, char: str) -> None:
        assert refused_field(description=f"line{char}")[0] == "description"


class TestContracts:
    def test_a_points_request_with_a_nul_in_its_request_id_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="request_id"):
            PointsRequested.model_validate(
                {
                    "request_id": "r\x00",
                    "transaction_id": "00000000-0000-4000-8000-000000000001",
                    "client_id": "c",
                    "rule_id": "r",
                    "rule_version": 1,
                    "user_id": "u",
                    "type": "earn",
                    "amount": 1,
                    "requested_at": "2026-01-01T00:00:00Z",
                }
            )
