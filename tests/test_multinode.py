"""The chain across two nodes of a real Slurm (``scripts/slurm-local.sh start DIR --nodes 2``: each node
its own network, UTS and mount namespace, joined by veth links on a link-local subnet), against the
same ranks on one host; and what losing a node does.

- ``hpcmorph submit --nodes 2 --ranks-per-node 2`` of the five stages: generate, train (Horovod) and
  attack on two ranks of each node, analyze on two ranks of one node. The job logs show each rank's
  host and local rank, Open MPI's choice of transport (ob1: TCP between the nodes, shared memory
  within one) and the rows each node's ranks wrote into the shared HDF5 files. Every output equals
  the same stages run with the same rank counts on one host.
- train with DDP across the two nodes equals DDP on one host.
- A node's job step killed, or its slurmd, in the middle of attack and of train: the job ends (a
  clear error; or Slurm's own node-failure requeue), is requeued, resumes from what is on disk and
  ends with the uninterrupted run's outputs.
- A lock held by a process on the other node is reported, never broken; after that node dies it is
  still reported from the other node; the node, booted again, takes it over.

Slow (23 minutes on two busy cores, 2026-12-05): ``make test-multinode``, not in ``make test``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import SLURM_LOCAL, SMALL_RUN, TERMINAL, Slurm, env, job_logs, mpirun, sets
from test_container import csv_data, drop_provenance, h5_contents

# The first test to use the chain waits for it: five jobs and the same five stages on one host.
pytestmark = [pytest.mark.multinode, pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(2400)]

SCRIPT = SLURM_LOCAL
JOBS = SLURM_LOCAL.parents[1] / "jobs" / "slurm"
STAGES = ["generate", "train", "attack", "analyze", "report"]
RANKS = 4  # generate, train and attack: two ranks on each of the two nodes
ANALYZE_RANKS = 2  # analyze stays on one node

# The suite's small run: every stage in about a minute on one host.
CHAIN_SETS = SMALL_RUN
# An attack long enough to lose a node in the middle of it: one image per block, and the default
# threshold, so most attacks spend their whole budget of 312 queries (about 13 s on 4 ranks).
ATTACK_SETS = [f"{k}={v}" for k, v in {**dict(kv.split("=", 1) for kv in SMALL_RUN),
                                        "attack.population": "24", "attack.generations": "12",
                                        "attack.n_images": "6", "attack.images_per_batch": "1",
                                        "attack.threshold": "0.5"}.items()]
# train's outputs: both variants' weights, metrics and history, and the summary.
TRAINED = ["regular/seed0/*", "mmd/seed0/*", "train_summary.json"]
# Open MPI names the PML it selected and, per peer, the BTL it sends with (shared memory or TCP).
VERBOSE_MPI = {"OMPI_MCA_pml_base_verbose": "10", "OMPI_MCA_btl_base_verbose": "100"}


class Cluster(Slurm):
    """A running two-node cluster: Slurm's clients, plus its nodes' processes seen from here."""

    def __init__(self, root: Path, conf: str):
        super().__init__(root, conf)
        layout = dict(line.split("=", 1) for line in (root / "cluster").read_text().split())
        self.ident, self.net = layout["ident"], layout["net"]

    def logs(self) -> str:
        out = []
        for p in [self.root / "log" / "slurmctld.log", *sorted((self.root / "log").glob("slurmd-node*.log"))]:
            out.append(f"----- {p} (tail) -----\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(out)

    def script(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env())

    def on(self, node: str, command: str, cwd: Path, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
        """``command`` (a shell line) run on ``node``, as after ``ssh node``, in ``cwd``."""
        return subprocess.run(["bash", str(SCRIPT), "exec", str(self.root), node, "bash", "-c",
                               f"cd {cwd} && {command}"], capture_output=True, text=True, env=self.env(**extra),
                              timeout=timeout)

    def pids(self, node: str) -> list[int]:
        """Every process on ``node``: those in its network namespace."""
        want = f"net:[{os.stat(f'/run/netns/hpcmorph-{self.ident}-{node}').st_ino}]"
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/net") == want:
                        found.append(int(entry))
                except OSError:
                    pass
        return found

    def kill_step(self, node: str, jobid: str) -> list[str]:
        """SIGKILL every step of job ``jobid`` on ``node`` (its slurmstepd and all below it: Open MPI's
        orted and the ranks), as if that node's part of the job had vanished. Returns what was killed."""
        killed = []
        for pid in self.pids(node):
            cmd = _cmdline(pid)
            if re.match(rf"slurmstepd: \[{jobid}\.\d+\]", cmd):
                for victim in [pid, *_descendants(pid)]:
                    killed.append(_cmdline(victim))
                    _kill(victim)
        return killed

    def kill_slurmd(self, node: str) -> None:
        pid = int((self.root / "nodes" / node / "run" / "slurmd.pid").read_text())
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "slurmd"
        os.kill(pid, signal.SIGKILL)

    def boot(self) -> None:
        """Start what is missing (a killed slurmd, a killed node): the node rejoins."""
        res = self.script("start", str(self.root), timeout=120)
        assert res.returncode == 0, res.stderr

    def nodes(self) -> dict[str, str]:
        return dict(line.split() for line in self.run(["sinfo", "-h", "-N", "-o", "%N %T"]).stdout.splitlines())


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a killed process stays a zombie until its parent reaps it: it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _leftovers(ident: str) -> list[str]:
    """Namespaces and links of the cluster ``ident`` that still exist."""
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line for line in (spaces + links).splitlines() if f"hpcmorph-{ident}-" in line or f"hm{ident}" in line]


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the nodes' network, UTS and mount namespaces need root")
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found (iproute2, util-linux)")


