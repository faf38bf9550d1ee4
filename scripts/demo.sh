#!/usr/bin/env bash
# The main job: `lumiserve up` serving the toy-world models, then one request end to end through the
# gateway: generate "a red circle" (with a progress bar), then ask the vision-language model about it.
set -euo pipefail
cd "$(dirname "$0")/.."
lumiserve=.venv/bin/lumiserve
data=.lumiserve
out="$data/demo"
mkdir -p "$out"
rm -f "$data/up.json"

"$lumiserve" up --data-dir "$data" &
up=$!
trap 'kill -INT "$up" 2>/dev/null; wait "$up" || true' EXIT
for _ in $(seq 1 300); do
  [ -f "$data/up.json" ] && break
  kill -0 "$up" 2>/dev/null || { echo "lumiserve up failed; logs in $data/logs" >&2; exit 1; }
  sleep 1
done
[ -f "$data/up.json" ] || { echo "lumiserve up did not become ready; logs in $data/logs" >&2; exit 1; }

"$lumiserve" generate "a red circle" --seed 1 -o "$out/red-circle.png"
answer=$("$lumiserve" ask "$out/red-circle.png" "What is in this image?")
echo "Q: What is in this image?  A: $answer"
if [ "$answer" != "a red circle" ]; then
  echo "unexpected answer (expected 'a red circle')" >&2
  exit 1
fi
echo "ok: the stack drew a red circle and recognised it ($out/red-circle.png)"
