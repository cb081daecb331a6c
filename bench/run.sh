#!/usr/bin/env bash
# The ckptsync benchmark, in one command:
#   bash bench/run.sh [--scale 1.0] [--reps 3] [--skip-single] [--single-size 4G] ...   (--help for all)
# Makes bench/.venv (the project, editable, plus bench/requirements.txt) when missing or when
# requirements.txt or pyproject.toml changed, generates the data when missing, starts local
# S3-compatible servers on 127.0.0.1, measures, prints the ratios and writes docs/BENCHMARKS.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="$here/.venv"
stamp="$venv/.bench-installed"
want="$(cat "$here/requirements.txt" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[bench] installing the project and bench/requirements.txt into bench/.venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -e "$root" -r "$here/requirements.txt"
  echo "$want" >"$stamp"
fi
cd "$root"
# The runner stops every server and client it started (process groups) on exit, error or signal.
exec "$venv/bin/python" "$here/runner.py" "$@"
