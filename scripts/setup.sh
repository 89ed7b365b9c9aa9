#!/usr/bin/env bash
# Bring this machine to a state where hpcmorph runs: an MPI, parallel HDF5 if it can be had, and the
# project virtualenv (.venv) with every Python dependency. Idempotent: a second call with the same
# inputs prints one line and returns. The Apptainer recipes run this same script in %post.
#
# Order of preference for MPI and HDF5 (a facility user with modules loaded comes first):
#   1. what is already on the machine: $MPICC or mpicc on PATH; parallel HDF5 from
#      $HDF5_INCLUDEDIR (+ $HDF5_LIBDIR), $HDF5_DIR (a prefix with include/ and lib/ or lib64/) or
#      pkg-config (hdf5-openmpi, hdf5-mpich, hdf5-mpi);
#   2. as root with apt: Debian's OpenMPI and libhdf5-openmpi-dev;
#   3. PyPI's MPI wheel (mpich) and the serial h5py wheel: every stage still runs, ranks write shards.
#
# Environment: PYTHON (interpreter for the venv, default python3), VENV (default .venv),
# HPCMORPH_NO_APT=1 (never call apt), HPCMORPH_MPI=wheel (skip 1 and 2: take 3 even where the
# machine has an MPI; default auto), HPCMORPH_CACHE (the parallel h5py wheel is kept in its wheels/;
# default /var/cache/hpcmorph as root, else ~/.cache/hpcmorph). Horovod is built separately:
# `make horovod`.
# `scripts/setup.sh --check` only says whether $VENV is up to date (exit 0) or why not (exit 1).
# pip's "Location 'file:...' is ignored" warnings (local indexes in this machine's pip config that
# lack a project) are dropped from the output; every other line and pip's exit status are kept.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
HPCMORPH_MPI=${HPCMORPH_MPI:-auto}
# Built wheels kept between set-ups on this machine (the parallel h5py).
if [[ $(id -u) -eq 0 ]]; then
    HPCMORPH_CACHE=${HPCMORPH_CACHE:-/var/cache/hpcmorph}
else
    HPCMORPH_CACHE=${HPCMORPH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hpcmorph}
fi
CONSTRAINTS=requirements/constraints.txt
say() { printf 'setup: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }

check_only=
case ${1:-} in
    "") ;;
    --check) check_only=1 ;;
    *) die "unknown argument '$1' (the only one is --check)" ;;
esac
case $HPCMORPH_MPI in
    auto|wheel) ;;
    *) die "HPCMORPH_MPI must be auto or wheel, not '$HPCMORPH_MPI'" ;;
esac

inputs_hash=$({ cat scripts/setup.sh pyproject.toml "$CONSTRAINTS"; echo "HPCMORPH_MPI=$HPCMORPH_MPI"; } \
    | sha256sum | cut -c1-16)
stamp="$VENV/.setup-$inputs_hash"

# Why the venv at $VENV cannot be used where it is (nothing printed: it can). The stamp alone proves
# nothing: a venv copied from elsewhere (another checkout, or into a container image by a build
# context that took the working directory) carries its stamp, while its python link and the `#!`
# lines of its scripts still point at the place it was made.
venv_problem() {
    [[ -e "$VENV/bin/python" || -L "$VENV/bin/python" ]] || return 0
    local out
    out=$("$VENV/bin/python" - "$VENV" 2>&1 <<'EOF'
import os, sys
venv = os.path.realpath(sys.argv[1])
if os.path.realpath(sys.prefix) != venv:
    sys.exit(f"problem: its python belongs to {sys.prefix}")
# pip writes the venv's python into the #! line of every script it installs.
script = os.path.join(venv, "bin", "hpcmorph")
if os.path.exists(script):
    with open(script, "rb") as f:
        words = f.readline().decode(errors="replace")[2:].split()
    if not words or os.path.realpath(os.path.dirname(words[0])) != os.path.join(venv, "bin"):
        sys.exit(f"problem: bin/hpcmorph starts {words[0] if words else 'no interpreter'}, not this venv's python")
EOF
    ) && return 0
    case $out in
        problem:*) echo "${out#problem: }" ;;
        *) echo "its python does not run here ($(tail -n1 <<<"$out" | sed "s/^[^:]*: line [0-9]*: //" | cut -c1-200))" ;;
    esac
}

problem=$(venv_problem)
if [[ -n "$problem" ]]; then
    if [[ -n "$check_only" ]]; then say "$VENV must be rebuilt: $problem"; exit 1; fi
    # Only what is surely a venv is removed (a VENV=/usr typed by mistake must survive).
    [[ -f "$VENV/pyvenv.cfg" ]] || die "$VENV is not usable ($problem) and has no pyvenv.cfg: not removing it"
    say "rebuilding $VENV: $problem"
    rm -rf -- "$VENV"
elif [[ -f "$stamp" ]]; then
    say "environment up to date ($VENV)"
    exit 0
fi
if [[ -n "$check_only" ]]; then say "$VENV is not set up for these inputs (no $stamp)"; exit 1; fi

