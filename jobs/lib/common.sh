# shellcheck shell=bash
# What every job script of jobs/slurm and jobs/pbs shares, sourced by each after it has set
#   scheduler  slurm or pbs
#   stage      the hpcmorph subcommand it runs (generate, train, attack, analyze, report)
#   ppn        PBS only: MPI ranks per node (its default, or HPCMORPH_RANKS_PER_NODE)
#   ranks      PBS only, optional: the ranks whatever the nodes (report: 1)
#   apptainer_flags  optional: flags for `apptainer exec` (the GPU stages: --nv)
# It goes to the submit directory, reads the environment below and defines `launcher`, `run` (the
# hpcmorph command each rank starts, in its container if any), `config`, `sets` and `where` (the job,
# for the log), then the functions the scripts call: announce, requeue_on_usr1, checkpoint_on_signals,
# run_stage and exec_stage.
#
# Environment (Slurm: sbatch passes the submitting shell's environment on; PBS: qsub -v NAME=value,
# or -v NAME to take the submitting shell's value):
#   HPCMORPH_CONFIG    preset name or YAML file, relative to the submit directory (default laptop)
#   HPCMORPH_SET       space-separated key=value overrides, each passed as --set key=value
#   HPCMORPH_VENV      a virtualenv holding hpcmorph; its bin/ goes first on PATH
#   HPCMORPH_IMAGE     an Apptainer image (.sif) holding hpcmorph; each rank runs inside it
#   HPCMORPH_CONTAINER a container command with its image, run for each rank instead (hpcmorph submit --site)
#   HPCMORPH_LAUNCHER  how ranks are started (default Slurm: "mpirun -n $SLURM_NTASKS";
#                      PBS: "mpiexec -n RANKS --ppn RANKS_PER_NODE")
#   HPCMORPH_HOME      the hpcmorph checkout holding jobs/lib/common.sh (hpcmorph submit sets it)
#   HPCMORPH_PLAN      the wall time hpcmorph submit planned for the job, logged (hpcmorph plan)

: "${scheduler:?set scheduler (slurm or pbs) before sourcing jobs/lib/common.sh}"
: "${stage:?set stage before sourcing jobs/lib/common.sh}"

if [[ $scheduler == slurm ]]; then
    cd "${SLURM_SUBMIT_DIR:-.}" || exit
    launcher=${HPCMORPH_LAUNCHER:-mpirun -n ${SLURM_NTASKS:-1}}
    where="job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}"
    # One thread per rank unless asked otherwise: a BLAS or OpenMP pool sized to the whole node in
    # every rank would oversubscribe the cores the other ranks were given (train.threads and
    # analyze.threads set torch's own pool).
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
else
    cd "${PBS_O_WORKDIR:?}" || exit
    nodes=$(wc -l <"${PBS_NODEFILE:?}")
    ranks=${ranks:-$((nodes * ${ppn:?set ppn before sourcing jobs/lib/common.sh}))}
    launcher=${HPCMORPH_LAUNCHER:-mpiexec -n $ranks --ppn $ppn}
    where="job $PBS_JOBID on $nodes node(s), $ranks rank$( ((ranks == 1)) || echo s)"
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi

config=${HPCMORPH_CONFIG:-laptop}
sets=()
set -f  # the overrides are YAML values such as [0.7,0.2,0.1]: not globs
for kv in ${HPCMORPH_SET:-}; do sets+=(--set "$kv"); done
set +f

if [[ -n ${HPCMORPH_CONTAINER:-} ]]; then
    # A site's container command and image (hpcmorph submit --site): one container per rank.
    set -f  # a command line, split on purpose, not globbed
    # shellcheck disable=SC2206
    run=($HPCMORPH_CONTAINER hpcmorph)
    set +f
