"""Training the VirNucPro classifier on a workdir's embeddings (the `train` stage's engine).

rows: the rows streamed from the shard files and their side of the split (virnucpro.holdout); recipe: the original recipe
as data; fit: the training, checkpointed and resumable; output: the classifier's files. Knows
nothing of SLURM or the runner (stages/train.py connects them).
"""

from .fit import TrainedClassifier, TrainingInterrupted, fit
from .output import write_classifier
from .recipe import ORIGINAL, Recipe
from .rows import ShardSource

__all__ = ["ORIGINAL", "Recipe", "ShardSource", "TrainedClassifier", "TrainingInterrupted", "fit", "write_classifier"]
