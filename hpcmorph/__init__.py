"""hpcmorph: rerun, at any scale, the study of how fragile deep-learning galaxy classifiers are.

Stages (each ``hpcmorph <stage>``, each runnable serially or under ``mpirun``/``srun``):
generate -> train -> attack -> analyze -> report.
"""

__version__ = "0.1.0"
