#!/bin/sh
# /oscar/bin/supervisor on an OSCAR cluster (the read-only volume every service pod mounts at
# /oscar/bin): Conveyor when the image has it, else OSCAR's own supervisor, kept beside this shim as
# supervisor.orig (and alpine/supervisor.orig for `alpine: true` services, with this shim at
# alpine/supervisor too). The watchdog (sync) and the job's `echo $EVENT | /oscar/bin/supervisor`
# (async) then run Conveyor in images that carry it and the old supervisor everywhere else.
command -v conveyor-entrypoint >/dev/null 2>&1 && exec conveyor-entrypoint "$@"
exec "$(dirname "$0")/supervisor.orig" "$@"
