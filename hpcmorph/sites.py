"""What each facility documents for running a containerized MPI job: ONE place for the site facts.

``hpcmorph submit --site NAME`` puts a site's block into every job script it submits: the modules it
loads, the variables it exports and the launch line and container command every rank starts with,
sized per node from the site's nodes (:class:`Node`) and the ranks ``hpcmorph plan`` plans for.

    generic      the job scripts as they are (mpirun or srun, apptainer exec): any cluster
    polaris      ALCF Polaris: PBS Pro, mpiexec (PALS), Apptainer with cray-mpich-abi
    frontier     OLCF Frontier: Slurm, srun, Apptainer with OLCF's container modules
    perlmutter   NERSC Perlmutter: Slurm, srun, podman-hpc with --mpi (Cray MPICH swapped in)

The three leadership sites run containers in the hybrid model with their own Cray MPICH: the image
must carry an MPICH-ABI MPI (``libmpi.so.12``; apptainer/hpcmorph-mpich.def), which the site's
library replaces at run time. Every value the block writes is a :class:`Fact` with the page it is
written on. ``read=True``: read on that page (or the facility's own repository) for this profile;
``read=False``: the facility's page could not be read when the profile was written, and ``source`` is
where the value was seen instead; docs/hpc.md lists those per site.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UserError

# --- sources (each fact below names one) --------------------------------------------------------
# ALCF's user guide (github.com/argonne-lcf/user-guides, read 2026-12-05 at 7d04a3f9) and its
# container registry (github.com/argonne-lcf/container-registry, read at 5b241a70).
POLARIS_CONTAINERS = "https://docs.alcf.anl.gov/polaris/containers/containers/"
POLARIS_JOBS = "https://docs.alcf.anl.gov/polaris/running-jobs/"
POLARIS_GPUS = "https://docs.alcf.anl.gov/polaris/running-jobs/using-gpus/"
POLARIS_REGISTRY = "https://github.com/argonne-lcf/container-registry/tree/main/containers/mpi/Polaris"
# OLCF's user documentation (github.com/olcf/olcf-user-docs, read 2026-12-05 at 27459031) and the
# examples it points to (github.com/olcf/olcf_containers_examples, read at 032b9626).
FRONTIER_CONTAINERS = "https://docs.olcf.ornl.gov/software/containers_on_frontier.html"
FRONTIER_PYTORCH = "https://docs.olcf.ornl.gov/software/analytics/pytorch_frontier.html"
FRONTIER_GUIDE = "https://docs.olcf.ornl.gov/systems/frontier_user_guide.html"
FRONTIER_EXAMPLES = ("https://github.com/olcf/olcf_containers_examples/tree/main/frontier/"
                     "containers_on_frontier_docs/apptainer_wrappers_lammps")
# NERSC's documentation (docs.nersc.gov: only the opening of some pages was readable here) and
# podman-hpc's own module definitions (github.com/NERSC/podman-hpc, read 2026-12-05 at 01b02d6e),
# which say what --mpi, --gpu and --nccl do on Perlmutter.
NERSC_CONTAINERS = "https://docs.nersc.gov/development/containers/"
NERSC_PODMAN_MODULES = "https://github.com/NERSC/podman-hpc/tree/main/etc/modules.d"
NERSC_QUEUES = "https://docs.nersc.gov/jobs/policy/"
NERSC_NODES = "https://docs.nersc.gov/beginner-guide/nodetypesfig"
NERSC_AFFINITY = "https://docs.nersc.gov/jobs/affinity/"
# Where Perlmutter's job constraint and srun sizes were seen, NERSC's pages on them not being readable
# here: the podman-hpc batch script of the ERF project's guide to its containers on Perlmutter.
ERF_PERLMUTTER = "https://github.com/erf-model/ERF/blob/development/Docs/sphinx_doc/containers.rst"


@dataclass(frozen=True)
class Fact:
    """One value as a site's documentation writes it (a module line, a flag, an export), and where."""

    text: str
    source: str
    read: bool = True


@dataclass(frozen=True)
class Node:
    """One kind of compute node: its GPUs, the cores a job may use, and how many CPUs per core the
    launcher's CPUs-per-rank option counts (PALS' --depth and Perlmutter's -c count hardware
    threads, 2 per core; Frontier's -c counts cores, one hardware thread each by default)."""

    gpus: int
    cores: int
    cpus_per_core: int
    facts: tuple[Fact, ...]


