#!/usr/bin/env bash
# Prepares a Debian machine without a container daemon or registry access to build and run the
# serving image: Debian's podman (with runc; crun fails on these machines' rlimits and hybrid
# cgroups) and a Debian bookworm base image made from Debian's own packages with debootstrap.
# Also podman-compose, for the compose stack's test. Idempotent; needs root. Prints the base image's name. Used by `make image-test`.
set -euo pipefail
BASE=localhost/debian-base:bookworm
CACHE=${RNNKIT_IMAGE_CACHE:-$HOME/.cache/rnnkit}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null \
    || ! command -v iptables >/dev/null || ! command -v podman-compose >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman runc debootstrap uidmap slirp4netns fuse-overlayfs netavark aardvark-dns iptables \
        podman-compose >/dev/null
fi
mkdir -p /etc/containers
if ! grep -q 'runtime = "runc"' /etc/containers/containers.conf 2>/dev/null; then
    cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
fi
if ! podman image exists "$BASE"; then
    mkdir -p "$CACHE"
    tarball="$CACHE/debian-bookworm-minbase.tar"
    if [ ! -s "$tarball" ]; then
        rootfs=$(mktemp -d)
        debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >/dev/null
        # As Debian's slim images: no package caches, docs, man pages or locales (now or later).
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
            "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
        printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-exclude /usr/share/man/*' \
            'path-exclude /usr/share/locale/*' > "$rootfs/etc/dpkg/dpkg.cfg.d/01-slim"
        tar -C "$rootfs" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    fi
    podman import --quiet "$tarball" "$BASE" >/dev/null
fi
echo "$BASE"
