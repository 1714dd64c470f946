#!/usr/bin/env bash
# Build and tag bittune's component images: {REGISTRY}/bittune-{cpu,gpu,tpu}:{TAG}.
#   docker/build.sh [--registry R] [--tag T] [--base-image IMAGE] [--push] [cpu] [gpu] [tpu]
# Defaults: the names the pipeline uses (components/image.py), all three kinds, no push.
# Push to Artifact Registry with --registry LOCATION-docker.pkg.dev/PROJECT/REPO --push
# (after `gcloud auth configure-docker LOCATION-docker.pkg.dev`).
set -euo pipefail
cd "$(dirname "$0")/.."
setting() { sed -n "s/^$1 = \"\(.*\)\"$/\1/p" components/image.py; }
registry=$(setting IMAGE_REGISTRY)
tag=$(setting IMAGE_TAG)
base_image=""
push=false
kinds=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --registry) registry="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --base-image) base_image="$2"; shift 2 ;;
    --push) push=true; shift ;;
    cpu | gpu | tpu) kinds+=("$1"); shift ;;
    -h | --help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ ${#kinds[@]} -gt 0 ]] || kinds=(cpu gpu tpu)
for kind in "${kinds[@]}"; do
  image="${registry%/}/bittune-${kind}:${tag}"
  args=(--build-arg "ACCELERATOR=${kind}" --tag "$image" --file docker/Dockerfile)
  [[ -n $base_image ]] && args+=(--build-arg "BASE_IMAGE=${base_image}")
  echo "building $image" >&2
  docker build "${args[@]}" .
  if $push; then
    docker push "$image"
  fi
done
