"""The problem types' catalogue: every code a service answers with has one title and a page."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from infra.http_problems import HTTP_CODES
from infra.problem_types import BY_SLUG, PROBLEM_TYPES, slug_of
from infra.problems import Problem
from services.trigger.admission import CAP_REFUSALS

ROOT = Path(__file__).parents[2]
TYPES_URL = "https://rules.points.example.com/problems"


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def gives_a_code(node: ast.AST) -> bool:
    if isinstance(node, ast.keyword):
        return node.arg == "code"
    return isinstance(node, ast.Assign) and any(
        isinstance(target, ast.Name) and target.id == "code" for target in node.targets
    )


def codes_in(path: Path) -> set[str]:
    """The codes ``path`` gives a problem: ``code=`` arguments and ``code =`` class
    attributes, whether spelled as a string or as a constant of the module (a code held
    in a variable is one of the dynamic ones the test lists)."""
    found: set[str] = set()
    module = None
    for node in ast.walk(ast.parse(path.read_text())):
        if not gives_a_code(node):
            continue
        value = node.value  # type: ignore[attr-defined]
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            found.add(value.value)
        elif isinstance(value, ast.Name) and value.id.isupper():  # a constant, not a variable
            module = module or importlib.import_module(module_of(path))
            found.add(getattr(module, value.id))
    return found


def raised_codes() -> dict[str, set[str]]:
    codes: dict[str, set[str]] = {}
    for path in [*ROOT.glob("infra/**/*.py"), *ROOT.glob("services/**/*.py")]:
        for code in codes_in(path):
            codes.setdefault(code, set()).add(str(path.relative_to(ROOT)))
    return codes


class TestTheCatalogue:
    def test_every_code_a_service_answers_with_has_a_page(self) -> None:
        raised = raised_codes()
        # Codes chosen at run time: the caps' refusals, and Starlette's own errors.
        dynamic = {*CAP_REFUSALS, *HTTP_CODES.values(), "HTTP_ERROR"}

        missing = {
            code: sorted(paths) for code, paths in raised.items() if code not in PROBLEM_TYPES
        }
        assert not missing, f"codes without a problem type in infra/problem_types.py: {missing}"
        assert dynamic <= PROBLEM_TYPES.keys()
        # The scan sees the codes: a catalogue the source never uses would be stale.
        assert len(raised) > 60

    def test_each_type_has_a_title_and_a_slug_of_its_own(self) -> None:
        titles = [kind.title for kind in PROBLEM_TYPES.values()]

        assert len(set(titles)) == len(titles)
        assert len(BY_SLUG) == len(PROBLEM_TYPES)
        for kind in PROBLEM_TYPES.values():
            assert re.fullmatch(r"[a-z]+(-[a-z]+)*", kind.slug), kind.code
            assert kind.meaning.strip() and kind.action.strip(), kind.code

    def test_a_problem_is_typed_by_its_page_and_titled_as_its_type(self) -> None:
        body = Problem("no rule rul_1", status=404, code="RULE_NOT_FOUND").body(TYPES_URL + "/")

        assert body == {
            "type": f"{TYPES_URL}/rule-not-found",
            "title": "Rule not found",
            "status": 404,
            "code": "RULE_NOT_FOUND",
            "detail": "no rule rul_1",
        }

    def test_the_same_type_keeps_its_title_whatever_the_status(self) -> None:
        refused = Problem("…", status=400, code="RULE_NOT_FOUND").body(TYPES_URL)
        missing = Problem("…", status=404, code="RULE_NOT_FOUND").body(TYPES_URL)

        assert (refused["type"], refused["title"]) == (missing["type"], missing["title"])

    def test_a_code_missing_from_the_catalogue_says_no_more_than_its_status(self) -> None:
        body = Problem("…", status=409, code="SOMETHING_NEW").body(TYPES_URL)

        assert (body["type"], body["title"]) == ("about:blank", "Conflict")

    def test_slugs_are_the_codes_in_lower_case_with_hyphens(self) -> None:
        assert slug_of("RULE_NOT_API_TRIGGERABLE") == "rule-not-api-triggerable"