@dataclass(frozen=True)
class Site:
    name: str
    title: str
    scheduler: str | None               # slurm, pbs, or None: either (generic)
    gpu_node: Node | None = None        # where train and analyze run (one rank per GPU)
    cpu_node: Node | None = None        # where generate, attack and report run (one rank per core)
    modules: tuple[Fact, ...] = ()      # shell lines, in order, before anything else of the job
    modules_gpu: tuple[Fact, ...] = ()  # more of them for jobs on GPUs
    env: tuple[Fact, ...] = ()          # NAME=value exported after the modules (value may use $VARS)
    env_cpu: tuple[Fact, ...] = ()
    env_gpu: tuple[Fact, ...] = ()
    launcher: tuple[Fact, ...] = ()     # the launch command's words; {ranks} {nodes} {ppn} {cpus} filled in
    launcher_gpu: tuple[Fact, ...] = ()  # more words for ranks on GPUs
    container: tuple[Fact, ...] = ()    # the per-rank container command's words, before the image
    container_gpu: tuple[Fact, ...] = ()
    # The image: a file (.sif) resolved to an absolute path, or a name in the runtime's own store.
    image_is_file: bool = True
    scheduler_args: tuple[Fact, ...] = ()      # more sbatch/qsub arguments of every job
    scheduler_args_cpu: tuple[Fact, ...] = ()
    scheduler_args_gpu: tuple[Fact, ...] = ()
    queue_flag: str = "--partition"            # what --queue becomes on the sbatch line
    queues: dict[str, tuple[int, int]] = field(default_factory=dict)  # queue: (min, max) nodes
    queues_source: str | None = None
    default_queue: Fact | None = None
    notes: tuple[str, ...] = ()         # what the dry run says beside the job (caveats)

    def node(self, gpu: bool) -> Node | None:
        return self.gpu_node if gpu else (self.cpu_node or self.gpu_node)

    def facts(self) -> list[Fact]:
        """Every fact of the profile, for the checks against the cited pages."""
        out = [*self.modules, *self.modules_gpu, *self.env, *self.env_cpu, *self.env_gpu, *self.launcher,
               *self.launcher_gpu, *self.container, *self.container_gpu, *self.scheduler_args,
               *self.scheduler_args_cpu, *self.scheduler_args_gpu]
        if self.default_queue:
            out.append(self.default_queue)
        for node in (self.gpu_node, self.cpu_node):
            if node:
                out.extend(node.facts)
        return out


class SiteError(UserError):
    """A job a site's documentation rules out (a queue's node limits): one line, exit 2."""


# --- ALCF Polaris ------------------------------------------------------------------------------
POLARIS = Site(
    "polaris", "ALCF Polaris", "pbs",
    gpu_node=Node(4, 32, 2, (
        Fact("4 NVIDIA A100 GPUs", POLARIS_GPUS),                      # "each have 4 NVIDIA A100 GPUs"
        Fact("64 hardware threads on the CPU (2 per core)", POLARIS_JOBS))),
    modules=(
        # The container page's job script, in its order.
        Fact("ml use /soft/modulefiles", POLARIS_CONTAINERS),
        Fact("ml spack-pe-base", POLARIS_CONTAINERS),
        Fact("ml apptainer", POLARIS_CONTAINERS),
        Fact("module load cray-mpich-abi", POLARIS_CONTAINERS),
    ),
    env=(
        # "Environment variables for MPI": the site's MPICH ABI libraries put before the image's.
        Fact("ADDITIONAL_PATH=/opt/cray/pe/pals/1.2.12/lib", POLARIS_CONTAINERS),
        Fact('APPTAINERENV_LD_LIBRARY_PATH="$CRAY_LD_LIBRARY_PATH:$LD_LIBRARY_PATH:$ADDITIONAL_PATH"',
             POLARIS_CONTAINERS),
    ),
    launcher=(
        Fact("mpiexec -hostfile $PBS_NODEFILE -n {ranks} -ppn {ppn}", POLARIS_CONTAINERS),
        # Running MPI+OpenMP applications: --depth hardware threads per rank, bound by depth.
        Fact("--depth={cpus} --cpu-bind depth", POLARIS_JOBS),
    ),
    # The containers page binds all of /opt (`-B /opt -B /var/run/palsd/`), which would hide the image's
    # own /opt/hpcmorph; ALCF's MPI container job (job_submission.sh) binds only what Cray MPICH needs
    # there, which also holds the page's ADDITIONAL_PATH. --fakeroot: the page's "Always use".
    container=(Fact("apptainer exec --fakeroot", POLARIS_CONTAINERS),
               Fact("-B /var/run/palsd/ -B /opt/cray/pe -B /opt/cray/libfabric", POLARIS_REGISTRY)),
    # The GPU driver: ALCF's MPI container README runs `apptainer exec ... --nv --fakeroot`.
    container_gpu=(Fact("--nv", POLARIS_REGISTRY),),
    # The queues of Running Jobs on Polaris (nodes per job); prod routes to small/medium/large.
    queues={"debug": (1, 2), "debug-scaling": (1, 10), "prod": (10, 496), "preemptable": (1, 10),
            "demand": (1, 56), "capacity": (1, 4)},
    queues_source=POLARIS_JOBS,
    notes=("GPUs: Cray MPICH does not bind ranks to GPUs on Polaris; each rank takes GPU (PMI_LOCAL_RANK "
           "mod 4), where ALCF's set_affinity_gpu_polaris.sh would take them in reverse order",),
)

