#!/usr/bin/env bash
# Build a Horovod wheel (MPI + Gloo, PyTorch only) against the torch in a
# given venv, and cache it.
#
# Usage:
#   scripts/build-horovod.sh VENV_PYTHON CACHE_DIR
#   pip install CACHE_DIR/horovod-*.whl          # (with VENV_PYTHON's pip)
#
# Why this script exists: Horovod's last release (0.28.1) does not build
# against torch 2.14 as published.  We download its sdist, make three edits
# (C++17 at the top level, C++20 for the torch extension because torch 2.14's
# headers need it, and a switch to keep CMake off the CUDA path for CPU
# builds), then build a wheel with pip.  The build takes 4-7 minutes on two
# cores, and the result only works with the torch it was built against, so we
# cache it keyed on everything that makes it different:
#
#   CACHE_DIR/horovod-<ver>/torch-<torch ver>/<python tag>/<flavour>/mpi-<mpicc digest>/horovod-*.whl
#
# plus a copy (hard link) of the wheel for the most recent call directly in
# CACHE_DIR, so that `pip install CACHE_DIR/horovod-*.whl` picks exactly one
# file.  If several venvs (different Pythons or torches) share one CACHE_DIR,
# install the path this script prints instead of using the glob.
# The sdist is cached too (CACHE_DIR/src/), so a rebuild after a torch upgrade
# needs no network.
#
# Flavour: "cpu" unless HOROVOD_GPU_OPERATIONS=NCCL is set in the environment.
# We do not auto-detect GPUs: nodes here carry partial CUDA toolkits (an nvcc
# but no GPU), so detection would guess wrong, and a wheel's flavour should be
# an explicit choice.  The GPU branch ("cuda<ver>-nccl") compiles without a
# GPU and without a CUDA installation: CUDA comes from PyPI (below); it has not
# yet run on a GPU.
#
# CUDA for the GPU flavour: Horovod's NCCL ops need HAVE_CUDA, which compiles
# one CUDA source (horovod/common/ops/cuda/cuda_kernels.cu) with nvcc.  torch's
# CUDA wheels bring the runtime, its headers and NCCL, but no nvcc; PyPI's
# cuda-toolkit[nvcc] extra (nvidia-cuda-nvcc, nvidia-nvvm, nvidia-cuda-crt, at
# the CUDA release the venv's cuda-toolkit names) brings it.  Unless
# HOROVOD_CUDA_HOME names a toolkit, those wheels go into the build folder
# (about 250 MB, never into the venv) and a toolkit folder is assembled there:
# them, plus links to the venv's nvidia/cu13 headers and libraries, plus the
# lib64 link nvcc's link step looks for.  The CUDA runtime is linked
# statically; NCCL dynamically, the libnccl.so.2 torch loads.
#
# Environment knobs (all optional):
#   HOROVOD_GPU_OPERATIONS=NCCL  build the CUDA/NCCL flavour (see above)
#   HOROVOD_NCCL_HOME / HOROVOD_NCCL_INCLUDE / HOROVOD_NCCL_LIB / HOROVOD_NCCL_LINK,
#   HOROVOD_CUDA_HOME            passed through to Horovod's CMake (GPU only)
#   HOROVOD_SDIST=PATH           use this horovod-0.28.1.tar.gz instead of
#                                downloading it (offline nodes)
#   HOROVOD_BUILD_JOBS=N         parallel compile jobs (default: nproc, max 8;
#                                each job can take 1-2 GB of memory)
#   HOROVOD_BUILD_VERBOSE=1      stream the build log instead of only saving it
#
# Known limits: Horovod's build uses distutils, so Python >= 3.12 is refused.
#
# Output: progress on stderr; the last line on stdout names the wheel.
set -euo pipefail

HOROVOD_VERSION=0.28.1
# sha256 of horovod-0.28.1.tar.gz as published on PyPI; checked so that a
# cached or user-supplied sdist is really the source our edits were written for.
HOROVOD_SDIST_SHA256=92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0

