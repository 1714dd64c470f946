#!/usr/bin/env bash
# Build a base image without a registry: Debian bookworm (Python 3.11) from debootstrap,
# imported into the local Docker daemon. For machines that cannot pull python:3.11-slim.
#   docker/build-base.sh [IMAGE]          (default bittune-base:bookworm; needs root)
#   docker/build.sh --base-image bittune-base:bookworm cpu
# The base trusts this machine's CA bundle, so pip works behind the same TLS proxy.
set -euo pipefail
image="${1:-bittune-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$rootfs" "$mirror" >&2
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "$image"