is_root() { [[ $(id -u) -eq 0 ]]; }
can_apt() {
    [[ $HPCMORPH_MPI == auto && -z "${HPCMORPH_NO_APT:-}" ]] && is_root && command -v apt-get >/dev/null
}

# Run "$@" with exactly pip's "Location 'file:...' is ignored: it is neither a file nor a directory."
# lines taken out of its stderr. stdout stays stdout; the status is the command's (pipefail; sed
# exits 0 whatever it drops).
filter_pip() {
    { "$@" 2>&1 1>&3 3>&- \
        | sed -u "/^WARNING: Location 'file:[^']*' is ignored: it is neither a file nor a directory\.\$/d" >&2 3>&-
    } 3>&1
}

# --- 1/2: MPI and parallel HDF5 from the machine, or from apt -------------------------------
# The mpich wheel of an earlier fallback set-up puts an mpicc into $VENV/bin: not the machine's.
venv_bin=$(cd "$VENV/bin" 2>/dev/null && pwd -P || true)
find_mpicc() {
    local p
    if [[ -n "${MPICC:-}" ]]; then command -v "$MPICC"; return; fi
    while IFS= read -r p; do
        [[ -n "$venv_bin" && $(cd "$(dirname "$p")" && pwd -P) == "$venv_bin" ]] && continue
        echo "$p"; return 0
    done < <(type -ap mpicc)
    return 1
}

include_is_parallel() { grep -qs 'define H5_HAVE_PARALLEL 1' "$1"/H5pubconf*.h; }

# Sets hdf5_build (the variables h5py's build gets; h5py refuses more than one of HDF5_DIR,
# HDF5_INCLUDEDIR/LIBDIR and HDF5_PKGCONFIG_NAME, and reads only $HDF5_DIR/lib, so a prefix is
# passed as explicit include and lib dirs) and hdf5_what (for messages). Fails if none is parallel.
hdf5_build=() hdf5_what=
find_parallel_hdf5() {
    local d name
    if [[ -n "${HDF5_INCLUDEDIR:-}" ]] && include_is_parallel "$HDF5_INCLUDEDIR"; then
        hdf5_build=(HDF5_INCLUDEDIR="$HDF5_INCLUDEDIR" ${HDF5_LIBDIR:+HDF5_LIBDIR="$HDF5_LIBDIR"})
        hdf5_what="HDF5_INCLUDEDIR=$HDF5_INCLUDEDIR"
        return 0
    fi
    if [[ -n "${HDF5_DIR:-}" ]] && include_is_parallel "$HDF5_DIR/include"; then
        for d in lib lib64 lib; do
            compgen -G "$HDF5_DIR/$d/libhdf5.so*" >/dev/null && break
        done
        hdf5_build=(HDF5_INCLUDEDIR="$HDF5_DIR/include" HDF5_LIBDIR="$HDF5_DIR/$d")
        hdf5_what="HDF5_DIR=$HDF5_DIR"
        return 0
    fi
    command -v pkg-config >/dev/null || return 1
    # Debian can hold both MPIs: the HDF5 built for the one mpicc compiles with comes first (OpenMPI
    # unless the alternatives say MPICH, as in the MPICH image).
    local names=(hdf5-openmpi hdf5-mpich hdf5-mpi)
    case $(readlink -f "${mpicc_bin:-/nonexistent}" 2>/dev/null) in
        *mpich*) names=(hdf5-mpich hdf5-openmpi hdf5-mpi) ;;
    esac
    for name in "${names[@]}"; do
        if pkg-config --exists "$name"; then
            hdf5_build=(HDF5_PKGCONFIG_NAME="$name")
            hdf5_what="pkg-config $name"
            return 0
        fi
    done
    return 1
}

mpicc_bin= have_hdf5=
detect() {
    mpicc_bin=$(find_mpicc || true)
    if find_parallel_hdf5; then have_hdf5=1; else have_hdf5=; fi
}
if [[ $HPCMORPH_MPI == auto ]]; then
    if [[ -n "${MPICC:-}" ]] && ! command -v "$MPICC" >/dev/null; then
        die "MPICC=$MPICC is not a command"
    fi
    detect
    if { [[ -z "$mpicc_bin" ]] || [[ -z "$have_hdf5" ]]; } && can_apt; then
        say "installing OpenMPI and parallel HDF5 with apt"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config >/dev/null
        detect
    fi
fi

mode=serial
if [[ -n "$mpicc_bin" && -n "$have_hdf5" ]]; then
    mode=parallel
fi

# --- 3: the virtualenv -------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS")
filter_pip "${pip[@]}" numpy mpi4py Cython pkgconfig 'setuptools>=77' packaging wheel

