"""virnucpro: VirNucPro viral-sequence identification, step-first, locally or on SLURM."""

__version__ = "0.1.0"
