"""One-pixel (k-pixel) corner attacks, shared by the attack stage and adversarial training.

What a search needs and nothing of a stage: the goal margin and success (goal.py), corner candidates
and their scan order (corners.py), candidate images classified in batches (pixels.py), the outcome
record and objective every method shares (outcome.py), Sparse-RS (sparse_rs.py) and the
saliency-ranked corner search (saliency.py). The attack stage (:mod:`hpcmorph.attack`) runs them on
trained models; training (:mod:`hpcmorph.train.adversarial`) runs the saliency search against the
weights it is training, which is why they live below both stages: data flows one way, and train
never imports attack. Imports torch and numpy only.
"""