# --- OLCF Frontier -----------------------------------------------------------------------------
FRONTIER = Site(
    "frontier", "OLCF Frontier", "slurm",
    gpu_node=Node(8, 56, 1, (
        Fact("8 GCDs per node", FRONTIER_GUIDE),                       # 4 MI250X, 2 GCDs each: 8 GPUs to Slurm
        Fact("-S 8", FRONTIER_GUIDE),                                  # core specialization: 64 - 8 cores
        Fact("-c7", FRONTIER_PYTORCH))),                               # srun -N2 -n16 -c7 ...
    modules=(
        # The container examples' job scripts: a clean environment, then OLCF's container modules.
        Fact("module reset", FRONTIER_EXAMPLES),
        Fact("module load olcf-container-tools", FRONTIER_CONTAINERS),
        Fact("module load apptainer-enable-mpi", FRONTIER_CONTAINERS),
    ),
    modules_gpu=(Fact("module load apptainer-enable-gpu", FRONTIER_CONTAINERS),),
    # The CPU container example (lammps cpu/submit.slurm) sets it before srun.
    env_cpu=(Fact("MPICH_SMP_SINGLE_COPY_MODE=NONE", FRONTIER_EXAMPLES),),
    # PyTorch on Frontier: "if you see hangs, try using only hsn0".
    env_gpu=(Fact("NCCL_SOCKET_IFNAME=hsn0,hsn1,hsn2,hsn3", FRONTIER_PYTORCH),),
    launcher=(Fact("srun -N {nodes} -n {ranks} --ntasks-per-node={ppn}", FRONTIER_EXAMPLES),),
    launcher_gpu=(Fact("-c {cpus} --gpus-per-task=1 --gpu-bind=closest", FRONTIER_PYTORCH),),
    container=(Fact("apptainer exec", FRONTIER_EXAMPLES),),
    notes=("GPUs: Frontier's are AMD MI250X; the images here hold PyPI's CUDA build of torch, so train and "
           "analyze need a ROCm build of torch in the image (not made here) or --gpus-per-task 0",),
)

# --- NERSC Perlmutter --------------------------------------------------------------------------
PERLMUTTER = Site(
    "perlmutter", "NERSC Perlmutter", "slurm",
    gpu_node=Node(4, 64, 2, (
        Fact("1 AMD EPYC 7763 CPUs and 4 NVIDIA A100 GPUs", NERSC_NODES),
        Fact("each core has 2 hardware threads", NERSC_AFFINITY))),
    cpu_node=Node(0, 128, 2, (
        Fact("2 AMD EPYC 7763 CPUs per node", NERSC_NODES),
        Fact("Each processor has 64 physical cores", NERSC_AFFINITY))),
    # ERF's job: `srun -N 1 -n 4 -c 32 --ntasks-per-node=4 ... podman-hpc run --rm --mpi --gpu ...`
    # (-c: hardware threads per rank, 32 for 4 ranks on a GPU node). NERSC's affinity page beyond its
    # opening was not readable here.
    launcher=(Fact("srun -n {ranks} --ntasks-per-node={ppn} -c {cpus}", ERF_PERLMUTTER, read=False),),
    # podman-hpc's modules.d: mpich.yaml (cli_arg mpi: Cray MPICH bound in as the container's
    # libmpi.so.12, SLURM_*/PMI_* passed on), gpu.yaml (cli_arg gpu), nccl.yaml (cli_arg nccl:
    # the Slingshot NCCL plugin, NCCL_SOCKET_IFNAME=hsn). The working directory is bound at the same
    # path (podman's -v and -w, as ERF's job binds its run folder), so ./runs lands where the job runs.
    container=(Fact("podman-hpc run --rm --mpi", NERSC_PODMAN_MODULES),
               Fact("-v $PWD:$PWD -w $PWD", ERF_PERLMUTTER, read=False)),
    container_gpu=(Fact("--gpu --nccl", NERSC_PODMAN_MODULES),),
    image_is_file=False,
    scheduler_args_cpu=(Fact("--constraint=cpu", ERF_PERLMUTTER, read=False),),
    scheduler_args_gpu=(Fact("--constraint=gpu", ERF_PERLMUTTER, read=False),),
    queue_flag="--qos",
    # "Most jobs are submitted to the regular queue"; debug is the default QOS (ERF's job: -q regular).
    default_queue=Fact("regular", NERSC_QUEUES),
    notes=("image: a podman-hpc image name (podman-hpc images), not a file: import and migrate the "
           "SquashFS image first (docs/hpc.md)",),
)