log() { printf 'build-horovod: %s\n' "$*" >&2; }
die() { printf 'build-horovod: error: %s\n' "$*" >&2; exit 1; }

if [[ $# -ne 2 ]]; then
    die "usage: $0 VENV_PYTHON CACHE_DIR"
fi
PY=$1
CACHE_DIR=$2

# --- the interpreter ---------------------------------------------------------
# Make the path absolute WITHOUT resolving symlinks: venv/bin/python is a
# symlink to the system python, and resolving it would leave the venv.
case $PY in
    /*) ;;
    */*) PY="$PWD/$PY" ;;
    *) PY=$(command -v "$PY") || die "python interpreter '$1' not found on PATH" ;;
esac
[[ -x $PY ]] || die "python interpreter '$PY' does not exist or is not executable"
"$PY" -c 'import sys' 2>/dev/null || die "cannot run '$PY'"

# Horovod's setup.py and CMake files use distutils, removed in Python 3.12.
read -r PY_MAJOR PY_MINOR < <("$PY" -c 'import sys; print(*sys.version_info[:2])')
if (( PY_MAJOR > 3 || (PY_MAJOR == 3 && PY_MINOR >= 12) )); then
    die "$PY is Python $PY_MAJOR.$PY_MINOR; Horovod $HOROVOD_VERSION's build uses distutils and needs Python <= 3.11"
fi
"$PY" -c 'import sys; sys.exit(sys.implementation.name != "cpython")' \
    || die "$PY is not CPython; only CPython is supported"
PY_TAG="cp${PY_MAJOR}${PY_MINOR}"

# The venv's bin/ goes first on PATH so that a cmake installed from PyPI into
# the venv is found, and setup.py's subprocesses use the venv's tools.
PY_BIN_DIR=$(dirname "$PY")
export PATH="$PY_BIN_DIR:$PATH"

# torch version (incl. local tag such as +cpu/+cu130) and CUDA version;
# "None" when torch is a CPU build.
TORCH_INFO=$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>/dev/null) \
    || die "torch is not importable by $PY (install torch into that venv first)"
read -r TORCH_VERSION TORCH_CUDA <<<"$TORCH_INFO"

# We build with --no-build-isolation (the build must see the venv's torch), so
# the build tools must already be in the venv.
for mod in pip setuptools wheel packaging; do
    "$PY" -c "import $mod" 2>/dev/null \
        || die "python module '$mod' missing in $PY; run: $PY -m pip install cmake packaging setuptools wheel"
done

# --- system prerequisites -----------------------------------------------------
command -v mpicc >/dev/null \
    || die "mpicc not found; install an MPI with development files (Debian: apt-get install openmpi-bin libopenmpi-dev)"
command -v c++ >/dev/null || command -v g++ >/dev/null \
    || die "no C++ compiler found (Debian: apt-get install g++)"
# Without cmake >= 3.13, Horovod's setup.py silently pip-installs its own
# (ancient) cmake; we would rather say so.
CMAKE_VERSION=$(cmake --version 2>/dev/null | sed -n 's/^cmake version \([0-9][0-9.]*\).*/\1/p') || true
[[ -n $CMAKE_VERSION ]] \
    || die "cmake not found; run: $PY -m pip install cmake   (or apt-get install cmake)"
if ! printf '3.13\n%s\n' "$CMAKE_VERSION" | sort -V -C; then
    die "cmake $CMAKE_VERSION is too old; Horovod needs >= 3.13 (run: $PY -m pip install -U cmake)"
fi

# --- flavour --------------------------------------------------------------------
case ${HOROVOD_GPU_OPERATIONS:-} in
    "")
        FLAVOUR=cpu
        # A CPU wheel must not pick up GPU settings from the caller's environment.
        unset HOROVOD_GPU HOROVOD_GPU_ALLREDUCE HOROVOD_GPU_ALLGATHER HOROVOD_GPU_BROADCAST \
              HOROVOD_GPU_ALLTOALL HOROVOD_GPU_REDUCESCATTER HOROVOD_CUDA_HOME
        ;;
    NCCL)
        [[ $TORCH_CUDA != None ]] \
            || die "HOROVOD_GPU_OPERATIONS=NCCL but torch $TORCH_VERSION in $PY is a CPU build"
        FLAVOUR="cuda${TORCH_CUDA}-nccl"
        ;;
    *)
        die "HOROVOD_GPU_OPERATIONS=${HOROVOD_GPU_OPERATIONS} is not supported here; leave it unset (CPU) or set it to NCCL"
        ;;