def _start(root: Path, nodes: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "start", str(root), "--nodes", str(nodes)], capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def cluster():
    _need_root()
    # Under /tmp, which every node has its own of: the script keeps DIR itself visible on them.
    # Short: Unix socket paths under it may not exceed 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="hpcmorph-mn-", dir="/tmp"))
    res = _start(root)
    if res.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop", str(root)], capture_output=True, timeout=120)
        pytest.fail(f"slurm-local.sh start --nodes 2 exited {res.returncode}\n{res.stdout}\n{res.stderr}")
    m = re.search(r"^export SLURM_CONF=(\S+)$", res.stdout, re.M)
    assert m, res.stdout + res.stderr
    c = Cluster(root, m.group(1))
    yield c
    res = subprocess.run(["bash", str(SCRIPT), "stop", str(root)], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert not _leftovers(c.ident), _leftovers(c.ident)
    shutil.rmtree(root, ignore_errors=True)


def workdir(cluster: Cluster, name: str) -> Path:
    """A folder on the shared file system (under DIR, which every node sees at the same path)."""
    path = cluster.root / "work" / name
    path.mkdir(parents=True)
    return path


def wait(cluster: Cluster, jobid: str, cwd: Path, until: set[str], timeout: float = 600,
         restarts: int | None = None) -> dict[str, str]:
    """The job's record once it is in one of the states ``until`` (and has been restarted
    ``restarts`` times, if given)."""
    deadline = time.monotonic() + timeout
    info: dict[str, str] = {}
    while time.monotonic() < deadline:
        info = cluster.job(jobid)
        if info["JobState"] in until and (restarts is None or int(info["Restarts"]) >= restarts):
            return info
        time.sleep(0.5)
    raise AssertionError(f"job {jobid} not in {until} after {timeout:.0f} s: {info}\n"
                         f"{job_logs(cwd)}\n{cluster.logs()}")


def sbatch(cluster: Cluster, cwd: Path, stage: str, settings: list[str], **extra: str) -> str:
    """Submit ``stage``'s job script by hand on both nodes, two ranks on each."""
    e = cluster.env(HPCMORPH_CONFIG="tiny", HPCMORPH_SET=" ".join(settings), **extra)
    res = subprocess.run(["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=2", f"--ntasks={RANKS}",
                          *(["--gpus-per-task=0"] if stage == "train" else []), str(JOBS / f"{stage}.sbatch")],
                         cwd=cwd, env=e, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(";")[0]


def job_log(cwd: Path, stage: str, jobid: str) -> str:
    return (cwd / f"hpcmorph-{stage}-{jobid}.out").read_text(errors="replace")


def one_host(cwd: Path, stage: str, settings: list[str], ranks: int, *extra: str) -> None:
    """``stage`` plainly on this host (the root namespace: one host), with ``ranks`` ranks."""
    argv = [sys.executable, "-m", "hpcmorph", stage, "--config", "tiny", *sets(settings), *extra]
    if ranks > 1:
        argv = [mpirun(), "-n", str(ranks), *argv]
    res = subprocess.run(argv, cwd=cwd, env=env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{' '.join(argv)} exited {res.returncode}\n{res.stderr[-5000:]}"


def copy_run(src: Path, dst: Path, keep: list[str]) -> None:
    """The entries ``keep`` of the run folder ``src`` into ``dst/runs/tiny`` (no locks)."""
    run = dst / "runs" / "tiny"
    run.mkdir(parents=True)
    for name in keep:
        for path in src.glob(name):
            if path.name.endswith(".lock"):
                continue
            if path.is_dir():
                shutil.copytree(path, run / path.name, ignore=shutil.ignore_patterns("*.lock"))
            else:
                shutil.copy2(path, run / path.name)


def assert_same_outputs(a: Path, b: Path, only: list[str] | None = None) -> dict[str, int]:
    """Every output of run folder ``b`` equals ``a``'s: HDF5 datasets, weights (sha256 of every tensor),
    JSON and CSV numbers (not timings, hosts or dates). ``only``: globs of the files to compare.
    Returns how many files of each kind were compared."""
    import hashlib

    import torch

    def files(root: Path) -> list[Path]:
        found = (p for p in root.rglob("*") if p.is_file() and ".lock" not in p.name)
        rels = sorted(p.relative_to(root) for p in found)
        return [r for r in rels if only is None or any(r.match(g) for g in only)]

    assert files(a) == files(b), f"{a} and {b} hold different files"
    compared = {".h5": 0, ".pt": 0, ".json": 0, ".csv": 0}
    for rel in files(a):
        if rel.suffix == ".h5":
            da, db = h5_contents(a / rel), h5_contents(b / rel)
            assert sorted(da) == sorted(db), rel
            for name in da:
                np.testing.assert_array_equal(da[name], db[name], err_msg=f"{rel}:{name}")
        elif rel.suffix == ".pt":
            sums = []
            for root in (a, b):
                w = torch.load(root / rel, map_location="cpu", weights_only=False)
                w = w.get("model", w)
                sums.append(hashlib.sha256(b"".join(w[k].numpy().tobytes() for k in w)).hexdigest())
            assert sums[0] == sums[1], f"{rel}: weights differ (sha256 {sums[0]} and {sums[1]})"
        elif rel.suffix == ".json":
            assert drop_provenance(json.loads((a / rel).read_text())) == \
                drop_provenance(json.loads((b / rel).read_text())), rel
        elif rel.suffix == ".csv":
            assert csv_data(a / rel) == csv_data(b / rel), rel
        else:
            continue
        compared[rel.suffix] += 1
    return compared


# --- the cluster itself --------------------------------------------------------------------------

def test_two_nodes_each_its_own_host_network_and_tmp(cluster):
    assert cluster.nodes() == {"node1": "idle", "node2": "idle"}
    res = cluster.run(["srun", "--nodes=2", "--ntasks=2", "hostname"])
    assert res.returncode == 0 and sorted(res.stdout.split()) == ["node1", "node2"], res.stderr
    cwd = workdir(cluster, "hosts")
    assert re.fullmatch(r"169\.254\.\d+", cluster.net) and cluster.net != "169.254.169", cluster.net
    for k, node in ((1, "node1"), (2, "node2")):
        res = cluster.on(node, "hostname; ip -4 -o addr show; getent hosts node1 node2", cwd, timeout=30)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines()[0] == node
        # Only its loopback and its link-local address on eth0: nothing routed, nothing else.
        addrs = re.findall(r"^\d+: (\S+)\s+inet (\S+)", res.stdout, re.M)
        assert addrs == [("lo", "127.0.0.1/8"), ("eth0", f"{cluster.net}.{10 + k}/24")], res.stdout
        # Every node resolves every node's name (srun, Open MPI and Gloo look their own up).
        assert re.findall(r"^(\S+)\s+(node\d)$", res.stdout, re.M) == [(f"{cluster.net}.11", "node1"),
                                                                       (f"{cluster.net}.12", "node2")], res.stdout
    # /tmp is each node's own; DIR (here under /tmp) is shared.
    assert cluster.on("node1", "echo mine > /tmp/only-on-node1 && touch shared-file", cwd, timeout=30).returncode == 0
    res = cluster.on("node2", "test ! -e /tmp/only-on-node1 && test -e shared-file", cwd, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not Path("/tmp/only-on-node1").exists()


def test_start_again_status_and_stop_leave_nothing_behind(tmp_path):
    _need_root()
    root = Path(tempfile.mkdtemp(prefix="hpcmorph-mn-", dir="/var/tmp"))
    try:
        assert _start(root).returncode == 0
        ident = (root / "cluster").read_text().split("ident=")[1].split()[0]
        assert _leftovers(ident)
        res = _start(root)
        assert res.returncode == 0 and "already running" in res.stderr, res.stderr
        res = subprocess.run(["bash", str(SCRIPT), "status", str(root)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "node2: slurmd running" in res.stderr, res.stderr
        res = _start(root, nodes=3)
        assert res.returncode == 1 and "runs a cluster of 2 node(s)" in res.stderr, res.stderr
        holders = [int(p.read_text()) for p in root.glob("nodes/node*/node.pid")]
        assert len(holders) == 2
    finally:
        res = subprocess.run(["bash", str(SCRIPT), "stop", str(root)], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert not _leftovers(ident)
    daemons = subprocess.run(["pgrep", "-af", str(root)], capture_output=True, text=True).stdout
    assert not daemons.strip(), daemons
    assert not [pid for pid in holders if _running(pid)], "a node's namespaces are still held"
    shutil.rmtree(root)


# --- the chain -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chain(cluster):
    """The five stages submitted to the two nodes, and the same stages on one host, with the same
    rank counts: (the chain's working folder, the one-host folder, the job ids)."""
    cwd = workdir(cluster, "chain")
    args = ["--scheduler", "slurm", "--config", "tiny", "--venv", sys.prefix, "--nodes", "2",
            "--ranks-per-node", "2", "--gpus-per-task", "0", *sets(CHAIN_SETS)]
    res = subprocess.run([sys.executable, "-m", "hpcmorph", "submit", *args], cwd=cwd,
                         env=cluster.env(**VERBOSE_MPI), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    jobs = dict(line.split() for line in res.stdout.splitlines())
    assert list(jobs) == STAGES, res.stdout
    for stage in STAGES:
        info = wait(cluster, jobs[stage], cwd, TERMINAL, timeout=900)
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), \
            f"{stage}: {info}\n{job_logs(cwd)}\n{cluster.logs()}"
    ref = cluster.root / "work" / "one-host"
    ref.mkdir()
    for stage, ranks in (("generate", RANKS), ("train", RANKS)):
        one_host(ref, stage, CHAIN_SETS, ranks)
    for k in (1, 2):
        one_host(ref, "attack", CHAIN_SETS, RANKS, "--set", f"attack.pixels={k}")
    one_host(ref, "analyze", CHAIN_SETS, ANALYZE_RANKS)
    one_host(ref, "report", CHAIN_SETS, 1)
    return cwd, ref, jobs


def test_chain_on_two_nodes_equals_the_same_ranks_on_one_host(cluster, chain):
    cwd, ref, jobs = chain
    logs = {stage: job_log(cwd, stage, jobs[stage]) for stage in STAGES}
    both = "4 ranks on 2 hosts: node1 ranks 0, 1 (local 0, 1); node2 ranks 2, 3 (local 0, 1)"
    for stage in ("generate", "train", "attack"):
        assert both in logs[stage], logs[stage][-3000:]
        # Open MPI's choice: ob1; shared memory to the rank on the same node, TCP to those on the other.
        assert "selected ob1" in logs[stage]
        assert re.search(r"\[node1:\d+\] mca: bml: Using tcp btl for send to \S+ on node node2", logs[stage])
        assert re.search(r"\[node2:\d+\] mca: bml: Using tcp btl for send to \S+ on node node1", logs[stage])
        assert re.search(r"\[node1:\d+\] mca: bml: Using vader btl for send to \S+ on node node1", logs[stage])
    assert re.search(r"2 ranks on 1 host: node\d ranks 0, 1 \(local 0, 1\)", logs["analyze"]), logs["analyze"]
    # The shared HDF5 files were written by the ranks of both nodes, through MPI-IO.
    for stage, out in (("generate", "galaxies.h5"), ("attack", "attack.h5"), ("attack", "attack-k2.h5")):
        m = re.search(rf"wrote runs/tiny/{re.escape(out)} \(\d+ rows, io=mpio, 4 ranks on 2 hosts: "
                      r"node1 rows 0-\d+, node2 rows \d+-\d+\)", logs[stage])
        assert m, logs[stage][-3000:]
    # Both of Horovod's allreduces (gradients and bookkeeping) went over MPI, between the hosts.
    assert "train: backend horovod (MPI controller, MPI allreduce), 4 rank(s)" in logs["train"]
    compared = assert_same_outputs(ref / "runs" / "tiny", cwd / "runs" / "tiny")
    assert compared[".h5"] >= 5 and compared[".pt"] >= 4 and compared[".json"] >= 6, compared


def test_ddp_train_across_two_nodes_equals_ddp_on_one_host(cluster, chain):
    cwd, ref, _ = chain
    settings = [*CHAIN_SETS, "train.backend=ddp"]
    two, one = workdir(cluster, "ddp-two"), workdir(cluster, "ddp-one")
    for where in (two, one):
        copy_run(cwd / "runs" / "tiny", where, ["galaxies.h5", "galaxies.h5.complete"])
    jobid = sbatch(cluster, two, "train", settings)
    one_host(one, "train", settings, RANKS)
    info = wait(cluster, jobid, two, TERMINAL)
    log = job_log(two, "train", jobid)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-5000:]
    assert "4 ranks on 2 hosts: node1 ranks 0, 1 (local 0, 1); node2 ranks 2, 3 (local 0, 1)" in log
    # Gloo between the hosts, meeting at rank 0's address on the cluster's link (not 127.0.0.1).
    assert f"train: backend ddp (gloo, rank 0 at {cluster.net}.11:" in log, log[-3000:]
    compared = assert_same_outputs(one / "runs" / "tiny", two / "runs" / "tiny", TRAINED)
    assert compared == {".h5": 0, ".pt": 4, ".json": 3, ".csv": 2}, compared


# --- losing a node ---------------------------------------------------------------------------

def lose_node(cluster: Cluster, cwd: Path, stage: str, jobid: str, how: str) -> dict[str, str]:
    """Lose node2 from running job ``jobid``, get the job running again as a user would, and wait for
    it to finish. ``how``: ``step``, the job's step on node2 killed (its orted and ranks; the node
    stays up); ``hung``, node2 stops answering (its slurmd killed and every other process on it
    stopped), then reboots. (A slurmd killed alone leaves the ranks working until Slurm gives up on
    the node, 30 s or more: the job may be done by then, so the test stops them too.)"""
    if how == "step":
        killed = cluster.kill_step("node2", jobid)
        assert any("orted" in c for c in killed) and any("hpcmorph" in c for c in killed), killed
        info = wait(cluster, jobid, cwd, {"FAILED", "COMPLETED", "CANCELLED"}, timeout=120)
        log = job_log(cwd, stage, jobid)
        # The launch ends at once, saying why, and the script says how to resume.
        assert info["JobState"] == "FAILED", f"{info}\n{log[-3000:]}"
        assert "ORTE has lost communication with a remote daemon" in log and "on node node2" in log, log[-3000:]
        assert f"`scontrol requeue {jobid}` (or the same job submitted again) resumes" in log, log[-3000:]
        res = cluster.run(["scontrol", "requeue", jobid])
        assert res.returncode == 0, res.stderr
    else:
        cluster.kill_slurmd("node2")
        for pid in cluster.pids("node2"):
            os.kill(pid, signal.SIGSTOP)
        # After SlurmdTimeout Slurm sets node2 DOWN, cancels the job and requeues it itself
        # (--requeue); it then waits for two nodes.
        wait(cluster, jobid, cwd, {"PENDING"}, timeout=180, restarts=1)
        assert cluster.nodes()["node2"].startswith("down"), cluster.nodes()
        log = job_log(cwd, stage, jobid)
        assert f"JOB {jobid} ON node1 CANCELLED AT" in log and "DUE TO NODE FAILURE" in log, log[-3000:]
        res = cluster.script("kill-node", str(cluster.root), "node2")
        assert res.returncode == 0 and not cluster.pids("node2"), res.stderr
        cluster.boot()
    info = wait(cluster, jobid, cwd, TERMINAL, timeout=600, restarts=1)
    log = job_log(cwd, stage, jobid)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), \
        f"{info}\n{log[-5000:]}\n{cluster.logs()}"
    assert f"job {jobid} (restart 1) on node[1-2]" in log
    # The earlier attempt's lock (same job) is taken over, not reported.
    assert "took over the lock of a run that has ended" in log, log[-3000:]
    return info


def wait_for(path_glob: str, cwd: Path, count: int, cluster: Cluster, jobid: str, stage: str) -> None:
    deadline = time.monotonic() + 300
    while len(list(cwd.glob(path_glob))) < count:
        state = cluster.job(jobid)["JobState"]
        assert state in {"PENDING", "CONFIGURING", "RUNNING"} and time.monotonic() < deadline, \
            f"{state}: {job_log(cwd, stage, jobid)[-3000:]}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def attacked(cluster, chain):
    """The trained run of the chain, and the long attack of it made on one host (4 ranks)."""
    src, _, _ = chain
    ref = workdir(cluster, "attack-one-host")
    copy_run(src / "runs" / "tiny", ref, ["galaxies.h5*", "regular", "mmd", "train_summary.json"])
    one_host(ref, "attack", ATTACK_SETS, RANKS, "--set", "attack.pixels=1")
    return src, ref


@pytest.mark.parametrize("how", ["step", "hung"])
def test_attack_resumes_after_losing_a_node_to_the_uninterrupted_file(cluster, attacked, how):
    src, ref = attacked
    cwd = workdir(cluster, f"attack-{how}")
    copy_run(src / "runs" / "tiny", cwd, ["galaxies.h5*", "regular", "mmd", "train_summary.json"])
    jobid = sbatch(cluster, cwd, "attack", ATTACK_SETS, HPCMORPH_ATTACK_K="1")
    # A few images done by both nodes' ranks, most still to do.
    wait_for("runs/tiny/attack.h5.parts-*/block-*.h5", cwd, 3, cluster, jobid, "attack")
    lose_node(cluster, cwd, "attack", jobid, how)
    log = job_log(cwd, "attack", jobid)
    resumed = [int(n) for n in re.findall(r"(\d+) already on disk", log)]
    assert len(resumed) == 2 and resumed[0] == 0 and 3 <= resumed[1] < 12, log[-3000:]
    assert not list(cwd.glob("runs/tiny/attack.h5.parts-*")), "checkpoint blocks left behind"
    compared = assert_same_outputs(ref / "runs" / "tiny", cwd / "runs" / "tiny", ["attack.h5", "attack_summary.json"])
    assert compared == {".h5": 1, ".pt": 0, ".json": 1, ".csv": 0}, compared


@pytest.mark.parametrize("how", ["step", "hung"])
def test_train_resumes_after_losing_a_node_to_the_uninterrupted_weights(cluster, chain, how):
    src, _, _ = chain
    cwd = workdir(cluster, f"train-{how}")
    copy_run(src / "runs" / "tiny", cwd, ["galaxies.h5", "galaxies.h5.complete"])
    jobid = sbatch(cluster, cwd, "train", CHAIN_SETS)
    # The first epoch's checkpoint is written; the second epoch is under way.
    wait_for("runs/tiny/regular/seed0/checkpoint.pt", cwd, 1, cluster, jobid, "train")
    time.sleep(2)
    lose_node(cluster, cwd, "train", jobid, how)
    log = job_log(cwd, "train", jobid)
    assert re.search(r"regular seed 0: resuming at epoch 1 step \d+", log), log[-3000:]
    compared = assert_same_outputs(src / "runs" / "tiny", cwd / "runs" / "tiny", TRAINED)
    assert compared == {".h5": 0, ".pt": 4, ".json": 3, ".csv": 2}, compared


# --- a lock held from the other node -------------------------------------------------------------

HOLD = ("import sys, time; from pathlib import Path; from hpcmorph import lock; "
        "lock.acquire(Path('runs/tiny/galaxies.h5')); print('held', flush=True); time.sleep(600)")


def test_a_lock_held_on_the_other_node_is_reported_never_broken(cluster):
    cwd = workdir(cluster, "lock")
    lock_file = cwd / "runs" / "tiny" / "galaxies.h5.lock"
    generate = f"{sys.executable} -m hpcmorph generate --config tiny --set generate.n_galaxies=8"
    holder = subprocess.Popen(["bash", str(SCRIPT), "exec", str(cluster.root), "node2", "bash", "-c",
                               f"cd {cwd} && exec {sys.executable} -c \"{HOLD}\""],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env())
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        held = json.loads(lock_file.read_text())
        assert held["host"] == "node2"
        # A live holder on node2, seen from node1: reported, with how to check and what to remove.
        res = cluster.on("node1", generate, cwd)
        assert res.returncode == 2, res.stderr
        line = res.stderr.strip().splitlines()[-1]
        assert line.startswith("hpcmorph: error: runs/tiny/galaxies.h5 is locked by a run on another host "
                               f"(host node2, pid {held['pid']}"), line
        assert "which this host (node1) cannot check" in line and f"remove {lock_file.relative_to(cwd)}" in line, line
        assert json.loads(lock_file.read_text())["token"] == held["token"]
    finally:
        holder.kill()
    # node2 dies with the holder on it: the lock stays, and node1 still cannot tell that it is stale.
    res = cluster.script("kill-node", str(cluster.root), "node2")
    assert res.returncode == 0, res.stderr
    assert not cluster.pids("node2")
    res = cluster.on("node1", generate, cwd)
    assert res.returncode == 2 and "locked by a run on another host (host node2" in res.stderr, res.stderr
    assert json.loads(lock_file.read_text())["token"] == held["token"]
    # node2 booted again sees that the process that held it is gone, and takes the lock over.
    cluster.boot()
    res = cluster.on("node2", generate, cwd, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"took over the lock of a run that has ended (host node2, pid {held['pid']}" in res.stderr
    assert f"process {held['pid']} is gone" in res.stderr
    assert not lock_file.exists() and (cwd / "runs" / "tiny" / "galaxies.h5").exists()
