"""The package's shape: data flows one way through the stages, and no module imports itself in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT
from hpcmorph.stages import NAMES, STAGES

PACKAGE = ROOT / "hpcmorph"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every hpcmorph module and the hpcmorph modules it imports, anywhere in its body (lazy imports too)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in NAMES else None


def test_no_stage_imports_a_later_stage():
    late = [(m, d) for m, deps in imports().items() for d in deps
            if _stage_of(m) and _stage_of(d) and NAMES.index(_stage_of(d)) > NAMES.index(_stage_of(m))]
    assert not late, f"stages importing later stages: {late}"


# Packages below the stages, shared by several of them: they may import torch, numpy and the standard
# library, and of hpcmorph only its shared plumbing, never a stage or what drives the stages.
SHARED = ("hpcmorph.onepixel",)
DRIVERS = ("hpcmorph.bench", "hpcmorph.plan", "hpcmorph.cli", "hpcmorph.pipeline", "hpcmorph.submit",
           "hpcmorph.calibrate", "hpcmorph.stages")
THIRD_PARTY = {"numpy", "torch"}


def _third_party(path: Path) -> set[str]:
    """Top-level names of the non-hpcmorph packages a module imports (relative imports excluded)."""
    import sys

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
    return {m for m in found if m != "hpcmorph" and m not in sys.stdlib_module_names}


def test_shared_packages_import_no_stage_and_only_torch_and_numpy():
    graph = imports()
    shared = [m for m in graph if m.startswith(SHARED)]
    assert shared, "no shared package found: SHARED names what is not there"
    bad = [(m, d) for m in shared for d in graph[m] if _stage_of(d) or d.startswith(DRIVERS)]
    assert not bad, f"shared modules importing a stage or a driver: {bad}"
    for m in shared:
        path = PACKAGE.joinpath(*m.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        extra = _third_party(path) - THIRD_PARTY
        assert not extra, f"{m} imports {sorted(extra)}: a shared package imports torch and numpy only"


def test_training_makes_its_attacks_with_the_shared_search():
    # Adversarial training runs the attack stage's search, from the package below both stages.
    assert "hpcmorph.onepixel.saliency" in imports()["hpcmorph.train.adversarial"]


def test_stages_hold_no_benchmark_code_and_import_no_benchmark():
    graph = imports()
    for module, deps in graph.items():
        if _stage_of(module):
            assert not module.endswith(".bench"), f"{module}: benchmarks live in hpcmorph.bench"
            assert not any(d.startswith("hpcmorph.bench") for d in deps), f"{module} imports a benchmark"


def test_no_import_cycles():
    graph = imports()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_checker_sees_a_planted_cycle_and_a_backward_import(tmp_path, monkeypatch):
    """The walks above must be able to fail: a copy of the package with one bad import each way, and a
    shared package importing a stage and h5py."""
    import shutil

    import test_structure as me

    copy = tmp_path / "hpcmorph"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "generate" / "figures.py").write_text((copy / "generate" / "figures.py").read_text()
                                                 + "\nfrom ..report import stage  # planted\n")
    (copy / "store.py").write_text((copy / "store.py").read_text() + "\nfrom . import pipeline  # planted\n")
    (copy / "onepixel" / "goal.py").write_text((copy / "onepixel" / "goal.py").read_text()
                                              + "\nfrom ..train import model  # planted\nimport h5py  # planted\n")
    monkeypatch.setattr(me, "ROOT", tmp_path)
    monkeypatch.setattr(me, "PACKAGE", copy)
    try:
        me.test_no_stage_imports_a_later_stage()
    except AssertionError as err:
        assert "hpcmorph.generate.figures" in str(err)
    else:
        raise AssertionError("a backward import went unnoticed")
    try:
        me.test_shared_packages_import_no_stage_and_only_torch_and_numpy()
    except AssertionError as err:
        assert "hpcmorph.onepixel.goal" in str(err) and "hpcmorph.train.model" in str(err)
    else:
        raise AssertionError("a shared package importing a stage went unnoticed")
    (copy / "onepixel" / "goal.py").write_text((copy / "onepixel" / "goal.py").read_text()
                                              .replace("from ..train import model  # planted\n", ""))
    try:
        me.test_shared_packages_import_no_stage_and_only_torch_and_numpy()
    except AssertionError as err:
        assert "hpcmorph.onepixel.goal imports ['h5py']" in str(err)
    else:
        raise AssertionError("a shared package importing h5py went unnoticed")
    try:
        me.test_no_import_cycles()
    except AssertionError as err:
        assert "import cycle" in str(err)
    else:
        raise AssertionError("an import cycle went unnoticed")


# ---------------------------------------------------------------------- one contract, one home each

def test_every_stage_has_the_same_entry_and_a_force_flag():
    import inspect

    from hpcmorph.cli import build_parser

    parser = build_parser()
    for stage in STAGES:
        params = list(inspect.signature(stage.run).parameters.values())
        assert [p.name for p in params] == ["cfg", "ctx", "force"], f"{stage.name}.run{inspect.signature(stage.run)}"
        assert params[1].default is inspect.Parameter.empty and params[2].default is False
        args = parser.parse_args([stage.name, "--force"])
        assert args.force is True and args.command == stage.name


def test_submit_and_the_pipeline_read_the_one_table_of_stages():
    from hpcmorph import pipeline, submit

    assert submit.STAGES is NAMES
    assert pipeline.STAGES is STAGES


def test_plan_submit_and_bench_take_their_per_stage_facts_from_the_table():
    from hpcmorph import bench, plan, stages, submit

    assert plan.STAGES is NAMES and plan.GPU_STAGES is stages.GPU_STAGES
    assert plan.FIXED == {s.name: s.fixed_s for s in STAGES}
    assert plan.EFFICIENCY == {s.name: s.efficiency for s in STAGES}
    assert submit.RANKS_PER_NODE == {s.name: s.ranks_per_node for s in STAGES}
    assert not hasattr(submit, "GPU_STAGES"), "submit's GPU stages are the table's gpu_job ones"
    # Every stage whose scripts ask for a GPU runs on it; serial stages stay on one node.
    assert set(stages.GPU_JOB_STAGES) <= set(stages.GPU_STAGES) and set(stages.SERIAL) <= set(stages.ONE_NODE)
    benched = sorted(p.stem for p in (Path(bench.__file__).parent).glob("*.py") if p.stem in NAMES)
    assert sorted(bench.STAGES) == benched


def test_plan_modules_stay_short():
    # The plan keeps one part per module (figures, work, the run's plan, the CLI), each short enough to read whole.
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "plan").glob("*.py")}
    assert {"figures.py", "work.py", "model.py", "cli.py"} <= set(sizes), sizes
    assert not (PACKAGE / "plan.py").exists()
    assert all(n <= 300 for n in sizes.values()), sizes


def test_every_user_error_is_one_class_the_cli_catches():
    from hpcmorph import errors
    from hpcmorph.config import ConfigError
    from hpcmorph.generate.sources import SourceError
    from hpcmorph.store import StoreError
    from hpcmorph.submit import SubmitError
    from hpcmorph.train.distributed import BackendError

    for cls in (ConfigError, SourceError, StoreError, SubmitError, BackendError, errors.StageError):
        assert issubclass(cls, errors.UserError), cls
    cli = (PACKAGE / "cli.py").read_text()
    assert "user_errors=(UserError,)" in cli


def _sources():
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in PACKAGE.rglob("*.py")}


def test_files_are_made_atomic_in_one_place():
    # store.atomic is the one write-then-rename; the report's folder swap is the one other rename, and
    # the browser check keeps its own: it runs as a standalone script on any python3 (stdlib only).
    allowed = {"hpcmorph/store.py", "hpcmorph/report/stage.py", "hpcmorph/report/browser.py"}
    found = sorted(path for path, text in _sources().items() if "os.replace(" in text or ".replace(path)" in text)
    assert set(found) <= allowed, f"hand-made atomic writes in {set(found) - allowed}"


def test_launcher_variables_are_read_in_one_place():
    found = sorted(path for path, text in _sources().items() if "OMPI_COMM_WORLD_LOCAL_RANK" in text)
    assert found == ["hpcmorph/mpi.py"], found
    found = sorted(path for path, text in _sources().items() if "def device_for" in text)
    assert found == ["hpcmorph/mpi.py"], found


def test_the_torch_stages_load_only_what_they_use():
    """Every rank of train and attack imports its stage: torchvision (its detection operators load
    torch._dynamo), GalSim, astropy, SciPy and scikit-learn once cost each ~3 s of CPU it never used."""
    import subprocess
    import sys

    probe = ("import sys, hpcmorph.train.stage, hpcmorph.attack.stage; "
             "print(' '.join(m for m in ('torchvision', 'torch._dynamo', 'galsim', 'astropy', 'scipy', 'sklearn') "
             "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == [], f"train and attack load {res.stdout.strip()} at import"
