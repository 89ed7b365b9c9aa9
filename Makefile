# hpcmorph: `make run` and `make test` each set the machine up on first use (scripts/setup.sh is
# idempotent: a second call returns at once), then do their job.
VENV    ?= .venv
CONFIG  ?= laptop
RANKS   ?= 1
PY      := $(VENV)/bin/python
HPCMORPH := $(VENV)/bin/hpcmorph

# Running as root (CI, containers) needs OpenMPI's consent; more ranks than cores needs oversubscribe.
export OMPI_ALLOW_RUN_AS_ROOT ?= 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM ?= 1
export OMPI_MCA_rmaps_base_oversubscribe ?= 1
# A venv set up with PyPI's MPI wheel brings its own mpiexec, which must launch its ranks.
MPIRUN  := $(if $(wildcard $(VENV)/bin/mpiexec),$(VENV)/bin/mpiexec,$(shell command -v mpirun))
LAUNCH  := $(if $(filter 1,$(RANKS)),,$(MPIRUN) -n $(RANKS))

.PHONY: setup horovod chromium image image-mpich run test test-fast test-container test-mpich bench bench-generate bench-train bench-attack bench-analyze clean help

help:
	@echo "make run    [CONFIG=laptop] [RANKS=1]  set up, then run the pipeline on the embedded default"
	@echo "make test                              set up, then run the test suite"
	@echo "make test-fast                         the unit tests only (no mpirun, no end-to-end runs): under 2 minutes"
	@echo "make test-container                    the container tests only (build the CPU image, run it under ch-run)"
	@echo "make bench                             every stage's benchmark (figures beside a bare baseline)"
	@echo "make setup                             only bring the machine and .venv up to date"
	@echo "make horovod                           build (once, cached) and install Horovod into .venv"
	@echo "make image  [IMAGE=hpcmorph-cpu.sqfs]  build the CPU container image from apptainer/hpcmorph-cpu.def (root)"
	@echo "make image-mpich [IMAGE_MPICH=...]     build the MPICH-ABI image (the facilities' hybrid model) from apptainer/hpcmorph-mpich.def"
	@echo "make test-mpich                        build it and run the tiny chain in it under the host's MPICH, its libmpi swapped in"

setup:
	@bash scripts/setup.sh

# Horovod 0.28.1 needs source edits to build against torch 2.14: built once, cached in $(HOROVOD_WHEELS)
# (the MPICH image keeps its own, built against MPICH, in the build host's cache).
HOROVOD_WHEELS ?= .cache/wheels
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

# Every stage in order; stages already done for this config are skipped, so a rerun resumes.
run: setup
	$(LAUNCH) $(HPCMORPH) run --config $(CONFIG)

# Headless Chromium for the report's browser check (tests/test_report.py; report.screenshot).
chromium:
	@bash scripts/setup-chromium.sh

# The MPICH image's tests (marker mpich) are left out: its cold build alone takes longer than the suite's
# budget allows (docs/testing.md); `make test-mpich` runs them.
test: setup horovod chromium
	$(PY) -m pytest -q -ra -m "not mpich"

# Marks (pyproject.toml): slow = end-to-end runs of the CLI, mpi = launches mpirun, slurm = a real Slurm,
# container = builds the CPU image and runs it under ch-run, mpich = the MPICH image under the host's MPICH.
test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow and not mpi and not slurm and not container and not mpich"

# Only the container tests: the image built from the def (as root), then run under Charliecloud.
test-container: setup
	$(PY) -m pytest -q -ra -m "container and not mpich"

# The MPICH-ABI image built from its def (as root), then the hybrid model rehearsed: the host's
# MPICH starts the ranks, each in the image under ch-run with the host's libmpi in place of the image's.
test-mpich: setup
	$(PY) -m pytest -q -ra -m mpich

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
