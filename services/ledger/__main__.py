"""``python -m services.ledger``: run the ledger until SIGINT/SIGTERM."""

import gc

from infra.serving import serve
from services.ledger.app import create_app

if __name__ == "__main__":
    # Requests arrive in batches of thousands whose objects live until the batch
    # commits. At the default threshold (700 allocations) the collector scanned
    # that live batch again and again, 6 % of the ledger's time when catching up;
    # at 20,000 it takes a third of that (make bench-ledger).
    gc.set_threshold(20_000, 10, 10)
    serve(create_app)
