"""scripts/gpu-check.sh: the one-call proof of the GPU path, run here end to end on the CPU at small
sizes (``--cpu``), so that the script cannot rot while no GPU is at hand."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import ROOT, env

SCRIPT = ROOT / "scripts" / "gpu-check.sh"


def test_list_wheels_names_every_package_beyond_torch():
    res = subprocess.run(["bash", str(SCRIPT), "--list-wheels"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    names = {line.split("==")[0] for line in res.stdout.split()}
    assert {"galsim", "h5py", "mpi4py", "mpich", "torchvision", "scipy", "scikit-learn", "matplotlib",
            "pyyaml", "tqdm", "numpy"} <= names, res.stdout
    assert "torch" not in names


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    e = {**env(), "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(SCRIPT), "--cpu", "--out", str(tmp_path / "out"), "--budget", "240"],
                         cwd=tmp_path, env=e, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert report["mode"] == "cpu" and report["passed"] is True, report["checks"]
    steps = report["steps"]
    assert list(steps) == ["environment", "generate", "train", "attack_cuda_vs_cpu", "stages", "attack_throughput",
                           "precision", "certify_screens", "paper_budget"]
    assert all(s["ok"] and s["seconds"] > 0 for name, s in steps.items() if name != "environment"), steps
    assert set(report["checks"]) == {"train_regular_learns", "train_mmd_learns", "attack_prob_before_within_tolerance",
                                     "attack_same_flips", "attack_queries_within_tolerance",
                                     "analyze_latents_match_cpu", "certify_windows_agree"}
    # CPU against CPU: the same numbers exactly.
    compare = steps["attack_cuda_vs_cpu"]
    assert compare["device_b"] == "cpu" and compare["success_agreement"] == 1.0 and compare["queries_equal"] == 1.0
    assert steps["stages"]["attack_rows"] > 0 and steps["stages"]["latent_max_rel_diff_vs_cpu"] == 0.0
    throughput = steps["attack_throughput"]
    assert throughput["attack_candidates_per_s"] > 0 and throughput["bare_images_per_s"] > 0
    assert throughput["ratio_attack_to_bare"] == pytest.approx(
        throughput["attack_candidates_per_s"] / throughput["bare_images_per_s"])
    fp32 = steps["precision"]["fp32"]
    assert fp32["train"]["images_per_s"] > 0 and fp32["infer"]["fraction"] > 0
    assert fp32["flops_per_image"]["train"] > 2 * fp32["flops_per_image"]["infer"]
    screens = {r["screen"]: r for r in steps["certify_screens"]["rows"]}
    assert screens["float32 whole passes"]["ratio"] == 1.0 and screens["float32 windows"]["candidates_per_s"] > 0
    paper = steps["paper_budget"]
    assert paper["queries_at_most"] == 2 * 150 * 2 * 400 * 81 and paper["budget_seconds"] > 0
    assert paper["how"].startswith("extrapolated")
