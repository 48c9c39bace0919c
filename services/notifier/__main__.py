"""``python -m services.notifier``: run the notifier until SIGINT or SIGTERM."""

from infra.serving import serve
from services.notifier.app import create_app

if __name__ == "__main__":
    serve(create_app)