esac

# --- cache lookup -----------------------------------------------------------------
mkdir -p "$CACHE_DIR"
CACHE_DIR=$(cd "$CACHE_DIR" && pwd)
# The MPI it links against (Open MPI or MPICH, which mpicc): one cache may serve several checkouts
# and venvs on a machine (the Makefile's default is the machine-wide one, beside the parallel h5py).
MPI_KEY=$({ readlink -f "$(command -v mpicc)"; mpicc -showme 2>/dev/null || mpicc -show 2>/dev/null || true; } \
    | sha256sum | cut -c1-12)
KEY_DIR="$CACHE_DIR/horovod-$HOROVOD_VERSION/torch-$TORCH_VERSION/$PY_TAG/$FLAVOUR/mpi-$MPI_KEY"
DESC="horovod $HOROVOD_VERSION for torch $TORCH_VERSION, $PY_TAG, $FLAVOUR, mpicc $MPI_KEY"

# Two builds into the same cache (e.g. make -j) would waste 5 minutes each and
# race on the final move; serialise them.
if command -v flock >/dev/null; then
    exec 9>"$CACHE_DIR/.build-horovod.lock"
    flock 9
fi

cached_wheel() {
    local w
    for w in "$KEY_DIR"/horovod-"$HOROVOD_VERSION"-*.whl; do
        [[ -f $w ]] && { printf '%s\n' "$w"; return 0; }
    done
    return 1
}

# Make CACHE_DIR/horovod-*.whl match exactly the wheel for this call: a hard
# link (cheap, same file system) renamed into place, so the glob never sees a
# partial file; wheels from earlier calls with other names are removed.
# Sets PUBLISHED (not echoed: errexit does not apply inside $(...)).
publish() {
    local src=$1 old
    PUBLISHED="$CACHE_DIR/$(basename "$src")"
    for old in "$CACHE_DIR"/horovod-*.whl; do
        if [[ -e $old && $old != "$PUBLISHED" ]]; then
            rm -f "$old"
        fi
    done
    if [[ ! $PUBLISHED -ef $src ]]; then
        ln -f "$src" "$CACHE_DIR/.publish.tmp" 2>/dev/null || cp "$src" "$CACHE_DIR/.publish.tmp"
        mv -f "$CACHE_DIR/.publish.tmp" "$PUBLISHED"
    fi
}

if wheel=$(cached_wheel); then
    publish "$wheel"
    echo "$DESC already built: $PUBLISHED"
    exit 0
fi

# --- build ----------------------------------------------------------------------------
BUILD_DIR=$(mktemp -d "${TMPDIR:-/tmp}/build-horovod.XXXXXX")
BUILD_OK=0
# On success, or on a failure before compiling started, remove the temp dir;
# after a failed compile keep it, the log and tree are what one needs to debug.
cleanup() {
    if [[ $BUILD_OK != 1 && -f $BUILD_DIR/build.log ]]; then
        log "build failed; build tree and log kept in $BUILD_DIR (delete it when done)"
    else
        rm -rf "$BUILD_DIR"
    fi
}
trap cleanup EXIT

log "building $DESC in $BUILD_DIR"

# Source: user-supplied, cached, or downloaded (then cached); always checksummed.
SDIST_CACHE="$CACHE_DIR/src/horovod-$HOROVOD_VERSION.tar.gz"
if [[ -n ${HOROVOD_SDIST:-} ]]; then
    SDIST=$HOROVOD_SDIST
    [[ -f $SDIST ]] || die "HOROVOD_SDIST=$SDIST does not exist"
elif [[ -f $SDIST_CACHE ]]; then
    SDIST=$SDIST_CACHE
