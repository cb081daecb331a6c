#!/usr/bin/env bash
# A spot interruption end to end, no AWS account needed: start a local
# S3-compatible server (rclone serve s3) on 127.0.0.1, run a training job under
# `ckptsync run`, kill -9 the whole job once two checkpoints are committed (the
# instance disappears: no SIGTERM, no drain), wipe its checkpoint folder (a new
# instance starts empty), run the same command again, and check that training
# resumed from the newest committed checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/ckptsync ] || [ ! -x .venv/bin/rclone ] || ! .venv/bin/python -c 'import numpy' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e '.[test]'
fi
PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d)
server_pid=""
job_pid=""
cleanup() {
  [ -n "$job_pid" ] && kill_tree "$job_pid"
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# SIGKILL process $1 and every descendant, wherever its process group or
# session (`ckptsync run` starts the command in a session of its own). The
# tree is frozen with SIGSTOP first, so nothing escapes by exiting or forking
# while it is being walked; with "-g" the process group $1 is also sent SIGKILL
# as one, like an instance that vanishes.
kill_tree() {
  python - "$@" <<'PY'
import os, signal, sys, time
root = int(sys.argv[1])

def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # state, ppid, pgrp, session, ...

def children():
    kids = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            kids.setdefault(int(stat(pid)[1]), []).append(int(pid))
        except (OSError, IndexError):
            pass
    return kids

def send(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass

tree = set()
while True:  # stop the whole tree, until walking it finds nobody new
    kids, todo, found = children(), [root], set()
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += kids.get(pid, [])
    if found <= tree:
        break
    for pid in found - tree:
        send(pid, signal.SIGSTOP)
    tree |= found
if "-g" in sys.argv[2:]:
    try:
        os.killpg(root, signal.SIGKILL)
    except ProcessLookupError:
        pass
for pid in tree:
    send(pid, signal.SIGKILL)

def alive(pid):
    try:
        return stat(pid)[0] not in "ZX"
    except (OSError, IndexError):
        return False

deadline = time.time() + 10
while any(alive(p) for p in tree) and time.time() < deadline:
    time.sleep(0.05)
sys.exit(1 if any(alive(p) for p in tree) else 0)
PY
}

port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=ckptsyncdemoaccesskey AWS_SECRET_ACCESS_KEY=ckptsyncdemosecretkey0123456789
export AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export CKPTSYNC_ENDPOINT_URL="http://127.0.0.1:$port"
mkdir -p "$work/s3/demo-bucket"
echo "== starting a local S3 server (rclone serve s3) on 127.0.0.1:$port"
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

remote=s3://demo-bucket/spot
ckpt="$work/ckpt"
job=(ckptsync run --restore latest --dir "$ckpt" --remote "$remote" --settle 1
     -- python examples/train.py --dir "$ckpt" --steps 400 --every 50 --step-seconds 0.02)

# Committed checkpoints as "count newest-step" (newest = highest step, as restore --latest picks).
committed() {
  ckptsync list --remote "$remote" --json | python -c '
import json, sys
steps = [r["step"] for r in json.load(sys.stdin) if r["step"] is not None]
print(len(steps), max(steps, default=-1))'
}

if ! ckptsync run --help >/dev/null 2>&1; then
  echo "== this ckptsync has no 'run' command yet; nothing more to show" >&2
  exit 1
fi

echo "== first instance: ${job[*]}"
mkdir -p "$ckpt"
# In a session (and process group) of its own, like a job on its own machine.
# The inner shell records its pid (= the session and process group id), then
# becomes the job.
setsid bash -c 'echo $$ >"$0"; exec "$@"' "$work/job.pid" "${job[@]}" >"$work/first.log" 2>&1 &
disown  # no "Killed" notice from this shell later
deadline=$((SECONDS + 30))
until [ -s "$work/job.pid" ]; do
  [ $SECONDS -lt $deadline ] || { echo "the job did not start" >&2; exit 1; }
  sleep 0.05
done
job_pid=$(cat "$work/job.pid")

echo "== waiting until at least 2 checkpoints are committed to $remote"
deadline=$((SECONDS + 60))
while :; do
  read -r count newest < <(committed 2>/dev/null || echo "0 -1")
  [ "$count" -ge 2 ] && break
  if ! kill -0 "$job_pid" 2>/dev/null; then
    echo "== the first instance exited before 2 checkpoints were committed; its output:" >&2
    sed 's/^/  | /' "$work/first.log" >&2
    exit 1
  fi
  if [ $SECONDS -ge $deadline ]; then
    echo "== timed out waiting for 2 committed checkpoints; the job's output:" >&2
    sed 's/^/  | /' "$work/first.log" >&2
    exit 1
  fi
  sleep 0.3
done
echo "$count committed, the newest at step $newest"

echo "== kill -9 the job's process group ($job_pid) and every descendant: the instance is gone, nothing drains"
kill_tree "$job_pid" -g || { echo "could not kill the job" >&2; exit 1; }
job_pid=""
echo "-- output of the first instance:"
sed 's/^/  | /' "$work/first.log"

echo "== a new instance: the local checkpoint folder is gone"
rm -rf "$ckpt"
mkdir -p "$ckpt"

echo "== ckptsync list (what survived)"
ckptsync list --remote "$remote"
read -r count newest < <(committed)
if [ "$count" -lt 2 ]; then
  echo "== expected at least 2 committed checkpoints, found $count" >&2
  exit 1
fi
echo "newest committed step: $newest"

echo "== second instance, to completion: ${job[*]}"
status=0
"${job[@]}" 2>&1 | tee "$work/second.log" || status=$?
if [ "$status" -ne 0 ]; then
  echo "== the second instance exited with status $status" >&2
  exit 1
fi

echo "== ckptsync list (after the second instance drained)"
ckptsync list --remote "$remote"

resumed_lines=$(grep -E '^resumed from step [0-9]+$' "$work/second.log" || true)
if [ "$(printf '%s\n' "$resumed_lines" | grep -c .)" -ne 1 ]; then
  echo "== expected exactly one 'resumed from step N' line from the trainer, got:" >&2
  printf '%s\n' "$resumed_lines" >&2
  exit 1
fi
resumed=${resumed_lines##* }
echo "trainer: $resumed_lines"
if [ "$resumed" != "$newest" ]; then
  echo "== MISMATCH: resumed from step $resumed, but the newest committed step was $newest" >&2
  exit 1
fi
read -r _ final < <(committed)
if [ "$final" != 400 ]; then
  echo "== the final checkpoint (step 400) was not committed; newest committed step is $final" >&2
  exit 1
fi
echo "== resumed from step $resumed, the newest committed checkpoint; step 400 is committed"
