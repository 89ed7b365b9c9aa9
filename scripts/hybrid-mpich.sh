#!/usr/bin/env bash
# The leadership facilities' hybrid model, rehearsed on one machine with Charliecloud: the host's own
# MPICH (Debian's mpiexec.mpich, outside the image) starts the ranks, each rank runs in the MPICH
# image under ch-run, and the image's libmpi.so.12 is replaced at run time by the host's, the way the
# sites put theirs in (a folder holding the host's library under the MPICH ABI's name, bound into
# the container and first on its LD_LIBRARY_PATH: what `module load cray-mpich-abi` +
# APPTAINERENV_LD_LIBRARY_PATH + binds do on Polaris and Frontier, podman-hpc --mpi on Perlmutter).
#
#   bash scripts/hybrid-mpich.sh IMAGE RANKS OUTDIR COMMAND [ARG...]
#   bash scripts/hybrid-mpich.sh hpcmorph-mpich.sqfs 2 $PWD hpcmorph run --config tiny
#   HPCMORPH_NO_SWAP=1 bash scripts/hybrid-mpich.sh ...      (the image's own MPICH, for comparison)
#   HPCMORPH_HOST_MPI=DIR bash scripts/hybrid-mpich.sh ...   (DIR's libmpi.so.12 instead of the host's
#       MPICH: e.g. the lib/ of PyPI's mpich 3.4.3 wheel, the MPICH whose ABI Cray MPICH 8 offers)
#
# OUTDIR is bound at /mnt/out and is the working directory of every rank (outputs in OUTDIR/runs).
# As root with apt, Debian's MPICH is installed on the host if it is missing (--no-install-recommends:
# its mpirun and mpicc alternatives have a lower priority than Open MPI's, which stays the default;
# checked after the install). The host library's folder is kept in $HPCMORPH_CACHE/host-mpich-abi
# (default /var/cache/hpcmorph). ch-run's environment is this one's, with LD_LIBRARY_PATH=/mnt/host-mpi.
set -euo pipefail

die() { printf 'hpcmorph: error: %s\n' "$*" >&2; exit 2; }

[[ $# -ge 4 ]] || die "usage: hybrid-mpich.sh IMAGE RANKS OUTDIR COMMAND [ARG...]"
image=$1 ranks=$2 outdir=$3
shift 3
[[ -f $image ]] || die "no image $image (make image-mpich builds it)"
[[ $ranks =~ ^[1-9][0-9]*$ ]] || die "RANKS must be a whole number, not '$ranks'"
[[ -d $outdir ]] || die "no directory $outdir"
command -v ch-run >/dev/null || die "ch-run not found (Debian: apt-get install charliecloud-runtime)"

# --- the host's MPICH ----------------------------------------------------------------------------
if ! command -v mpiexec.mpich >/dev/null; then
    [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null \
        || die "mpiexec.mpich not found: install Debian's MPICH (apt-get install --no-install-recommends mpich)"
    before=$(update-alternatives --query mpirun 2>/dev/null | sed -n 's/^Value: //p')
    printf 'hybrid-mpich: installing Debian'"'"'s MPICH on the host (apt, --no-install-recommends)\n' >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mpich >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mpich >/dev/null; }
    after=$(update-alternatives --query mpirun 2>/dev/null | sed -n 's/^Value: //p')
    [[ $before == "$after" ]] || die "installing MPICH moved the mpirun alternative from $before to $after"
fi
host_lib=$(readlink -f "$(ldconfig -p | awk '/libmpich\.so\.12 /{print $NF; exit}')")
[[ -f $host_lib ]] || die "the host's MPICH library (libmpich.so.12) was not found"

# The host's library under the ABI's name, in a folder of its own (as cray-mpich-abi's lib-abi-mpich).
cache=${HPCMORPH_CACHE:-/var/cache/hpcmorph}
abi=$cache/host-mpich-abi
if [[ -n ${HPCMORPH_HOST_MPI:-} ]]; then
    abi=$(cd "$HPCMORPH_HOST_MPI" 2>/dev/null && pwd) || die "HPCMORPH_HOST_MPI=$HPCMORPH_HOST_MPI is not a directory"
    [[ -f $abi/libmpi.so.12 ]] || die "HPCMORPH_HOST_MPI=$HPCMORPH_HOST_MPI holds no libmpi.so.12"
elif ! cmp -s "$host_lib" "$abi/libmpi.so.12" 2>/dev/null; then
    mkdir -p "$abi"
    cp "$host_lib" "$abi/libmpi.so.12.partial.$$" && mv "$abi/libmpi.so.12.partial.$$" "$abi/libmpi.so.12"
fi

# --- the ranks ---------------------------------------------------------------------------------------
binds=(-b "$(cd "$outdir" && pwd):/mnt/out")
if [[ -z ${HPCMORPH_NO_SWAP:-} ]]; then
    binds+=(-b "$abi:/mnt/host-mpi")
    export LD_LIBRARY_PATH=/mnt/host-mpi
fi
export USER=${USER:-$(id -un)} MPLCONFIGDIR=${MPLCONFIGDIR:-/tmp/hpcmorph-mpl}
exec mpiexec.mpich -n "$ranks" ch-run "${binds[@]}" -c /mnt/out "$image" -- "$@"
