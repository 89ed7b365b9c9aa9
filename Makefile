# hpcmorph: `make run` and `make test` each set the machine up on first use (scripts/setup.sh is
# idempotent: a second call returns at once), then do their job.
VENV    ?= .venv
CONFIG  ?= laptop
RANKS   ?= 1
# Settings for `make run`, as the CLI takes them: SET="attack.certify=false train.seeds=[0]"
SET     ?=
PY      := $(VENV)/bin/python
HPCMORPH := $(VENV)/bin/hpcmorph

# Running as root (CI, containers) needs OpenMPI's consent; more ranks than cores needs oversubscribe.
export OMPI_ALLOW_RUN_AS_ROOT ?= 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM ?= 1
export OMPI_MCA_rmaps_base_oversubscribe ?= 1
# A venv set up with PyPI's MPI wheel brings its own mpiexec, which must launch its ranks.
MPIRUN  := $(if $(wildcard $(VENV)/bin/mpiexec),$(VENV)/bin/mpiexec,$(shell command -v mpirun))
LAUNCH  := $(if $(filter 1,$(RANKS)),,$(MPIRUN) -n $(RANKS))

.PHONY: setup horovod chromium lint image image-mpich image-gpu image-oci run test test-fast test-cpu-kinds test-cpu-kinds-quick test-container test-mpich test-multinode test-images bench bench-generate bench-train bench-attack bench-analyze clean help

help:
	@echo "make run    [CONFIG=laptop] [RANKS=1] [SET=\"k=v ...\"]  set up, then run the pipeline on the embedded default"
	@echo "make test                              set up, lint, then run the test suite"
	@echo "make lint                              ruff on the Python, shellcheck on scripts/ and jobs/"
	@echo "make test-cpu-kinds                    the tests that compare numbers, under avx2 + 2 threads and default + 1"
	@echo "make test-fast                         the unit tests only (no mpirun, no end-to-end runs; its time: docs/testing.md)"
	@echo "make test-container                    the container tests only (build the CPU image, run it under ch-run)"
	@echo "make test-multinode                    the two-node tests only (a two-node Slurm in namespaces, as root; ~23 min)"
	@echo "make bench                             every stage's benchmark (figures beside a bare baseline)"
	@echo "make setup                             only bring the machine and .venv up to date"
	@echo "make horovod                           build (once, cached) and install Horovod into .venv"
	@echo "make image  [IMAGE=hpcmorph-cpu.sqfs]  build the CPU container image from apptainer/hpcmorph-cpu.def (root)"
	@echo "make image-mpich [IMAGE_MPICH=...]     build the MPICH-ABI image (the facilities' hybrid model) from apptainer/hpcmorph-mpich.def"
	@echo "make test-mpich                        build it and run the tiny chain in it under the host's MPICH, its libmpi swapped in"
	@echo "make image-gpu [IMAGE_GPU=...]         build the GPU image (CUDA and NCCL from PyPI, Horovod with NCCL) from apptainer/hpcmorph.def"
	@echo "make image-oci [IMAGE_OCI=...]         build the CPU image as an OCI archive for docker/podman load (podman import)"
	@echo "make test-images                       build the GPU and OCI images, check them (%test; the tiny chain under podman run)"

setup:
	@bash scripts/setup.sh

# Horovod 0.28.1 needs source edits to build against torch 2.14: built once per machine, cached in
# $(HOROVOD_WHEELS) beside setup.sh's parallel h5py, keyed by Horovod, torch, Python and MPI (so that
# a fresh clone on a machine that built it before does not spend 2-4 minutes again; the MPICH image
# keeps its own, built against MPICH, in the build host's cache).
HPCMORPH_CACHE ?= $(if $(filter 0,$(shell id -u)),/var/cache/hpcmorph,$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/hpcmorph)
HOROVOD_WHEELS ?= $(HPCMORPH_CACHE)/wheels
horovod: setup
	@$(PY) -c "import horovod.torch" 2>/dev/null || { \
	  $(PY) -m pip install -q -c requirements/constraints.txt cmake packaging setuptools wheel && \
	  wheel=$$(bash scripts/build-horovod.sh $(PY) $(HOROVOD_WHEELS) | sed -n 's/.*built: //p') && \
	  $(PY) -m pip install -q -c requirements/constraints.txt "$$wheel"; }

# The CPU image from its def file, the way apptainer build does, without Apptainer (scripts/build-image.sh;
# the debootstrap result and pip's cache are kept in $$HPCMORPH_CACHE, default /var/cache/hpcmorph).
IMAGE ?= hpcmorph-cpu.sqfs
image:
	bash scripts/build-image.sh apptainer/hpcmorph-cpu.def $(IMAGE)

# The MPICH-ABI image for the leadership facilities (hpcmorph submit --site; docs/hpc.md), built the same way.
IMAGE_MPICH ?= hpcmorph-mpich.sqfs
image-mpich:
	bash scripts/build-image.sh apptainer/hpcmorph-mpich.def $(IMAGE_MPICH)

# The GPU image (apptainer/hpcmorph.def): the CPU image's system and venv, whose torch brings CUDA and
# NCCL as PyPI wheels, plus Horovod built with NCCL; built the same way, no GPU needed.
IMAGE_GPU ?= hpcmorph-gpu.sqfs
image-gpu:
	bash scripts/build-image.sh apptainer/hpcmorph.def $(IMAGE_GPU)

