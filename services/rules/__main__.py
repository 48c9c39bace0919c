"""``python -m services.rules``: run the rules service."""

from infra.serving import serve
from services.rules.app import create_app

if __name__ == "__main__":
    serve(create_app)
