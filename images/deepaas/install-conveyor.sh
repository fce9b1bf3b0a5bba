#!/bin/sh
# Install Conveyor into the Python that has deepaas, inside a DEEPaaS model image.
#   sh install-conveyor.sh WHEEL_DIR
# Environment: MODEL_PYTHON (skip detection), PIP_INDEX_ARGS (default --no-index).
# POSIX sh: model images do not always have bash.
set -eu
wheels=${1:?usage: install-conveyor.sh WHEEL_DIR}
say() { echo "install-conveyor: $*" >&2; }

has_deepaas() { [ -n "$1" ] && "$1" -c 'import deepaas' >/dev/null 2>&1; }

# The interpreter named in a console script's first line: "#!/path/python" or
# "#!/usr/bin/env python3" (pip's "#!/bin/sh" trampoline for long paths is skipped).
script_python() {
    s=$(command -v "$1" 2>/dev/null) || return 0
    line=$(head -n 1 "$s" | sed -n 's/^#![[:space:]]*//p')
    # shellcheck disable=SC2086 # split "env python3" into words
    set -- $line
    case ${1:-} in
        */env) echo "${2:-}" ;;
        *python*) echo "$1" ;;
    esac
}

py=${MODEL_PYTHON:-}
if [ -n "$py" ]; then
    has_deepaas "$py" || { say "MODEL_PYTHON=$py cannot import deepaas"; exit 1; }
else
    for cand in "$(script_python deepaas-run)" "$(script_python deepaas-predict)" python3 python; do
        if has_deepaas "$cand"; then py=$cand; break; fi
    done
    [ -n "$py" ] || { say "no Python with deepaas found (tried deepaas-run's, python3, python); set MODEL_PYTHON"; exit 1; }
fi
py=$(command -v "$py")
say "installing into $py ($("$py" --version 2>&1))"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { say "Conveyor needs Python 3.10 or newer"; exit 1; }

# A model that pip-installed deepaas into Debian's own python has already opted out of
# PEP 668; older pips ignore the variable.
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1
tmp=$(mktemp -d)
"$py" -m pip freeze --all >"$tmp/before" 2>/dev/null || :
"$py" -m pip check >"$tmp/check-before" 2>&1 || :
# shellcheck disable=SC2086
"$py" -m pip install --no-cache-dir ${PIP_INDEX_ARGS-"--no-index"} --find-links "$wheels" \
    'conveyor-runtime[lambda,serve]'
"$py" -m pip freeze --all >"$tmp/after" 2>/dev/null || :

# The model's own packages must stay as they were: say which ones pip changed (a shared
# dependency that Conveyor needs in another version), and fail on new conflicts.
changed=$(awk -F'==' 'NR == FNR {v[$1] = $2; next} ($1 in v) && v[$1] != $2 {print "  " $1 " " v[$1] " -> " $2}' \
    "$tmp/before" "$tmp/after")
[ -z "$changed" ] || say "WARNING: installing Conveyor changed the model's packages:
$changed"
if ! "$py" -m pip check >"$tmp/check-after" 2>&1; then
    if ! diff "$tmp/check-before" "$tmp/check-after" >/dev/null; then
        cat "$tmp/check-after" >&2
        say "installing Conveyor broke the model's dependencies (pip check above)"; exit 1
    fi
fi
rm -rf "$tmp"

# The entrypoint is "conveyor-entrypoint": make sure this Python's commands are on PATH.
scripts=$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
for cmd in conveyor conveyor-entrypoint; do
    [ -x "$scripts/$cmd" ] || { say "pip put no $cmd script in $scripts"; exit 1; }
    if [ "$(command -v "$cmd" || true)" != "$scripts/$cmd" ]; then
        ln -sf "$scripts/$cmd" "/usr/local/bin/$cmd"
        say "linked /usr/local/bin/$cmd -> $scripts/$cmd"
    fi
done
# SCAR's Batch job definitions run `/bin/sh -c 'echo $EVENT | /opt/faas-supervisor/bin/supervisor'`,
# the predecessor's path: make it Conveyor's entrypoint.
mkdir -p /opt/faas-supervisor/bin
ln -sf "$scripts/conveyor-entrypoint" /opt/faas-supervisor/bin/supervisor
"$py" -c 'import deepaas, conveyor, conveyor.handlers.deepaas, awslambdaric' \
    || { say "Conveyor and deepaas do not import side by side"; exit 1; }
say "$(conveyor --version) next to deepaas in $py"