# The CPU image as an OCI archive (docker load / podman load; podman-hpc at NERSC): its root file
# system imported with podman, no registry (scripts/build-oci.sh).
IMAGE_OCI ?= hpcmorph-cpu-oci.tar
image-oci:
	bash scripts/build-oci.sh apptainer/hpcmorph-cpu.def $(IMAGE_OCI)

# Every stage in order; stages already done for this config are skipped, so a rerun resumes.
run: setup
	$(LAUNCH) $(HPCMORPH) run --config $(CONFIG) $(foreach kv,$(SET),--set $(kv))

# Headless Chromium for the report's browser check (tests/test_report.py; report.screenshot).
chromium:
	@bash scripts/apt-tool.sh chromium chromium fonts-liberation

# ruff (pinned in requirements/constraints.txt, settings in pyproject.toml) on the Python, shellcheck
# (settings in .shellcheckrc) on the shell scripts and job scripts.
SHELL_SCRIPTS := scripts/*.sh jobs/lib/*.sh jobs/slurm/*.sbatch jobs/pbs/*.pbs .ci/run
lint: setup
	@bash scripts/apt-tool.sh shellcheck shellcheck
	$(VENV)/bin/ruff check .
	@if command -v shellcheck >/dev/null; then shellcheck $(SHELL_SCRIPTS) && echo "shellcheck: ok"; \
	elif [ -n "$$CI" ]; then echo "lint: no shellcheck in CI" >&2; exit 1; \
	else echo "lint: no shellcheck here; the shell scripts were not checked"; fi

# Two pytest workers per two cores (pytest-xdist): one runs while the other waits on Slurm, mpirun
# start-up or the image build; tests that share a cluster or the image stay on one worker
# (tests/conftest.py). XDIST= runs the suite in one process.
XDIST ?= -n auto --dist loadgroup
# --durations: every log says where the suite's time went. Then the comparing unit tests once more
# with other kernels (test-cpu-kinds' quick leg). The MPICH image's tests (marker mpich) are left
# out: its cold build alone takes longer than the suite's budget allows (docs/testing.md);
# `make test-mpich` runs them. So are the two-node tests (marker multinode, about 23 minutes):
# `make test-multinode`.
test: setup horovod chromium lint
	$(PY) -m pytest -q -ra --durations=25 -m "not mpich and not multinode and not images" $(XDIST)
	$(MAKE) --no-print-directory test-cpu-kinds-quick

# The tests that compare numbers (batched against one at a time, ranks, resumes, weights), with
# other CPU kernels and thread counts, as another machine would run them: ATEN_CPU_CAPABILITY picks
# PyTorch's kernels (default, avx2, avx512), HPCMORPH_TEST_THREADS the threads of every run.
COMPARING := tests/test_attack.py tests/test_attack_methods.py tests/test_certify.py tests/test_train_core.py tests/test_train.py \
             tests/test_analyze.py tests/test_signals.py
test-cpu-kinds-quick: setup
	ATEN_CPU_CAPABILITY=avx2 HPCMORPH_TEST_THREADS=2 $(PY) -m pytest -q -m "not slow and not mpi" $(COMPARING)
test-cpu-kinds: setup horovod
	ATEN_CPU_CAPABILITY=avx2 HPCMORPH_TEST_THREADS=2 $(PY) -m pytest -q -ra $(XDIST) $(COMPARING)
	ATEN_CPU_CAPABILITY=default HPCMORPH_TEST_THREADS=1 $(PY) -m pytest -q -ra $(XDIST) $(COMPARING)

# Marks (pyproject.toml): slow = end-to-end runs of the CLI, mpi = launches mpirun, slurm = a real Slurm,
# container = builds the CPU image and runs it under ch-run, mpich = the MPICH image under the host's MPICH,
# multinode = a two-node Slurm in namespaces, images = builds the GPU and OCI images.
test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow and not mpi and not slurm and not container and not mpich and not multinode and not images"

# Only the container tests: the image built from the def (as root), then run under Charliecloud.
test-container: setup
	$(PY) -m pytest -q -ra -m "container and not mpich"

# The MPICH-ABI image built from its def (as root), then the hybrid model rehearsed: the host's
# MPICH starts the ranks, each in the image under ch-run with the host's libmpi in place of the image's.
test-mpich: setup
	$(PY) -m pytest -q -ra -m mpich

# The GPU image and the OCI image built and checked (marker images, as root; each build takes
# minutes: docs/hpc.md): the GPU image's %test on the CPU, the OCI archive loaded and the tiny
# chain run in it under podman, equal to the run outside.
test-images: setup
	$(PY) -m pytest -q -ra --durations=0 -m images

# Only the two-node tests (as root): the chain across a two-node Slurm (scripts/slurm-local.sh
# --nodes 2) against the same ranks on one host, a node lost mid-attack and mid-train, a lock held
# from the other node. About 23 minutes on 2 cores: too slow for `make test` (docs/testing.md).
test-multinode: setup horovod
	$(PY) -m pytest -q -ra --durations=0 -m multinode

bench: bench-generate bench-train bench-attack bench-analyze

bench-generate: setup
	$(HPCMORPH) bench generate

bench-train: setup horovod
	$(HPCMORPH) bench train

bench-attack: setup
	$(HPCMORPH) bench attack

bench-analyze: setup
	$(HPCMORPH) bench analyze

clean:
	rm -rf runs bench-out .pytest_cache
