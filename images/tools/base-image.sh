#!/usr/bin/env bash
# Build the Debian bookworm + Python 3.11 base image from scratch, for machines that
# cannot pull python:3.11-slim-bookworm (no image registry reachable), and import it into Docker.
#
#   images/tools/base-image.sh [--force]
#
# Cached twice: skipped when the image already exists in the engine; the root filesystem
# tarball under the cache dir is re-imported when the engine is new but the tarball is not.
# Needs root (debootstrap), the Debian packages debootstrap and docker.io, and DOCKER_HOST
# pointing at a running engine (images/tools/dockerd.sh start prints it).
#
# Environment:
#   CONVEYOR_BASE_TAG   image name        (default conveyor/debian-python:bookworm)
#   CONVEYOR_CACHE      cache directory   (default <repo>/.cache/images)
#   DEBIAN_MIRROR       Debian mirror     (default: the first URIs: line of
#                                           /etc/apt/sources.list.d/debian.sources)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tag=${CONVEYOR_BASE_TAG:-conveyor/debian-python:bookworm}
cache=${CONVEYOR_CACHE:-$repo/.cache/images}
suite=bookworm
# What a Python 3.11 runtime image needs beyond minbase: the interpreter, venv (with its
# bundled pip wheel, so /opt/conveyor can be a venv), pip, CA roots for TLS to S3/MinIO,
# and netbase (/etc/services, /etc/protocols) for socket lookups.
packages=python3,python3-venv,python3-pip,ca-certificates,netbase
force=0
[ "${1:-}" = --force ] && force=1

log() { echo "base-image: $*" >&2; }

if [ -z "${DEBIAN_MIRROR:-}" ]; then
    DEBIAN_MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
fi

if [ "$force" = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    log "$tag exists, skipping (use --force to rebuild)"
    exit 0
fi

mkdir -p "$cache/debs"
rootfs=$cache/rootfs-$suite
tarball=$cache/debian-python-$suite.tar

# Unmount anything debootstrap left mounted under the rootfs (proc, sys, dev binds after
# a failure) before deleting it: rm -rf through a bind mount of /dev would hit the host.
unmount_rootfs() {
    local m
    awk -v r="$rootfs" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" || true; done
    if awk -v r="$rootfs" '$2 == r || index($2, r "/") == 1 {found=1} END {exit !found}' /proc/mounts; then
        log "refusing to delete $rootfs: still has mounts"; return 1
    fi
}
remove_rootfs() { [ -d "$rootfs" ] && unmount_rootfs && rm -rf --one-file-system "$rootfs"; return 0; }

if [ "$force" = 1 ] || [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { log "debootstrap not installed (apt-get install debootstrap)"; exit 1; }
    [ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
    remove_rootfs
    trap remove_rootfs EXIT
    log "debootstrap $suite minbase from $DEBIAN_MIRROR (+ $packages)"
    start=$(date +%s)
    # A mirror caught mid-update answers with a Release file whose signature does not check out
    # ("Invalid Release signature"): seen once in CI, gone a minute later. Try up to three times.
    for attempt in 1 2 3; do
        if debootstrap --variant=minbase --include="$packages" --components=main \
            --cache-dir="$cache/debs" "$suite" "$rootfs" "$DEBIAN_MIRROR" >"$cache/debootstrap.log" 2>&1; then
            break
        fi
        tail -20 "$cache/debootstrap.log" >&2
        if [ "$attempt" = 3 ]; then
            log "debootstrap failed (full log: $cache/debootstrap.log)"
            exit 1
        fi
        log "debootstrap failed (attempt $attempt of 3): trying again in $(( attempt * 20 )) s"
        remove_rootfs
        sleep $(( attempt * 20 ))
    done
    log "debootstrap took $(( $(date +%s) - start )) s"
    unmount_rootfs
    # apt inside the image uses the same mirror as this machine.
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/debian.sources"
        rm -f "$rootfs/etc/apt/sources.list"
    else
        echo "deb $DEBIAN_MIRROR $suite main" >"$rootfs/etc/apt/sources.list"
    fi
    # Slim it the way the official slim images do; Docker provides /dev, hostname, resolv.conf.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
           "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
           "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/debootstrap
    find "$rootfs/dev" -mindepth 1 -delete
    find "$rootfs" -xdev -name __pycache__ -type d -prune -exec rm -rf {} +
    : >"$rootfs/etc/hostname"
    : >"$rootfs/etc/resolv.conf"
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    remove_rootfs
    trap - EXIT
fi

log "importing $tarball as $tag"
docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    "$tarball" "$tag" >/dev/null
docker image inspect --format '{{.Size}}' "$tag" | awk -v t="$tag" '{printf "base-image: %s: %.0f MB\n", t, $1/1e6}' >&2