else
    log "downloading horovod $HOROVOD_VERSION sdist"
    "$PY" -m pip download --quiet --no-deps --no-binary :all: \
        -d "$BUILD_DIR/download" "horovod==$HOROVOD_VERSION" \
        || die "could not download the horovod $HOROVOD_VERSION sdist (offline? set HOROVOD_SDIST=path/to/horovod-$HOROVOD_VERSION.tar.gz)"
    SDIST="$BUILD_DIR/download/horovod-$HOROVOD_VERSION.tar.gz"
    [[ -f $SDIST ]] || die "pip download did not produce $SDIST"
fi
actual_sha=$(sha256sum "$SDIST" | cut -d' ' -f1)
[[ $actual_sha == "$HOROVOD_SDIST_SHA256" ]] \
    || die "$SDIST has sha256 $actual_sha, expected $HOROVOD_SDIST_SHA256 (not the published horovod $HOROVOD_VERSION sdist)"
if [[ $SDIST != "$SDIST_CACHE" ]]; then
    mkdir -p "$CACHE_DIR/src"
    cp "$SDIST" "$CACHE_DIR/src/.sdist.tmp" && mv -f "$CACHE_DIR/src/.sdist.tmp" "$SDIST_CACHE"
fi

tar -xzf "$SDIST" -C "$BUILD_DIR"
SRC="$BUILD_DIR/horovod-$HOROVOD_VERSION"

# Replace exactly one regex match in a file, or fail naming the file: if
# upstream text ever differs, a silent no-op edit would give a confusing
# compiler error minutes later.
patch_once() {
    "$PY" - "$@" <<'EOF'
import re, sys
path, pattern, repl, what = sys.argv[1:5]
with open(path) as f:
    text = f.read()
new, n = re.subn(pattern, repl, text, flags=re.M)
if n != 1:
    sys.exit(f"build-horovod: error: {path}: edit '{what}' expected exactly 1 match "
             f"of /{pattern}/, found {n}; the upstream source differs from what "
             f"scripts/build-horovod.sh was written for")
with open(path, "w") as f:
    f.write(new)
EOF
}

# 1. Top level: C++14 -> C++17 (part of the set of edits measured to build
#    against torch 2.14; the shared sources are compiled into the torch lib).
patch_once "$SRC/CMakeLists.txt" \
    '^set\(CMAKE_CXX_STANDARD 14\)$' 'set(CMAKE_CXX_STANDARD 17)' \
    'top-level C++ standard 14 -> 17'
# 2. Torch extension: C++14 -> C++20, required by torch 2.14's headers.
patch_once "$SRC/horovod/torch/CMakeLists.txt" \
    '^(\s*)set\(CMAKE_CXX_STANDARD 14\)$' '\g<1>set(CMAKE_CXX_STANDARD 20)' \
    'torch extension C++ standard 14 -> 20'
# 3. A switch (env HOROVOD_TORCH_CPU_ONLY=1) that makes FindPytorch report a
#    CPU torch.  Without it, a CUDA build of torch plus any nvcc on the machine
#    (even a partial toolkit) sends CMake down the CUDA path, which fails
#    without a full toolkit.  The edit is always applied (so upstream drift is
#    caught in both flavours) but the switch is only turned on for CPU builds.
patch_once "$SRC/cmake/Modules/FindPytorch.cmake" \
    '^(string\(TOUPPER "\$\{Pytorch_CUDA\}" Pytorch_CUDA\)\n)' \
    '\g<1># hpcmorph: HOROVOD_TORCH_CPU_ONLY=1 builds the CPU extension even for a CUDA torch
if("$ENV{HOROVOD_TORCH_CPU_ONLY}" STREQUAL "1")
    set(Pytorch_CUDA FALSE)
endif()
' \
    'FindPytorch CPU-only switch'

