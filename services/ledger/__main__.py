"""``python -m services.ledger``: run the ledger until SIGINT/SIGTERM."""

from infra.runtime import serve
from services.ledger.app import create_app

if __name__ == "__main__":
    serve(create_app)
