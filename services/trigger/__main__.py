"""``python -m services.trigger``: run the trigger gateway."""

from infra.serving import serve
from services.trigger.app import create_app

if __name__ == "__main__":
    serve(create_app)
