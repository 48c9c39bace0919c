"""Export every topic's message schema as JSON Schema, and check the committed copies.

    python -m contracts.export          # rewrite contracts/schemas/
    python -m contracts.export --check  # exit 1 if contracts/schemas/ differs from the models

CI runs the check, so a change to a message shows up as a change to a
committed schema file in review; a breaking change needs a new topic version.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from contracts import ALL_TOPICS, EVENT_TYPES

SCHEMAS_DIRECTORY = Path(__file__).parent / "schemas"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_SUFFIX = ".schema.json"


def schema_file_name(topic: str) -> str:
    """The file a topic's schema is written to, such as `points.requested.v1.schema.json`."""
    return f"{topic}{SCHEMA_SUFFIX}"


def render_schemas() -> dict[str, str]:
    """Each topic's schema file name and its exact text, generated from the models."""
    rendered = {}
    for topic in ALL_TOPICS:
        event = EVENT_TYPES[topic.name]
        schema = event.model_json_schema()
        # The model refuses any other version; say so in the schema too.
        schema["properties"]["version"]["const"] = event.VERSION
        schema = {
            "$schema": JSON_SCHEMA_DIALECT,
            **schema,
            "x-topic": topic.name,
            "x-key": topic.key,
            "x-version": event.VERSION,
        }
        rendered[schema_file_name(topic.name)] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return rendered


def export_schemas(directory: Path) -> list[Path]:
    """Write one `<topic>.schema.json` per topic into ``directory``; return the files written.

    Schema files of topics that no longer exist are removed, so the directory
    always holds exactly the current topics.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in _stale_files(directory):
        stale.unlink()
    written = []
    for name, text in render_schemas().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def find_drift(directory: Path) -> list[Path]:
    """Schema files in ``directory`` that are missing, out of date, or belong to no topic."""
    expected = render_schemas()
    drifted = [
        directory / name
        for name, text in expected.items()
        if not (directory / name).is_file()
        or (directory / name).read_text(encoding="utf-8") != text
    ]
    return drifted + _stale_files(directory)


def _stale_files(directory: Path) -> list[Path]:
    expected = {schema_file_name(topic.name) for topic in ALL_TOPICS}
    return sorted(path for path in directory.glob(f"*{SCHEMA_SUFFIX}") if path.name not in expected)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m contracts.export", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 naming every schema file that differs from the models",
    )
    parser.add_argument(
        "--directory",
        type=Path,
        default=SCHEMAS_DIRECTORY,
        help=f"where the schema files live (default: {SCHEMAS_DIRECTORY})",
    )
    arguments = parser.parse_args(argv)
    if arguments.check:
        drifted = find_drift(arguments.directory)
        for path in drifted:
            print(f"schema drift: {path}", file=sys.stderr)
        if drifted:
            print("run `python -m contracts.export` and commit the result", file=sys.stderr)
            return 1
        return 0
    for path in export_schemas(arguments.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