# pypi_cuda_toolkit: assemble a CUDA toolkit folder in $BUILD_DIR from PyPI's wheels and print
# its path (see the top). The CUDA release is the one the venv's torch wheels brought.
pypi_cuda_toolkit() {
    local site cu ver root
    site=$("$PY" -c 'import nvidia, os; print([p for p in nvidia.__path__ if os.path.isdir(p)][0])' 2>/dev/null) \
        || { log "no nvidia/ folder in $PY's site-packages: torch is not a CUDA build from PyPI"; return 1; }
    cu=$(cd "$site" && compgen -G 'cu[0-9]*' | head -n1) \
        || { log "no nvidia/cuNN folder in $site (torch's CUDA wheels lay out nvidia/cu13/)"; return 1; }
    ver=$("$PY" -c 'import importlib.metadata as m; print(m.version("cuda-toolkit"))' 2>/dev/null) \
        || { log "the cuda-toolkit package is not in $PY's venv: cannot tell which nvcc matches"; return 1; }
    log "fetching nvcc from PyPI: cuda-toolkit[nvcc,cccl]==$ver"
    "$PY" -m pip install --quiet --target "$BUILD_DIR/cuda-wheels" "cuda-toolkit[nvcc,cccl]==$ver" >&2 || return 1
    root=$BUILD_DIR/cuda
    mkdir -p "$root"
    # The wheels' files as they are, then links to the venv's for the rest (cp -n: never
    # writes through a link into the venv).
    cp -a "$BUILD_DIR/cuda-wheels/nvidia/$cu/." "$root/"
    cp -asn "$site/$cu/." "$root/"
    [[ -x $root/bin/nvcc && -d $root/nvvm ]] || { log "cuda-toolkit[nvcc,cccl]==$ver brought no bin/nvcc and nvvm/"; return 1; }
    ln -sfn lib "$root/lib64"
    [[ -e $root/lib/libcudart.so ]] || ln -s "$(cd "$root/lib" && compgen -G 'libcudart.so.*' | head -n1)" "$root/lib/libcudart.so"
    echo "$root"
}

export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1
export HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
# gloo's bundled CMakeLists asks for CMake 2.8.12; CMake >= 4 refuses that
# unless told the minimum policy version to assume (older CMake ignores this).
export CMAKE_POLICY_VERSION_MINIMUM=${CMAKE_POLICY_VERSION_MINIMUM:-3.5}
JOBS=${HOROVOD_BUILD_JOBS:-$(nproc)}
if [[ -z ${HOROVOD_BUILD_JOBS:-} ]] && (( JOBS > 8 )); then
    JOBS=8
fi
export MAKEFLAGS="-j$JOBS"

if [[ $FLAVOUR == cpu ]]; then
    export HOROVOD_TORCH_CPU_ONLY=1
else
    # HOROVOD_GPU_OPERATIONS=NCCL (already exported) makes Horovod build its
    # CUDA/NCCL ops.  CUDA from PyPI unless the caller named a toolkit (see the top).
    if [[ -z ${HOROVOD_CUDA_HOME:-} ]]; then
        cuda_home=$(pypi_cuda_toolkit) || die "could not assemble CUDA from PyPI's wheels (log above); set HOROVOD_CUDA_HOME to a CUDA toolkit"
        export HOROVOD_CUDA_HOME=$cuda_home
    fi
    # torch's build helpers (which Horovod's FindPytorch asks whether torch has CUDA) read CUDA_HOME.
    export CUDA_HOME=$HOROVOD_CUDA_HOME CUDAToolkit_ROOT=$HOROVOD_CUDA_HOME
    log "CUDA toolkit: $HOROVOD_CUDA_HOME ($("$HOROVOD_CUDA_HOME/bin/nvcc" --version | tail -n1))"
    # If the caller named no NCCL, use the one
    # torch's pip wheels ship (nvidia-nccl-cu*): it has headers and only
    # libnccl.so.2, so give CMake's find_library(nccl) a libnccl.so to find and
    # link it dynamically (torch loads the same libnccl.so.2 at import time).
    unset HOROVOD_TORCH_CPU_ONLY
    if [[ -z ${HOROVOD_NCCL_HOME:-}${HOROVOD_NCCL_INCLUDE:-}${HOROVOD_NCCL_LIB:-} ]]; then
        nccl_dir=$("$PY" -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null) || nccl_dir=
        if [[ -n $nccl_dir && -f $nccl_dir/include/nccl.h && -f $nccl_dir/lib/libnccl.so.2 ]]; then
            mkdir -p "$BUILD_DIR/nccl-lib"
            ln -s "$nccl_dir/lib/libnccl.so.2" "$BUILD_DIR/nccl-lib/libnccl.so"
            export HOROVOD_NCCL_INCLUDE="$nccl_dir/include" HOROVOD_NCCL_LIB="$BUILD_DIR/nccl-lib"
            export HOROVOD_NCCL_LINK=${HOROVOD_NCCL_LINK:-SHARED}
            log "using NCCL from torch's pip dependency: $nccl_dir"
        else
            log "no HOROVOD_NCCL_* set and no pip NCCL found; relying on CMake to find NCCL"
        fi
    fi
