#!/usr/bin/env bash
# Builds virnucpro's container image (the Containerfile at the top of the checkout) with podman and
# writes it twice into DIR:
#   DIR/virnucpro.oci.tar  an OCI archive; on a cluster: apptainer build virnucpro.sif oci-archive://DIR/virnucpro.oci.tar
#   DIR/virnucpro.ch/      a Charliecloud directory image: ch-run DIR/virnucpro.ch -- virnucpro-slurm --help
#
# usage: container/build.sh --out DIR [--base debootstrap|IMAGE] [--wheels DIR] [--torch REQUIREMENT]
#   --base IMAGE       a Debian-based image podman can pull or has (default debian:bookworm-slim)
#   --base debootstrap where no image registry can be reached: a Debian bookworm minbase root file
#                      system from the mirror this machine's apt uses, imported as a local image
#                      (kept as localhost/virnucpro-debootstrap:bookworm and reused; podman rmi it to
#                      refresh)
#   --wheels DIR       install torch from the wheels in DIR, without an index (e.g. a CPU build)
#   --torch REQ        the torch requirement (default: the Containerfile's, PyPI's CUDA build)
# The package index is reached with this machine's pip settings and CA bundle, passed to the build
# as secrets (never stored in the image). Run as root, missing tools (podman, charliecloud,
# debootstrap) are installed with apt.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

out="" base="docker.io/library/debian:bookworm-slim" wheels="" torch=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="${2:?--out needs a folder}"; shift 2 ;;
        --base) base="${2:?--base needs debootstrap or an image}"; shift 2 ;;
        --wheels) wheels="${2:?--wheels needs a folder}"; shift 2 ;;
        --torch) torch="${2:?--torch needs a requirement}"; shift 2 ;;
        -h|--help) usage ;;
        *) echo "build.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
[ -n "$out" ] || { echo "build.sh: --out DIR is required" >&2; usage; }
# A rebuild replaces the image folder this script wrote (it holds ch/virnucpro-image.json); anything
# else of that name is the user's, and is never removed.
if [ -e "$out/virnucpro.ch" ] || [ -L "$out/virnucpro.ch" ]; then
    if [ -L "$out/virnucpro.ch" ] || [ ! -f "$out/virnucpro.ch/ch/virnucpro-image.json" ]; then
        echo "build.sh: $out/virnucpro.ch exists and is not an image this script built; move it away or give another --out" >&2
        exit 2
    fi
fi
if [ -n "$wheels" ] && ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "build.sh: $wheels: no .whl files there; give the folder that holds the torch wheel" >&2
    exit 2
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
started=$SECONDS
timings=() phase_name=tools phase_start=$SECONDS
phase() {  # phase NAME MESSAGE: the phase before ends, NAME starts (seconds of each, in the summary)
    timings+=("$phase_name $((SECONDS - phase_start)) s")
    phase_name=$1 phase_start=$SECONDS
    echo "build.sh: $2" >&2
}

