"""``python -m services.notifier``: run the notifier until SIGINT or SIGTERM."""

from fastapi import FastAPI

from infra.runtime import ServiceRuntime
from infra.serving import serve
from services.notifier.app import create_notifier


def build() -> tuple[FastAPI, ServiceRuntime]:
    notifier = create_notifier()
    return notifier.app, notifier.runtime


if __name__ == "__main__":
    serve(build)
