#!/bin/sh
# Chooses what the one image runs: a service by name, or a `points` command.
set -eu
case "${1:-help}" in
  rules | trigger | ledger | notifier)
    exec python -m "services.$1"
    ;;
  points)
    shift
    exec points "$@"
    ;;
  ready)
    # A health check for an image without curl: exit 0 when GET /readyz on PORT answers 200.
    exec python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' \
      "http://127.0.0.1:${2:?usage: ready PORT}/readyz"
    ;;
  help | -h | --help)
    cat <<'USAGE'
usage: IMAGE rules | trigger | ledger | notifier     run that service
       IMAGE points COMMAND ...                      the operator CLI (points migrate,
                                                     points topics create, ...)
       IMAGE ready PORT                              exit 0 when the service on PORT is ready
       IMAGE COMMAND ...                             anything else, as is
Settings come from the environment: see docs/operations.md.
USAGE
    ;;
  *)
    exec "$@"
    ;;
esac