fi

LOG="$BUILD_DIR/build.log"
log "compiling with MAKEFLAGS=$MAKEFLAGS (4-7 min on 2 cores); log: $LOG"
start=$SECONDS
build_cmd=("$PY" -m pip wheel -v --no-build-isolation --no-deps --no-cache-dir
           -w "$BUILD_DIR/wheel" "$SRC")
if [[ ${HOROVOD_BUILD_VERBOSE:-0} == 1 ]]; then
    (cd "$SRC" && "${build_cmd[@]}") 2>&1 | tee "$LOG" >&2 || status=$?
else
    (cd "$SRC" && "${build_cmd[@]}") >"$LOG" 2>&1 || status=$?
fi
if [[ ${status:-0} != 0 ]]; then
    # The end of pip's output is mostly its own cleanup noise; show the first
    # real errors (CMake, compiler, make) instead, else the tail.
    if grep -qE 'CMake Error|error: |\*\*\* ' "$LOG"; then
        grep -nE -A4 'CMake Error|error: |\*\*\* ' "$LOG" | head -n 40 >&2 || true
    else
        tail -n 40 "$LOG" >&2
    fi
    die "pip wheel failed (exit ${status}); full log: $LOG"
fi
elapsed=$((SECONDS - start))

shopt -s nullglob
built=("$BUILD_DIR"/wheel/horovod-"$HOROVOD_VERSION"-*.whl)
shopt -u nullglob
[[ ${#built[@]} -eq 1 ]] || die "expected one horovod wheel in $BUILD_DIR/wheel, found ${#built[@]}"
# A wheel without the torch extension would import fine and fail at hvd.init().
"$PY" - "${built[0]}" <<'EOF' || die "the built wheel lacks horovod/torch/mpi_lib_v2*.so; see $LOG"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(not any(n.startswith("horovod/torch/mpi_lib_v2") and n.endswith(".so") for n in names))
EOF

# Into the cache: copy to a temp name inside KEY_DIR, then rename, so a wheel
# that exists under its real name is always complete.
mkdir -p "$KEY_DIR"
name=$(basename "${built[0]}")
cat >"$KEY_DIR/build-info.txt" <<EOF
horovod=$HOROVOD_VERSION
torch=$TORCH_VERSION
torch_cuda=$TORCH_CUDA
python=$PY_TAG ($PY)
flavour=$FLAVOUR
mpi=$(mpicc --showme:version 2>/dev/null || mpicc --version 2>/dev/null | head -n1 || echo unknown)
cmake=$CMAKE_VERSION
built=$(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) in ${elapsed}s
EOF
# Keep the log next to the wheel (~20 KB gzipped) for when someone asks how a
# cached wheel was built.
gzip -c "$LOG" >"$KEY_DIR/build.log.gz"
cp "${built[0]}" "$KEY_DIR/.wheel.tmp"
mv -f "$KEY_DIR/.wheel.tmp" "$KEY_DIR/$name"
BUILD_OK=1

publish "$KEY_DIR/$name"
log "built in $((elapsed / 60))m$((elapsed % 60))s"
echo "$DESC built: $PUBLISHED"
