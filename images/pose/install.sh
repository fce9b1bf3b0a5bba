#!/bin/sh
# The pose example's own venv: Conveyor (editable), deepaas and the pinned model dependencies
# (requirements.txt), and this plugin (editable). Kept apart from .venv: mediapipe pins
# numpy<2 and protobuf<5.
#   images/pose/install.sh [VENV]        default VENV: <repo>/.venv-models/pose
# A venv already installed from the same requirements.txt / pyproject.toml files is kept as it is.
# Environment: PYTHON (default python3, 3.10 or newer).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${1:-$repo/.venv-models/pose}
python=${PYTHON:-python3}
say() { echo "install pose: $*" >&2; }
# The smoke test at the end runs without any network when the kernel lets us (root: unshare -n).
offline() { if unshare -n true 2>/dev/null; then unshare -n "$@"; else "$@"; fi; }

stamp="$venv/.conveyor-installed"
want=$(cat "$here/requirements.txt" "$here/pyproject.toml" "$here/install.sh" "$repo/setup.cfg" | cksum)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/conveyor" ]; then
    say "up to date: $venv"; exit 0
fi

start=$(date +%s)
rm -rf "$venv"
"$python" -m venv "$venv"
pip="$venv/bin/python -m pip --disable-pip-version-check"
set -- -r "$here/requirements.txt" -e "$repo" -e "$here"

$pip install --quiet "$@"
$pip check >&2
# Build the graph and run it once, offline: proves the models are in the venv (nothing is fetched
# at run time).
offline "$venv/bin/python" -c 'from conveyor_pose import api; api.warm()' >&2
echo "$want" >"$stamp"
say "done in $(( $(date +%s) - start )) s: $venv ($(du -sh "$venv" | cut -f1))"
