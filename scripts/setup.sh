#!/usr/bin/env bash
# Bring this machine to a state where hpcmorph runs: an MPI, parallel HDF5 if it can be had, and the
# project virtualenv (.venv) with every Python dependency. Idempotent: a second call with the same
# inputs prints one line and returns. The Apptainer recipes run this same script in %post.
#
# Order of preference for MPI and HDF5 (a facility user with modules loaded comes first):
#   1. what is already on the machine: $MPICC or mpicc on PATH; parallel HDF5 from $HDF5_DIR or
#      pkg-config (hdf5-openmpi, hdf5-mpich, hdf5-mpi);
#   2. as root with apt: Debian's OpenMPI and libhdf5-openmpi-dev;
#   3. PyPI's MPI wheel (mpich) and the serial h5py wheel: every stage still runs, ranks write shards.
#
# Environment: PYTHON (interpreter for the venv, default python3), VENV (default .venv),
# HPCMORPH_NO_APT=1 (never call apt), HPCMORPH_WITH_HOROVOD=1 (also build and install Horovod).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CONSTRAINTS=requirements/constraints.txt
say() { printf 'setup: %s\n' "$*"; }

inputs_hash=$(cat scripts/setup.sh pyproject.toml "$CONSTRAINTS" | sha256sum | cut -c1-16)
stamp="$VENV/.setup-$inputs_hash"
if [[ -f "$stamp" ]]; then
    say "environment up to date ($VENV)"
    exit 0
fi

is_root() { [[ $(id -u) -eq 0 ]]; }
can_apt() { is_root && command -v apt-get >/dev/null && [[ -z "${HPCMORPH_NO_APT:-}" ]]; }

parallel_hdf5_pc() {
    local name
    command -v pkg-config >/dev/null || return 1
    for name in hdf5-openmpi hdf5-mpich hdf5-mpi; do
        if pkg-config --exists "$name"; then echo "$name"; return 0; fi
    done
    return 1
}

hdf5_dir_is_parallel() {
    [[ -n "${HDF5_DIR:-}" ]] && grep -qs 'define H5_HAVE_PARALLEL 1' "$HDF5_DIR"/include/H5pubconf*.h
}

# --- 1/2: MPI and parallel HDF5 from the machine, or from apt -------------------------------
mpicc_bin=${MPICC:-$(command -v mpicc || true)}
hdf5_pc=$(parallel_hdf5_pc || true)
have_parallel_hdf5() { [[ -n "$hdf5_pc" ]] || hdf5_dir_is_parallel; }
if { [[ -z "$mpicc_bin" ]] || ! have_parallel_hdf5; } && can_apt; then
    say "installing OpenMPI and parallel HDF5 with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config >/dev/null
    mpicc_bin=${MPICC:-$(command -v mpicc || true)}
    hdf5_pc=$(parallel_hdf5_pc || true)
fi

mode=serial
if [[ -n "$mpicc_bin" ]] && have_parallel_hdf5; then
    mode=parallel
fi

# --- 3: the virtualenv -------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS")
"${pip[@]}" numpy mpi4py Cython pkgconfig 'setuptools>=77' packaging wheel

want_mpi=False
if [[ $mode == parallel ]]; then
    want_mpi=True
    if ! "$VENV/bin/python" -c 'import h5py, sys; sys.exit(0 if h5py.get_config().mpi else 1)' 2>/dev/null; then
        say "building h5py against parallel HDF5 (${hdf5_pc:-HDF5_DIR=$HDF5_DIR}, $mpicc_bin); takes a few minutes"
        # Without --no-build-isolation the build pins an old mpi4py from source and hangs for 20+ min.
        env CC="$mpicc_bin" HDF5_MPI=ON ${hdf5_pc:+HDF5_PKGCONFIG_NAME=$hdf5_pc} \
            "${pip[@]}" --no-cache-dir --no-build-isolation --no-binary=h5py --force-reinstall --no-deps h5py
    fi
else
    say "no MPI compiler or parallel HDF5 found and apt not usable: using PyPI's mpich and serial h5py (ranks write shards)"
    if [[ -z "$mpicc_bin" ]]; then "${pip[@]}" mpich; fi
    "${pip[@]}" h5py
fi

"${pip[@]}" torch torchvision
"${pip[@]}" -e ".[test]"

# A later plain `pip install h5py` (here or by a user) silently swaps in the serial wheel: check.
"$VENV/bin/python" - "$want_mpi" <<'EOF'
import sys
import h5py, mpi4py, torch, galsim  # noqa: F401
want = sys.argv[1] == "True"
if h5py.get_config().mpi != want:
    sys.exit(f"setup: h5py MPI support is {h5py.get_config().mpi}, expected {want}: "
             "a serial h5py wheel replaced the parallel build; rerun after `rm -rf .venv`")
print(f"setup: ok (h5py {h5py.__version__} mpi={want}, torch {torch.__version__}, galsim {galsim.__version__})")
EOF

if [[ -n "${HPCMORPH_WITH_HOROVOD:-}" && -x scripts/build-horovod.sh ]]; then
    scripts/build-horovod.sh "$VENV/bin/python" "${HPCMORPH_CACHE:-.cache}/wheels"
fi

rm -f "$VENV"/.setup-*
touch "$stamp"