GENERIC = Site("generic", "any cluster (the job scripts as they are)", None)

SITES = {s.name: s for s in (GENERIC, POLARIS, FRONTIER, PERLMUTTER)}


def get(name: str) -> Site:
    try:
        return SITES[name]
    except KeyError:
        raise SiteError(f"--site {name!r}: choose from {', '.join(SITES)}") from None


def ranks_per_node(site: Site, gpu: bool) -> int | None:
    """One rank per GPU on GPU jobs, one per usable core otherwise (None: the job script's own)."""
    node = site.node(gpu)
    if node is None:
        return None
    return node.gpus if gpu and node.gpus else node.cores


def cpus_per_rank(site: Site, gpu: bool, ppn: int) -> int:
    """The node's CPUs shared out among its ranks: Polaris' --depth, Frontier's and Perlmutter's -c."""
    node = site.node(gpu)
    return max(1, node.cores * node.cpus_per_core // max(1, ppn))


def check_queue(site: Site, queue: str | None, nodes: int) -> None:
    if queue in site.queues:
        low, high = site.queues[queue]
        if not low <= nodes <= high:
            raise SiteError(f"--site {site.name}: queue {queue} takes {low} to {high} nodes per job, not {nodes} "
                            f"({site.queues_source})")


def _words(facts: tuple[Fact, ...], **sizes: int) -> str:
    return " ".join(f.text.format(**sizes) for f in facts)


def block(site: Site, *, gpu: bool, nodes: int, ranks: int, ppn: int, image: str | None,
          launcher: bool = True) -> list[str]:
    """The shell lines a job of this site runs before the job script's own body: with an image, the
    modules and exports of the site's container model and HPCMORPH_CONTAINER (what the script runs
    each rank in); then HPCMORPH_LAUNCHER (unless the user gave one: ``launcher=False``). Without an
    image (a venv) only the launch line: the rest is the container model's. Empty for generic."""
    if site is GENERIC:
        return []
    sizes = {"nodes": nodes, "ranks": ranks, "ppn": ppn, "cpus": cpus_per_rank(site, gpu, ppn)}
    modules = (*site.modules, *(site.modules_gpu if gpu else ())) if image else ()
    env = (*site.env, *(site.env_gpu if gpu else site.env_cpu)) if image else ()
    launch = (*site.launcher, *(site.launcher_gpu if gpu else ())) if launcher else ()
    container = (*site.container, *(site.container_gpu if gpu else ())) if image else ()
    node = site.node(gpu)
    used = [*modules, *env, *launch, *container, *(node.facts if node else ())]
    lines = [f"# --- {site.title}: set by hpcmorph submit --site {site.name}, as documented in:"]
    lines += [f"#   {url}" for url in dict.fromkeys(f.source for f in used)]
    # Lmod's functions are not written for `set -u`: the modules load before the script sets it.
    lines += [f.text for f in modules]
    lines += [f"export {f.text}" for f in env]
    if launch:
        lines.append(f'export HPCMORPH_LAUNCHER="{_words(launch, **sizes)}"')
    if container:
        lines.append(f'export HPCMORPH_CONTAINER="{_words(container)} {image}"')
    lines.append(f"# --- end of the {site.name} block")
    return lines
