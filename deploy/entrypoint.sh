#!/bin/sh
# The container's entrypoint: `serve` (the default) applies the migrations, then replaces
# itself with `imagestudio serve` on $IMAGESTUDIO_HOST:$IMAGESTUDIO_PORT (0.0.0.0:8000);
# anything else is an imagestudio command as given (`worker --concurrency 8`, `migrate`).
set -eu

command="${1:-serve}"
if [ "$#" -gt 0 ]; then shift; fi

case "$command" in
  serve)
    if [ "${IMAGESTUDIO_MIGRATE_ON_START:-1}" != "0" ]; then
      imagestudio migrate
    fi
    exec imagestudio serve \
      --host "${IMAGESTUDIO_HOST:-0.0.0.0}" --port "${IMAGESTUDIO_PORT:-8000}" "$@"
    ;;
  *)
    exec imagestudio "$command" "$@"
    ;;
esac
