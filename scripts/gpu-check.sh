#!/usr/bin/env bash
# Prove the GPU path of train, attack and analyze in one call of at most 8 minutes, on a bare
# single-GPU machine that has a recent torch but no network (the steps and what each checks:
# scripts/gpu_check.py). Writes every figure to OUT/gpu-check.json; exit 0 when every check passed.
#
#   scripts/gpu-check.sh [--wheels DIR] [--out DIR] [--budget SECONDS]   # on the GPU machine
#   scripts/gpu-check.sh --cpu                                         # the same, CPU, small sizes (CI)
#   scripts/gpu-check.sh --list-wheels     # every package beyond torch a bare machine may lack
#   scripts/gpu-check.sh --missing         # those this machine's python lacks
#   scripts/gpu-check.sh --image IMAGE [--cpu] [--out DIR] [--budget SECONDS]
#                                          # the same checks inside a built image, then its
#                                          # collectives (scripts/gpu_collectives.py)
#
# --image runs the image's own copy of this script with the image's venv (nothing to bring), under
# the first runtime found: apptainer or singularity (`exec --nv`, a .sif or a .sqfs), else
# Charliecloud's ch-run (a .sqfs from `make image-gpu`), which keeps the host's /dev and gets the
# driver's libraries (the folder holding libcuda.so.1) bound at /mnt/driver. OUT is bound at
# /mnt/out. The collectives: one rank's sum through torch.distributed (NCCL) and through Horovod
# (NCCL when built with it), in OUT/collectives.json.
#
# Packages beyond torch travel as wheels: on a machine with network, for the GPU machine's Python
# (e.g. 3.11) and platform,
#   pip download --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
#       -d wheels/ $(scripts/gpu-check.sh --list-wheels)
# and on the GPU machine `scripts/gpu-check.sh --wheels wheels/` installs the missing ones from
# there (pip --no-index). torchvision must be the release built for the GPU machine's torch: the
# list pins the pair this project tests (requirements/constraints.txt: torch 2.14.1 with
# torchvision 0.29.1); for another torch, download its torchvision instead. mpich is the MPI
# library mpi4py loads when the machine has none. h5py's wheel is serial: the stages then write
# their files as per-rank shards (run.io=auto resolves to shards).
#
# Environment: PYTHON (default: python3 on PATH), the interpreter that has torch.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
py=${PYTHON:-python3}
mode=gpu wheels= out=gpu-check-out budget=480 list= image=
while (($#)); do
    case $1 in
        --cpu) mode=cpu ;;
        --image) image=${2:?--image needs an image file}; shift ;;
        --wheels) wheels=${2:?--wheels needs a folder}; shift ;;
        --out) out=${2:?--out needs a folder}; shift ;;
        --budget) budget=${2:?--budget needs seconds}; shift ;;
        --list-wheels) list=all ;;
        --missing) list=missing ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu-check: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
start=$SECONDS

# import name -> requirement, pinned as requirements/constraints.txt pins them where it does.
modules=(numpy:numpy scipy:scipy h5py:h5py mpi4py:mpi4py galsim:galsim sklearn:scikit-learn
         matplotlib:matplotlib yaml:pyyaml tqdm:tqdm torchvision:torchvision)
pin() {
    local name=$1 line
    line=$(grep -i "^$name==" "$root/requirements/constraints.txt" 2>/dev/null || true)
    echo "${line:-$name}"
}

