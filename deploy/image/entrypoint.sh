#!/bin/sh
# Starts `rnnkit serve` on the model RNNKIT_MODEL (a bundle directory, /models/bundle by default,
# or models:/NAME@ALIAS with MLFLOW_TRACKING_URI, in an image built with MLFLOW=1). The token
# comes from RNNKIT_SERVE_TOKEN or from the file RNNKIT_SERVE_TOKEN_FILE (a mounted secret).
# Arguments are passed on to `rnnkit serve` (e.g. --max-streams 5000).
set -eu
if [ -n "${RNNKIT_SERVE_TOKEN_FILE:-}" ]; then
    RNNKIT_SERVE_TOKEN="$(cat "$RNNKIT_SERVE_TOKEN_FILE")"
    export RNNKIT_SERVE_TOKEN
fi
if [ ! -e "$RNNKIT_MODEL/manifest.json" ] && [ "${RNNKIT_MODEL#*:/}" = "$RNNKIT_MODEL" ]; then
    echo "error: no bundle at $RNNKIT_MODEL: mount one there (-v BUNDLE:/models/bundle:ro), bake one in" \
        "(--build-arg BUNDLE=...), or set RNNKIT_MODEL to a models:/ URI" >&2
    exit 2
fi
exec rnnkit serve "$RNNKIT_MODEL" --host 0.0.0.0 --port 8000 "$@"
