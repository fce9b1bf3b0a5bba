#!/usr/bin/env bash
# A private Docker engine for building and testing the images on a machine without one.
#
#   images/tools/dockerd.sh start [STATE_DIR]   start it unless an engine is reachable;
#                                                print the DOCKER_HOST value on stdout
#   images/tools/dockerd.sh stop  [STATE_DIR]   stop the engine this script started
#   images/tools/dockerd.sh host  [STATE_DIR]   print the DOCKER_HOST value, fail if not running
#
# Typical use:  export DOCKER_HOST=$(images/tools/dockerd.sh start)
#
# "start" reuses, in this order: the engine $DOCKER_HOST points at, the default socket
# /var/run/docker.sock, the private engine already running in STATE_DIR; only then it starts
# dockerd (Debian package docker.io) with everything under STATE_DIR (default
# <repo>/.cache/docker, or $CONVEYOR_DOCKER_STATE): data-root, exec-root, pidfile, socket.
# No TCP listener, no iptables rules, no bridge: containers get loopback only, or the
# host's network with --network host. overlay2 is tried first, vfs when it fails.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cmd=${1:-start}
state=${2:-${CONVEYOR_DOCKER_STATE:-$repo/.cache/docker}}
log() { echo "dockerd.sh: $*" >&2; }

mkdir -p "$state"
state=$(cd "$state" && pwd)
sock=$state/docker.sock
pidfile=$state/dockerd.pid
exec_root=$state/exec
# Unix socket paths are limited to 107 bytes; containerd puts its sockets under the
# exec-root (exec/containerd/containerd.sock.ttrpc). Use a short directory in /tmp,
# named after the state dir, when the state dir is too deep.
if [ $(( ${#state} + 40 )) -gt 100 ]; then
    exec_root=/tmp/conveyor-docker-$(printf %s "$state" | md5sum | cut -c1-8)
fi
if [ $(( ${#sock} )) -gt 100 ]; then
    sock=$exec_root.sock
fi

ping() {  # ping HOST: true when an engine answers there
    DOCKER_HOST=$1 timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

running_pid() {  # the pid of our dockerd, if alive
    local pid
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -d "/proc/$pid" ] && grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

start_dockerd() {  # start_dockerd DRIVER: start and wait until ready; false if it died
    local driver=$1 i
    rm -f "$sock"
    log "starting dockerd (storage driver $driver, state $state)"
    setsid dockerd \
        --data-root "$state/data" --exec-root "$exec_root" --pidfile "$pidfile" \
        -H "unix://$sock" --iptables=false --ip6tables=false --bridge=none \
        --storage-driver="$driver" >"$state/dockerd.log" 2>&1 </dev/null &
    local pid=$!
    for i in $(seq 300); do  # up to 30 s
        if ping "unix://$sock"; then
            echo "$driver" >"$state/driver"
            log "ready after $((i / 10)).$((i % 10)) s"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "dockerd with $driver exited: $(tail -3 "$state/dockerd.log" | tr '\n' ' ')"
            return 1
        fi
        sleep 0.1
    done
    log "dockerd not ready after 30 s, see $state/dockerd.log"
    kill "$pid" 2>/dev/null || true
    return 1
}

unmount_leftovers() {  # dockerd can leave its private bind mount of the data-root and netns mounts
    local m
    awk -v s="$state/" -v e="$exec_root/" 'index($2, s) == 1 || index($2, e) == 1 {print $2}' /proc/mounts |
        sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
}

case $cmd in
start)
    if [ -n "${DOCKER_HOST:-}" ] && ping "$DOCKER_HOST"; then
        log "reusing the engine at DOCKER_HOST"; echo "$DOCKER_HOST"; exit 0
    fi
    if [ -S /var/run/docker.sock ] && ping unix:///var/run/docker.sock; then
        log "reusing the engine at /var/run/docker.sock"; echo unix:///var/run/docker.sock; exit 0
    fi
    if running_pid >/dev/null && ping "unix://$sock"; then
        log "reusing the engine in $state"; echo "unix://$sock"; exit 0
    fi
    command -v dockerd >/dev/null || { log "dockerd not found: apt-get install docker.io"; exit 1; }
    if [ -s "$pidfile" ] && ! running_pid >/dev/null; then rm -f "$pidfile"; unmount_leftovers; fi
    driver=$(cat "$state/driver" 2>/dev/null || echo overlay2)
    if ! start_dockerd "$driver"; then
        [ "$driver" = vfs ] && exit 1
        log "storage driver $driver does not work here: falling back to vfs (slower, every layer a full copy)"
        start_dockerd vfs || exit 1
    fi
    echo "unix://$sock"
    ;;
stop)
    if pid=$(running_pid); then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { log "dockerd $pid did not stop in 10 s"; exit 1; }
        log "stopped dockerd $pid"
    else
        log "no dockerd running in $state"
    fi
    unmount_leftovers
    ;;
host)
    if ! running_pid >/dev/null || ! ping "unix://$sock"; then log "no engine running in $state"; exit 1; fi
    echo "unix://$sock"
    ;;
*)
    echo "usage: $0 start|stop|host [STATE_DIR]" >&2; exit 2
    ;;
esac