install_missing() {  # install_missing COMMAND PACKAGE ...
    local missing=() command package
    while [ $# -gt 1 ]; do
        command="$1" package="$2"; shift 2
        command -v "$command" >/dev/null || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "build.sh: missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

tools=(podman podman ch-convert charliecloud)
[ "$base" = debootstrap ] && tools+=(debootstrap debootstrap)
install_missing "${tools[@]}"

work="$(mktemp -d "${TMPDIR:-/tmp}/virnucpro-build.XXXXXX")"
container=""
trap 'rm -rf "$work"; [ -z "$container" ] || podman rm -f "$container" >/dev/null 2>&1' EXIT

debian_mirror() {
    # The Debian archive this machine's apt reads (sources.list or deb822 .sources alike).
    apt-get indextargets --format '$(SITE)' 'Identifier: Packages' 'Label: Debian' 'Component: main' 2>/dev/null | head -n 1
}

use_debootstrap_base() {  # sets base to a local image of a Debian bookworm minbase root file system
    local mirror rootfs="$work/rootfs"
    base=localhost/virnucpro-debootstrap:bookworm
    podman image exists "$base" && return
    mirror="$(debian_mirror)"
    if [ -z "$mirror" ] && [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        mirror="$(debian_mirror)"
    fi
    [ -n "$mirror" ] || { echo "build.sh: no Debian mirror in this machine's apt sources; use --base IMAGE" >&2; exit 1; }
    phase debootstrap "debootstrap: bookworm minbase from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >&2
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import --message "debootstrap bookworm minbase" - "$base" >/dev/null
    rm -rf "$rootfs"
}

[ "$base" = debootstrap ] && use_debootstrap_base

version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$root/virnucpro/__init__.py")"
revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$revision" != unknown ] && [ -n "$(git -C "$root" status --porcelain -- Containerfile virnucpro setup.cfg pyproject.toml slurm_templates 2>/dev/null)" ]; then
    revision="$revision-modified"
fi
source_url="$(git -C "$root" remote get-url origin 2>/dev/null || echo unknown)"
tag="localhost/virnucpro:$version"

ca="$(python3 "$root/container/pip_settings.py" "$work/pip.conf")"
build=(podman build --isolation "${BUILDAH_ISOLATION:-chroot}" --network host -f "$root/Containerfile" -t "$tag"
       --build-arg "BASE=$base" --build-arg "VERSION=$version" --build-arg "REVISION=$revision"
       --build-arg "SOURCE=$source_url" --secret "id=pip.conf,src=$work/pip.conf")
[ -n "$ca" ] && build+=(--secret "id=ca,src=$ca")
[ -n "$torch" ] && build+=(--build-arg "TORCH=$torch")
if [ -n "$wheels" ]; then
    wheels_id="$(cd "$wheels" && sha256sum -- *.whl | sha256sum | cut -c1-16)"
    build+=(--build-context "wheels=$(cd "$wheels" && pwd)" --build-arg "WHEELS_ID=$wheels_id")
fi
phase build "building $tag from $base"
previous="$(podman image inspect "$tag" --format '{{.Id}}' 2>/dev/null || true)"
"${build[@]}" "$root" >&2
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect "$tag" --format '{{.Id}}')" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true  # the build this one replaces (the layers they share stay)
fi

mkdir -p "$out"
rm -f "$out/virnucpro.oci.tar.partial"
phase oci-archive "writing $out/virnucpro.oci.tar"
podman save --format oci-archive -o "$out/virnucpro.oci.tar.partial" "$tag"
mv -f "$out/virnucpro.oci.tar.partial" "$out/virnucpro.oci.tar"
phase charliecloud "writing $out/virnucpro.ch"
# What `ch-convert -i podman` does (the image's files plus its environment as ch/environment, for
# `ch-run --set-env`), without gzipping the 1.5 GB export and unpacking it again: a tar in, a
# directory out. ch/virnucpro-image.json names the image it came from (submit records it).
container="$(podman create --read-only "$tag" /bin/true)"
podman export -o "$work/image.tar" "$container"
podman rm "$container" >/dev/null
container=""
mkdir -p "$work/metadata/ch"
podman image inspect "$tag" --format '{{range .Config.Env}}{{println .}}{{end}}' > "$work/metadata/ch/environment"
printf '{"id": "sha256:%s", "tag": "%s", "version": "%s", "revision": "%s"}\n' \
    "$(podman image inspect "$tag" --format '{{.Id}}')" "$tag" "$version" "$revision" > "$work/metadata/ch/virnucpro-image.json"
tar -r -f "$work/image.tar" -C "$work/metadata" ch/environment ch/virnucpro-image.json
rm -rf "$out/virnucpro.ch.partial"
ch-convert -i tar -o dir "$work/image.tar" "$out/virnucpro.ch.partial" >&2
rm -f "$work/image.tar"
rm -rf "$out/virnucpro.ch"
mv "$out/virnucpro.ch.partial" "$out/virnucpro.ch"

phase done "done"
summary="$(printf '%s, ' "${timings[@]}")"
echo "built $tag in $((SECONDS - started)) s (base $base; ${summary%, })"
echo "  $out/virnucpro.oci.tar  $(du -h "$out/virnucpro.oci.tar" | cut -f1)"
echo "  $out/virnucpro.ch/      $(du -sh "$out/virnucpro.ch" | cut -f1)"
