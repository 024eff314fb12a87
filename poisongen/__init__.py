"""poisongen: write auditable poisoned copies of semantic-segmentation datasets.

A research tool for measuring and defending against training-data poisoning of segmentation
models. Every poisoned byte is recorded in the run's manifest.
"""

__version__ = "0.1.0"
