#!/usr/bin/env bash
# End-to-end check of the studio in a real terminal (tmux), the way it is used over SSH:
#   open the studio on an empty folder -> accept the offer to start the tiny preset -> wait until the
#   monitor shows a training loss -> quit -> reopen -> the run is still listed (re-attach) -> stop it.
#
# Not part of the pytest suite (it trains for real: ~1-2 minutes on two CPU cores). Run it with
#   bash tests/e2e/tmux_studio.sh            # needs tmux; uses `python` from PATH (or $PYTHON)
# It works in a fresh temporary folder and removes it at the end (KEEP=1 keeps it).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-python}"
WORK="$(mktemp -d)"
SESSION="mmstudio-e2e-$$"
STUDIO="cd '$WORK' && PYTHONPATH='$ROOT' '$PY' -c 'from studio.cli import main; main([])'"

screen() { tmux capture-pane -p -t "$SESSION"; }
wait_for() {  # wait_for REGEX SECONDS WHAT
  local deadline=$((SECONDS + $2))
  until screen | grep -Eq "$1"; do
    if ((SECONDS > deadline)); then
      echo "FAIL: timed out waiting for $3; screen was:" >&2; screen >&2; exit 1
    fi
    sleep 1
  done
  echo "ok: $3"
}
cleanup() {
  tmux kill-session -t "$SESSION" 2>/dev/null || true
  for status in "$WORK"/runs/*/status.json; do  # never leave a training process behind
    [ -f "$status" ] || continue
    pid="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("pid",""))' "$status")"
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

tmux new-session -d -s "$SESSION" -x 120 -y 40 "$STUDIO"
wait_for "No runs yet" 20 "the studio opens and offers the tiny preset"
tmux send-keys -t "$SESSION" y
wait_for "tiny +(queued|running)" 60 "the tiny run is launched and followed in the monitor"
wait_for "loss [0-9]+\.[0-9]{4}" 300 "a training loss appears in the monitor"
RUN_ID="$(ls "$WORK/runs" | grep -- '-tiny$' | head -1)"
tmux send-keys -t "$SESSION" q
sleep 2
tmux kill-session -t "$SESSION" 2>/dev/null || true

tmux new-session -d -s "$SESSION" -x 120 -y 40 "$STUDIO"
wait_for "$RUN_ID" 20 "reopened: the run $RUN_ID is listed"
wait_for "$RUN_ID +tiny .*(running|finished)" 20 "its state is read back from disk"
tmux send-keys -t "$SESSION" 3
wait_for "loss [0-9]+\.[0-9]{4}" 30 "the monitor re-attaches with the loss curve"
tmux send-keys -t "$SESSION" 2
sleep 1  # let the focus reach the runs table
tmux send-keys -t "$SESSION" s
wait_for "asked $RUN_ID to stop" 10 "the studio asks the run to stop"
[ -f "$WORK/runs/$RUN_ID/control/stop" ] || { echo "FAIL: no control/stop file" >&2; exit 1; }
for _ in $(seq 120); do
  grep -Eq '"state": "(stopped|finished)"' "$WORK/runs/$RUN_ID/status.json" && break
  sleep 1
done
grep -Eq '"state": "(stopped|finished)"' "$WORK/runs/$RUN_ID/status.json" || { echo "FAIL: stop did not end the run" >&2; exit 1; }
echo "ok: stop from the studio ended the run cleanly"
echo "PASS"
