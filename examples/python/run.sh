#!/usr/bin/env bash
# Sets up a Python venv with gRPC, generates the lts.v1 client code from the
# .proto files of this repository, and runs submit_and_feedback.py with the
# arguments given (see --help).
#
#   examples/python/run.sh --jobtracker 127.0.0.1:7070 --count 20
#   examples/python/run.sh --generate-only     # only venv + code generation
#
# LTS_PY_VENV overrides where the venv lives (default under $TMPDIR or /tmp).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proto_dir="$(cd "$here/../../proto" && pwd)"
venv="${LTS_PY_VENV:-${TMPDIR:-/tmp}/lts-python-example-venv}"
generated="$venv/generated"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating a venv in $venv" >&2
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

# Regenerate every time: the .proto files may have changed since the last run.
rm -rf "$generated"
mkdir -p "$generated"
"$venv/bin/python" -m grpc_tools.protoc \
    -I "$proto_dir" \
    --python_out="$generated" \
    --grpc_python_out="$generated" \
    "$proto_dir"/lts/v1/*.proto

if [ "${1:-}" = "--generate-only" ]; then
    echo "generated the lts.v1 Python code in $generated" >&2
    exit 0
fi

PYTHONPATH="$generated${PYTHONPATH:+:$PYTHONPATH}" exec "$venv/bin/python" "$here/submit_and_feedback.py" "$@"