elif [[ -n ${HPCMORPH_IMAGE:-} ]]; then
    # One container per rank, started by the host's launcher (the hybrid model facilities document);
    # --nv (the GPU stages' apptainer_flags) brings the host's GPU driver in.
    # shellcheck disable=SC2206  # flags, split on purpose
    run=(apptainer exec ${apptainer_flags:-} "$HPCMORPH_IMAGE" hpcmorph)
else
    if [[ -n ${HPCMORPH_VENV:-} ]]; then
        [[ -x $HPCMORPH_VENV/bin/hpcmorph ]] || { echo "HPCMORPH_VENV=$HPCMORPH_VENV has no bin/hpcmorph" >&2; exit 2; }
        export PATH=$HPCMORPH_VENV/bin:$PATH
    fi
    run=(hpcmorph)
fi

# Containers and CI run jobs as root, which OpenMPI refuses without being told it is on purpose.
if [[ $(id -u) -eq 0 ]]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

# announce [WHAT [MORE]]: the job's first log lines: where it runs, WHAT (e.g. its GPUs), the command
# it starts (MORE: the arguments after the overrides), and the plan hpcmorph submit made for it.
announce() {
    echo "hpcmorph-$stage: $where, ${1:+$1 }$launcher ${run[*]} $stage --config $config ${sets[*]}${2:+ $2}" >&2
    [[ -z ${HPCMORPH_PLAN:-} ]] || echo "hpcmorph-$stage: plan: $HPCMORPH_PLAN" >&2
}

# requeue_on_usr1 WHAT: Slurm's USR1 before the time limit (--signal) requeues the job, whose rerun
# resumes from WHAT the stage keeps on disk; `requeued` says it happened.
requeued=0
requeue_on_usr1() {
    # shellcheck disable=SC2064  # WHAT is fixed now, on purpose
    trap "_requeue '$1'" USR1
}
# shellcheck disable=SC2034  # requeued: read by the script that sources this file
_requeue() {
    echo "hpcmorph-$stage: USR1 (time limit or preemption near): requeueing job $SLURM_JOB_ID;" \
         "the next run resumes from $1" >&2
    requeued=1
    scontrol requeue "$SLURM_JOB_ID"
}

# checkpoint_on_signals: USR1 (Slurm's, before the time limit) and TERM (preemption, PBS's wall time)
# passed on to the stage as USR1: it finishes its step, writes its checkpoint and exits 75.
pid=
checkpoint_on_signals() {
    trap '_forward USR1' USR1
    trap '_forward TERM' TERM
}
_forward() {
    echo "hpcmorph-$stage: $1 (time limit or preemption near): asking the stage to checkpoint" >&2
    # mpirun and srun pass USR1 on to every rank; a stage run without a launcher gets it directly.
    [[ -n $pid ]] && kill -USR1 "$pid" 2>/dev/null || true
}

# run_stage [ARG...]: the stage, with ARGs after the overrides, until it ends; its exit code in
# `status`. In the background: bash runs a trap only between commands, so with the stage in the
# foreground USR1 would wait for the stage to end, past the time limit.
# shellcheck disable=SC2034  # status: read by the script that sources this file
run_stage() {
    # shellcheck disable=SC2086  # the launcher is a command line, split on purpose
    $launcher "${run[@]}" "$stage" --config "$config" "${sets[@]}" "$@" &
    pid=$!
    status=0
    while :; do
        wait "$pid" && status=0 || status=$?
        # wait returns >128 when a trapped signal interrupts it; the stage itself is still running.
        kill -0 "$pid" 2>/dev/null || break
    done
    # bash keeps a finished child's status: ask again in case a signal cut the last wait short.
    wait "$pid" && status=0 || status=$?
}

# exec_stage: the stage in this script's place (no signal to handle: a rerun starts it again).
exec_stage() {
    # shellcheck disable=SC2086  # the launcher is a command line, split on purpose
    exec $launcher "${run[@]}" "$stage" --config "$config" "${sets[@]}"
}
