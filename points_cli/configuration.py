"""``docs/configuration.md``, written from the settings classes themselves.

Every setting's variable names, default and meaning come from its pydantic
field, so the page cannot drift from the code: ``tests/unit/test_docs.py``
fails when the committed page differs from what this module writes. Run
``python -m points_cli.configuration`` after changing a setting.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from infra.settings import (
    SERVICES,
    SHARED_NAMES,
    ServiceSettings,
    project_root,
    shared_env_name,
)

PAGE = Path("docs/configuration.md")

INTRODUCTION = """\
# Configuration

Every service reads environment variables with its own prefix (`RULES_`,
`TRIGGER_`, `LEDGER_`, `NOTIFIER_`). The settings every service has are also
read without a prefix where the first table says so, and a prefixed variable
wins over the unprefixed one: `DATABASE_URL` points the whole platform at a
server, `TRIGGER_DATABASE_URL` moves the gateway alone. A value that is not
valid stops the service at start with a message naming the variable.

This page is written from the settings classes (`infra/settings.py` and each
`services/<name>/settings.py`) by `python -m points_cli.configuration`; a
test fails when it is out of date.
"""

EMBEDDED_STACK = """\
## The embedded stack (`points dev`, `make run`)

| variable | default | meaning |
|---|---|---|
| `POINTS_VAR_DIR` | `<repo>/var` | the embedded PostgreSQL's data, the sink's mail, `dev.env` |
| `DEV_KAFKA_PORT` | `9092` | port of the embedded Kafka-protocol broker |
| `DEV_SMTP_PORT` | `1025` | port of the embedded SMTP sink |

`points dev` sets `POINTS_MODE=development` and `LOG_JSON=true` (it appends
each service's JSON log to `log/<service>.log` under `POINTS_VAR_DIR` and
shows readable lines) and points every service at the embedded servers
unless `DATABASE_URL`, `KAFKA_BOOTSTRAP_SERVERS` or `SMTP_URL` name others.
"""


def settings_class(service: str) -> type[ServiceSettings]:
    """The settings class of ``services.<service>.settings``."""
    module = importlib.import_module(f"services.{service}.settings")
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value is not ServiceSettings
        and value.__module__ == module.__name__
    ]
    if len(found) != 1:
        raise LookupError(f"services.{service}.settings should define one settings class")
    return found[0]


def variables(name: str, field: FieldInfo, prefix: str) -> list[str]:
    """The environment variables that set one field, the winning one first."""
    if isinstance(field.validation_alias, AliasChoices):
        return [str(choice) for choice in field.validation_alias.choices]
    names = [f"{prefix}{name.upper()}"]
    if name in SHARED_NAMES:
        names.append(shared_env_name(name))
    return names


def default_of(field: FieldInfo) -> str:
    value: Any = field.default
    if value is PydanticUndefined or value is None or value == "":
        return "none"
    if isinstance(value, tuple):
        value = ",".join(str(part) for part in value)
    elif isinstance(value, list):
        value = "[" + ",".join(str(part) for part in value) + "]"
    return f"`{value}`"


def meaning(field: FieldInfo, inherited: FieldInfo | None = None) -> str:
    description = field.description or (inherited.description if inherited else None)
    if not description:
        raise ValueError("a setting without a description cannot be documented")
    return " ".join(description.split()).replace("|", "\\|")


def row(names: list[str], default: str, text: str) -> str:
    return f"| {', '.join(f'`{name}`' for name in names)} | {default} | {text} |"


def shared_table() -> list[str]:
    lines = [
        "## Every service",
        "",
        "`<SERVICE>` is the service's prefix; the unprefixed name, where there is one, sets it "
        "for every service at once.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in ServiceSettings.model_fields.items():
        lines.append(row(variables(name, field, "<SERVICE>_"), default_of(field), meaning(field)))
    return lines


def service_table(service: str) -> list[str]:
    cls = settings_class(service)
    prefix = str(cls.model_config.get("env_prefix", ""))
    lines = [
        f"## {service} (`{prefix}`)",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in cls.model_fields.items():
        inherited = ServiceSettings.model_fields.get(name)
        if inherited is not None and field.default == inherited.default:
            continue  # documented once, under "Every service"
        text = meaning(field, inherited)
        lines.append(row(variables(name, field, prefix), default_of(field), text))
    return lines


def render() -> str:
    sections = [INTRODUCTION, "\n".join(shared_table()) + "\n"]
    sections += ["\n".join(service_table(service)) + "\n" for service in SERVICES]
    sections.append(EMBEDDED_STACK)
    return "\n".join(sections)


def main(argv: list[str]) -> None:
    target = Path(argv[0]) if argv else project_root() / PAGE
    target.write_text(render())
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
