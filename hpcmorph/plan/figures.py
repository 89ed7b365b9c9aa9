"""The per-rank throughputs the plan divides the work by: measured here (``--calibrate``,
``hpcmorph/calibrate.py``) or taken from :data:`ASSUMED`, a stated table per device type."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

DEVICES = ("cpu", "cuda")

# Per-rank figures when nothing was measured here, each at a reference image size and scaled by
# the pixel count to the config's. cpu: one rank with 2 threads of this project's 2-core x86 test
# machine, from the README's benchmarks (generate 21.6 galaxies/s; training 63 images/s at 100 x 100
# -> ~150 at 64 x 64; inference ~450 images/s and the attack at 0.94 of it; MMD costs 2x; the
# certifying scan's bfloat16 screen ~1,950 candidates/s, `make bench-attack` (6)).
# cuda: NOT measured (no GPU has run this code yet): order-of-magnitude guesses for one
# A100/H200-class GPU per rank, fp32, deterministic cuDNN. Replace either with --calibrate.
ASSUMED = {
    "cpu": {"reference_size": 64, "generate": 21.6, "train_regular": 150.0, "train_mmd": 75.0, "infer": 450.0,
            "embed": 450.0, "attack": 420.0, "certify": 1950.0, "reobserve": 300.0, "write": 200.0},
    "cuda": {"reference_size": 100, "train_regular": 2500.0, "train_mmd": 1250.0, "infer": 15000.0,
             "embed": 15000.0, "attack": 13500.0, "certify": 15000.0},
}
# Figures of loops that run on the CPU whatever the device (GalSim, HDF5).
CPU_FIGURES = ("generate", "reobserve", "write")
UNITS = {"generate": "galaxies/s", "train_regular": "images/s", "train_mmd": "labelled images/s",
         "infer": "images/s", "embed": "images/s", "attack": "candidates/s", "certify": "candidates/s",
         "reobserve": "observations/s",
         "write": "MB/s"}
# Figures that do not scale with the image size (MB/s).
_UNSCALED = ("write",)


class PlanError(UserError):
    """A plan that cannot be made as asked (bad --ranks, unknown device): one line, exit 2."""


@dataclass(frozen=True)
class Rate:
    """A per-rank throughput: ``per_s`` units per second; ``source`` says where it comes from."""

    name: str
    per_s: float
    unit: str
    assumed: bool
    source: str

    def describe(self) -> str:
        return f"{_num(self.per_s)} {self.unit} per rank [{self.source}]"


class Figures:
    """The per-rank throughputs of one device type for a config: measured here or assumed."""

    def __init__(self, cfg, device: str, calibration: dict | None = None):
        self.cfg, self.device, self.calibration = cfg, device, calibration
        self.size = cfg.generate.image_size

    def __call__(self, name: str) -> Rate:
        # The CPU-side loops run on the CPU whatever the ranks' device: a GPU node's calibration
        # measured them on that node's CPU.
        device = "cpu" if name in CPU_FIGURES else self.device
        cal = self.calibration
        found = (cal or {}).get("rates", {}).get(name)
        if found and found.get("per_s", 0) > 0:
            measured_at = found.get("image_size", self.size)
            scale = 1.0 if name in _UNSCALED else (measured_at / self.size) ** 2
            where = f"calibrated on {cal.get('host', '?')} {str(cal.get('date', '?'))[:10]}"
            if scale != 1.0:
                where += f", scaled from {measured_at}x{measured_at}"
            return Rate(name, found["per_s"] * scale, found.get("unit", UNITS[name]), False, where)
        table = ASSUMED[device]
        ref = table["reference_size"]
        scale = 1.0 if name in _UNSCALED else (ref / self.size) ** 2
        note = f"assumed: {device} table" + ("" if scale == 1.0 else f", scaled from {ref}x{ref}")
        return Rate(name, table[name] * scale, UNITS[name], True, note)


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"
