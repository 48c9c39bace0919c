"""``make docs``: the AsyncAPI document of each service's Kafka side and the
OpenAPI document of its HTTP side, written to a folder.

Services publish through the outbox, not through FastStream publishers, so
each service's ``app`` module lists what it publishes in ``PUBLISHES``; here
those become documentation-only publishers on the service's broker.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

from faststream.specification import AsyncAPI

from infra.broker import create_broker
from infra.settings import SERVICES
from points_cli.configuration import settings_class


def _document(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    module = importlib.import_module(f"services.{name}.app")
    settings = settings_class(name)(mode="development")
    app, runtime = module.create_app(settings)
    broker = runtime.broker or create_broker(settings)
    for topic, event, description in getattr(module, "PUBLISHES", ()):
        broker.publisher(topic, schema=event, description=description)
    asyncapi = AsyncAPI(
        broker,
        title=f"Points platform — {name} service",
        version="1",
        description=app.description,
    ).to_specification()
    return json.loads(asyncapi.to_json()), app.openapi()


def main(argv: list[str]) -> None:
    target = Path(argv[0] if argv else "docs/api")
    target.mkdir(parents=True, exist_ok=True)
    for name in SERVICES:
        asyncapi, openapi = _document(name)
        for kind, document in (("asyncapi", asyncapi), ("openapi", openapi)):
            path = target / f"{name}.{kind}.json"
            path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
            print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