h5py_has_mpi() { "$VENV/bin/python" -c 'import h5py, sys; sys.exit(0 if h5py.get_config().mpi else 1)' 2>/dev/null; }
want_mpi=False
if [[ $mode == parallel ]]; then
    want_mpi=True
    # mpi4py loads the mpich wheel's libmpi when one is in the venv (a former fallback set-up),
    # while h5py links the machine's: take it out.
    if "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("mpich")' 2>/dev/null; then
        say "removing the mpich wheel from $VENV: mpi4py would load it instead of $mpicc_bin's MPI"
        filter_pip "$VENV/bin/python" -m pip uninstall -q -y mpich
    fi
    if ! h5py_has_mpi; then
        # The parallel h5py takes minutes to build, so the wheel is kept ($HPCMORPH_CACHE/wheels)
        # under a name made of everything the build depends on: a rebuilt venv, another checkout or
        # the image build (scripts/build-image.sh hands this folder to %post) on the same system,
        # Python, MPI and HDF5 installs it in seconds, and a wheel built against anything else is
        # never taken. (pip's own cache cannot be used: it would hand back a wheel built with other
        # settings, hence --no-cache-dir.)
        h5py_key=$({
            grep -E '^(ID|VERSION_ID)=' /etc/os-release 2>/dev/null; uname -m
            "$VENV/bin/python" -c 'import sys; print(sys.version_info[:2])'
            grep -E '^(h5py|mpi4py|numpy)==' "$CONSTRAINTS"
            readlink -f "$mpicc_bin"; "$mpicc_bin" -showme 2>/dev/null || "$mpicc_bin" -show 2>/dev/null || true
            echo "$hdf5_what ${hdf5_build[*]}"
            case $hdf5_what in
                pkg-config*) pkg-config --modversion "${hdf5_what#pkg-config }" ;;
                HDF5_INCLUDEDIR=*) grep -h 'define H5_VERSION' "$HDF5_INCLUDEDIR"/H5pubconf*.h ;;
                HDF5_DIR=*) grep -h 'define H5_VERSION' "$HDF5_DIR"/include/H5pubconf*.h ;;
            esac || true
        } | sha256sum | cut -c1-16)
        wheels=$HPCMORPH_CACHE/wheels/h5py-mpi-$h5py_key
        wheel=$(compgen -G "$wheels/h5py-*.whl" | head -n1 || true)
        if [[ -n $wheel ]]; then
            say "installing the parallel h5py built earlier on this system ($wheel)"
        else
            say "building h5py against parallel HDF5 ($hdf5_what, $mpicc_bin); takes a few minutes"
            mkdir -p "$wheels" 2>/dev/null || wheels=$(mktemp -d)
            tmp=$(mktemp -d "$wheels/.building.XXXXXX")
            # Without --no-build-isolation the build pins an old mpi4py from source and hangs for 20+ min.
            filter_pip env -u HDF5_DIR -u HDF5_INCLUDEDIR -u HDF5_LIBDIR -u HDF5_PKGCONFIG_NAME \
                CC="$mpicc_bin" HDF5_MPI=ON "${hdf5_build[@]}" \
                "$VENV/bin/python" -m pip wheel -q -c "$CONSTRAINTS" --no-cache-dir --no-build-isolation \
                --no-binary=h5py --no-deps -w "$tmp" h5py
            wheel=$(compgen -G "$tmp/h5py-*.whl" | head -n1) || die "pip wheel made no h5py wheel in $tmp"
            mv "$wheel" "$wheels/" && rm -rf "$tmp"
            wheel=$wheels/$(basename "$wheel")
        fi
        filter_pip "${pip[@]}" --force-reinstall --no-deps "$wheel"
    fi
else
    if [[ $HPCMORPH_MPI == wheel ]]; then
        say "HPCMORPH_MPI=wheel: using PyPI's mpich and serial h5py (ranks write shards)"
    elif [[ -z "$mpicc_bin" ]]; then
        say "no MPI compiler found and apt not usable: using PyPI's mpich and serial h5py (ranks write shards)"
    else
        say "no parallel HDF5 found and apt not usable: using $mpicc_bin's MPI and serial h5py (ranks write shards)"
    fi
    if [[ -z "$mpicc_bin" ]]; then filter_pip "${pip[@]}" mpich; fi
    reinstall=()
    if h5py_has_mpi; then reinstall=(--force-reinstall --no-deps); fi
    filter_pip "${pip[@]}" --only-binary=h5py "${reinstall[@]}" h5py
fi

filter_pip "${pip[@]}" torch torchvision
filter_pip "${pip[@]}" -e ".[test]"

# A later plain `pip install h5py` (here or by a user) silently swaps in the serial wheel: check.
"$VENV/bin/python" - "$want_mpi" "$VENV" <<'EOF'
import sys
import h5py, mpi4py, torch, galsim  # noqa: F401
want = sys.argv[1] == "True"
if h5py.get_config().mpi != want:
    sys.exit(f"setup: h5py MPI support is {h5py.get_config().mpi}, expected {want}: "
             f"a serial h5py wheel replaced the parallel build; rerun after `rm -rf {sys.argv[2]}`")
print(f"setup: ok (h5py {h5py.__version__} mpi={want}, torch {torch.__version__}, galsim {galsim.__version__})")
EOF


rm -f "$VENV"/.setup-*
touch "$stamp"
