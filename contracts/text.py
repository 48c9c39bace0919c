"""Text as storage accepts it: no NUL, no control characters, no unpaired surrogates.

PostgreSQL refuses NUL in ``text`` and cannot encode a lone surrogate in UTF-8,
so a string carrying either, once accepted by an API, fails later in a
statement or a consumer, far from whoever sent it. Every string an HTTP API or
a contract accepts is one of these types, refused at the edge with the field
named:

- :data:`Text`: one line: no C0 control character (U+0000-U+001F), no DEL or
  C1 control (U+007F-U+009F), no unpaired surrogate (U+D800-U+DFFF);
- :data:`MultilineText`: the same, but line feed, carriage return and tab are
  allowed (descriptions, e-mail bodies).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

#: Control characters (C0, DEL, C1) and the surrogate range; a surrogate that
#: survives into a Python ``str`` is always an unpaired one.
_REFUSED = r"\x00-\x1f\x7f-\x9f\ud800-\udfff"
#: What a multi-line text may carry of the refused range.
_MULTILINE_ALLOWED = "\t\n\r"
_LINE_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]*$"
_MULTILINE_PATTERN = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"


@cache
def _finder(allowed: str) -> re.Pattern[str]:
    """Finds the first refused character that ``allowed`` does not let through."""
    if not allowed:
        return re.compile(f"[{_REFUSED}]")
    # A character class cannot subtract, so skip the allowed ones with a lookahead.
    return re.compile(f"(?![{re.escape(allowed)}])[{_REFUSED}]")


@dataclass(frozen=True)
class RefusesControlCharacters:
    """Pydantic metadata: refuse control characters other than ``allowed``, and
    unpaired surrogates, naming the first one found and where."""

    allowed: str = ""

    def check(self, value: str) -> str:
        found = _finder(self.allowed).search(value)
        if found is None:
            return value
        char = found.group()
        kind = "an unpaired surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
        raise PydanticCustomError(
            "text_control_character",
            "must not contain {kind} ({character} at position {position})",
            {"kind": kind, "character": f"U+{ord(char):04X}", "position": found.start()},
        )

    @property
    def json_pattern(self) -> str:
        """The rule as a JSON Schema pattern (which cannot tell an unpaired surrogate
        from half of a pair, so leaves surrogates to the description)."""
        return _MULTILINE_PATTERN if self.allowed else _LINE_PATTERN

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        if json_schema.get("type") == "string":
            json_schema.setdefault("pattern", self.json_pattern)
        return json_schema


#: One line of text: no control characters at all, no unpaired surrogates.
Text = Annotated[str, RefusesControlCharacters()]
#: Text that may run over several lines: tab, line feed and carriage return allowed.
MultilineText = Annotated[str, RefusesControlCharacters(allowed=_MULTILINE_ALLOWED)]


def refusal(value: str, *, multiline: bool = False) -> str | None:
    """Why ``value`` is not acceptable text, or None when it is (for plain parameters)."""
    rule = RefusesControlCharacters(allowed=_MULTILINE_ALLOWED if multiline else "")
    try:
        rule.check(value)
    except PydanticCustomError as error:
        return error.message()
    return None
