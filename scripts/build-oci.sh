#!/usr/bin/env bash
# Build an OCI image of a def file's image (the CPU one by default) for Docker and Podman (laptops,
# macOS and Windows included) and for podman-hpc (NERSC), and save it as an archive that
# `docker load` and `podman load` accept. No registry is needed: the root file system is the one
# scripts/build-image.sh makes (debootstrap, %setup, %post, %test), imported with `podman import`
# as the image's one layer, with the def's %environment, %labels and a working directory set as
# the image's configuration.
#
#   bash scripts/build-oci.sh [DEF] [ARCHIVE]     (as root; `make image-oci`)
#   docker load -i hpcmorph-cpu-oci.tar           (or podman load; then, on the machine that runs it:)
#   docker run --rm -v "$PWD:/mnt/out" localhost/hpcmorph-cpu:latest hpcmorph run --config laptop
#
# DEF defaults to apptainer/hpcmorph-cpu.def, ARCHIVE to DEF's name with -oci.tar. The image is
# named localhost/NAME:latest and localhost/NAME:COMMIT, NAME being DEF's name (hpcmorph-cpu), and
# stays in this machine's podman storage too. Environment: what scripts/build-image.sh reads
# (HPCMORPH_CACHE, HPCMORPH_BUILD_TMP, HPCMORPH_NO_TEST, HPCMORPH_NO_APT).
set -euo pipefail

say() { printf 'build-oci: %s\n' "$*"; }
usage_error() { printf 'hpcmorph: error: %s\n' "$*" >&2; exit 2; }

def=${1:-apptainer/hpcmorph-cpu.def}
[[ $# -le 2 ]] || usage_error "build-oci.sh takes DEF and ARCHIVE, not more arguments"
[[ -f "$def" ]] || usage_error "no definition file $def"
name=$(basename "$def" .def)
archive=${2:-$name-oci.tar}
[[ $archive == *.tar ]] || usage_error "ARCHIVE must end in .tar (what docker load reads), not '$archive'"
[[ -d "$(dirname "$archive")" ]] || usage_error "no directory $(dirname "$archive") for $archive"
[[ $(id -u) -eq 0 ]] || usage_error "build-oci.sh must run as root (it runs scripts/build-image.sh)"
here=$(cd "$(dirname "$0")" && pwd)

# runc beside Debian's default crun: crun 1.8 refuses a host whose cgroups are mounted in hybrid
# mode (v1 controllers beside a v2 hierarchy), which runc runs in (docs/hpc.md, the OCI image).
if [[ -z ${HPCMORPH_NO_APT:-} ]]; then
    bash "$here/apt-tool.sh" podman podman
    bash "$here/apt-tool.sh" runc runc
fi
command -v podman >/dev/null || usage_error "no podman (install Debian's podman, or run without HPCMORPH_NO_APT as root)"

work=$(mktemp -d "${HPCMORPH_BUILD_TMP:-/var/tmp}/hpcmorph-oci.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
t0=$SECONDS
bash "$here/build-image.sh" "$def" "$work/rootfs.tar"

# The image's configuration from what the def wrote into the root: %environment (Apptainer's
# PATH and variables; docker sources no scripts), %labels, and what every container of the image
# needs: Open MPI's consent to run as root (Docker's default user) and a bind target for outputs.
# (Dockerfile syntax, one instruction per --change.)
changes=(--change "ENV PATH=/opt/hpcmorph/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
         --change "ENV OMP_NUM_THREADS=1" --change "ENV OMPI_ALLOW_RUN_AS_ROOT=1"
         --change "ENV OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1" --change "ENV LANG=C.UTF-8"
         --change "WORKDIR /mnt/out" --change 'CMD ["hpcmorph", "--help"]')
# Label values hold spaces and parentheses: quoted as JSON strings, which LABEL reads.
while IFS= read -r label; do
    changes+=(--change "LABEL $label")
done < <(tar -xOf "$work/rootfs.tar" ./.singularity.d/labels.json \
         | python3 -c 'import json, sys; [print(f"{k}={json.dumps(v)}") for k, v in json.load(sys.stdin).items()]')
commit=$(git -c safe.directory='*' rev-parse --short HEAD 2>/dev/null || echo unknown)
changes+=(--change "LABEL org.opencontainers.image.revision=\"$commit\"")

say "podman import ($(du -h "$work/rootfs.tar" | cut -f1) root file system)"
t1=$SECONDS
podman import --quiet "${changes[@]}" "$work/rootfs.tar" "localhost/$name:latest" >/dev/null
podman tag "localhost/$name:latest" "localhost/$name:$commit"
rm -f -- "$work/rootfs.tar"
say "imported as localhost/$name:latest and :$commit in $((SECONDS - t1)) s"

t1=$SECONDS
partial="$archive.partial.$$"
trap 'rm -rf -- "$work"; rm -f -- "$partial"' EXIT
# docker-archive: the format both `docker load` and `podman load` read (an oci-archive is not
# loaded by Docker before 25).
podman save --quiet --format docker-archive -o "$partial" "localhost/$name:latest"
mv -f -- "$partial" "$archive"
say "archive: $archive ($(du -h "$archive" | cut -f1)), saved in $((SECONDS - t1)) s; $((SECONDS - t0)) s in all"
