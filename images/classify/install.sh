#!/bin/sh
# The classify example's own venv: Conveyor (editable), deepaas and the pinned model dependencies
# (requirements.txt), and this plugin (editable). Kept apart from .venv: torch is large.
#   images/classify/install.sh [VENV]        default VENV: <repo>/.venv-models/classify
# A venv already installed from the same requirements.txt / pyproject.toml files is kept as it is.
# Environment: PYTHON (default python3, 3.10 or newer).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${1:-$repo/.venv-models/classify}
python=${PYTHON:-python3}
say() { echo "install classify: $*" >&2; }
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

# requirements.txt pins torch==2.13.0+cpu, so pip cannot pick a CUDA build (a plain `torch` from
# PyPI is one, with gigabytes of nvidia-* wheels); checked again once installed.
$pip install --quiet "$@"
$pip check >&2
"$venv/bin/python" -c '
import importlib.metadata as md, sys, torch
gpu = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith(("nvidia-", "triton")))
sys.exit(f"torch {torch.__version__} is not the CPU build (CUDA {torch.version.cuda}; {gpu})" if torch.version.cuda or gpu else 0)
' || { say "refusing a CUDA build of torch"; exit 1; }
# Load the network once, offline: proves the weights are in the venv (nothing fetched at run time).
offline "$venv/bin/python" -c 'from conveyor_classify import api; api.warm()' >&2
echo "$want" >"$stamp"
say "done in $(( $(date +%s) - start )) s: $venv ($(du -sh "$venv" | cut -f1))"
