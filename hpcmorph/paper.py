"""The paper's numbers, once: what every comparison with the paper (analysis, claims, report) reads.

Kept free of torch, numpy and the stages so that the report and the docs' checks can import it
cheaply. Each value is as the paper prints it; the modules that compare derive what they need
(ratios, accuracies) from these, so a correction here reaches every table and claim.
"""

from __future__ import annotations

# Table 1: test-set accuracy and weighted precision, recall and F1 of each model on Y10 and Y1, as
# fractions.
TABLE1 = {
    "regular": {"y10": {"accuracy": 0.72, "precision": 0.76, "recall": 0.72, "f1": 0.72},
                "y1": {"accuracy": 0.43, "precision": 0.61, "recall": 0.43, "f1": 0.36}},
    "mmd": {"y10": {"accuracy": 0.82, "precision": 0.82, "recall": 0.82, "f1": 0.82},
            "y1": {"accuracy": 0.66, "precision": 0.67, "recall": 0.66, "f1": 0.67}},
}

# Table 2: Euclidean distances in each model's latent space, Y10 -> Y1 and Y10 -> attacked, mean and
# std over the flipped images (n, the first number of FLIPPED).
TABLE2 = {
    "regular": {"y10_y1": {"mean": 20.2, "std": 11.9, "n": 136}, "y10_attacked": {"mean": 16.8, "std": 5.0, "n": 136}},
    "mmd": {"y10_y1": {"mean": 29.7, "std": 17.4, "n": 136}, "y10_attacked": {"mean": 38.1, "std": 15.5, "n": 136}},
}

# The one-pixel attack's result in the text beside Table 2: 136 of the 150 attacked test images
# flipped, for both models, with pixel values in [0, 1].
FLIPPED = (136, 150)