missing() {
    # The requirements this python cannot import, found in one interpreter start.
    local names req
    names=$("$py" - "${modules[@]}" <<'EOF'
import importlib, sys
for entry in sys.argv[1:]:
    mod, req = entry.split(":")
    try:
        importlib.import_module(mod)
    except Exception:
        print(req)
try:
    import mpi4py  # noqa: F401
    try:
        from mpi4py import MPI  # noqa: F401
    except Exception:
        print("mpich")  # mpi4py is there but finds no MPI library: the mpich wheel brings one
except ImportError:
    pass
EOF
)
    for req in $names; do
        if [[ $req == torchvision ]]; then
            # The torchvision built for this torch: the constraints' pair when the versions match.
            local torch_v
            torch_v=$("$py" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
            if [[ -n $torch_v && $(pin torch) == "torch==$torch_v" ]]; then pin torchvision; else
                echo "torchvision  # the release built for torch ${torch_v:-?}"; fi
        elif [[ $req == mpich ]]; then
            echo mpich
        else
            pin "$req"
        fi
    done
    # No mpi4py and no MPI on the machine: the mpich wheel too.
    if grep -qx mpi4py <<<"$names" && ! command -v mpiexec >/dev/null; then echo mpich; fi
}

if [[ $list == all ]]; then
    for entry in "${modules[@]}"; do pin "${entry#*:}"; done
    echo mpich
    exit 0
elif [[ $list == missing ]]; then
    missing
    exit 0
fi

if [[ -n $image ]]; then
    [[ -f $image ]] || { echo "gpu-check: error: no image $image" >&2; exit 2; }
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    inner=(--out /mnt/out --budget "$budget")
    [[ $mode == cpu ]] && inner+=(--cpu)
    # Inside: the image's own script and venv; the collectives run even when a check failed.
    collect="--out /mnt/out"
    [[ $mode == cpu ]] && collect+=" --cpu"
    cmd='cd /mnt/out && s=0; PYTHON=/opt/hpcmorph/.venv/bin/python /opt/hpcmorph/scripts/gpu-check.sh "$@" || s=$?
         /opt/hpcmorph/.venv/bin/python /opt/hpcmorph/scripts/gpu_collectives.py '"$collect"' || s=$((s ? s : $?)); exit $s'
    if runtime=$(command -v apptainer || command -v singularity); then
        nv=()
        [[ $mode == gpu ]] && nv=(--nv)
        echo "gpu-check: running in $image under $runtime" >&2
        exec "$runtime" exec "${nv[@]}" -B "$out:/mnt/out" "$image" /bin/bash -c \
            "$cmd" -- "${inner[@]}"
    elif command -v ch-run >/dev/null; then
        binds=(-b "$out:/mnt/out")
        if [[ $mode == gpu ]]; then
            driver=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 .*x86-64/ { print $NF; exit }')
            [[ -z $driver ]] && for d in /usr/local/nvidia/lib64 /usr/lib64 /usr/lib/x86_64-linux-gnu; do
                [[ -e $d/libcuda.so.1 ]] && { driver=$d/libcuda.so.1; break; }; done
            [[ -n $driver ]] || { echo "gpu-check: error: no libcuda.so.1 on this host (no NVIDIA driver?)" >&2; exit 2; }
            binds+=(-b "$(dirname "$(readlink -f "$driver")"):/mnt/driver" --set-env=LD_LIBRARY_PATH=/mnt/driver)
        fi
        echo "gpu-check: running in $image under $(command -v ch-run)" >&2
        # ch-run keeps the caller's environment: the checkout's PYTHONPATH must not reach the image.
        exec env -u PYTHONPATH USER="${USER:-$(id -un)}" MPLCONFIGDIR=/tmp/hpcmorph-mpl ch-run "${binds[@]}" "$image" -- /bin/bash -c \
            "$cmd" -- "${inner[@]}"
    fi
    echo "gpu-check: error: --image needs apptainer, singularity or Charliecloud's ch-run; none is on PATH" >&2
    exit 2
fi

if ! "$py" -c "import torch" 2>/dev/null; then
    echo "gpu-check: error: $py has no torch (set PYTHON to the interpreter that has it)" >&2
    exit 2
fi
need=$(missing | sed 's/  #.*//')
if [[ -n $need ]]; then
    if [[ -z $wheels ]]; then
        echo "gpu-check: error: $py lacks: $(echo "$need" | tr '\n' ' ')- bring them as wheels (--wheels DIR; see --help)" >&2
        exit 2
    fi
    echo "gpu-check: installing from $wheels: $(echo "$need" | tr '\n' ' ')" >&2
    # shellcheck disable=SC2086  # one requirement per word
    "$py" -m pip install --quiet --no-index --find-links "$wheels" $need
fi

# Running as root (containers) needs OpenMPI's consent; one thread per process unless told.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
args=(--out "$out")
if [[ $mode == cpu ]]; then
    # The CPU path even on a machine with a GPU: the stages pick a GPU whenever they see one.
    export CUDA_VISIBLE_DEVICES=
    args+=(--cpu)
fi
left=$((budget - (SECONDS - start)))
# The driver keeps 20 s for itself to write its JSON; timeout stops it at the budget in any case.
timeout --signal=TERM --kill-after=10 "$left" "$py" "$here/gpu_check.py" "${args[@]}" --budget $((left - 20))
