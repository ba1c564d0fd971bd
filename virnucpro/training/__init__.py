"""Training the VirNucPro classifier on a workdir's embeddings (the `train` stage's engine).

rows: the rows streamed from the shard files and the split by read; recipe: the original recipe
as data; fit: the training, checkpointed and resumable; output: the classifier's files. Knows
nothing of SLURM or the runner (stages/train.py connects them).
"""

from .fit import TrainedClassifier, TrainingInterrupted, fit
from .output import write_classifier
from .recipe import ORIGINAL, Recipe
from .rows import ShardSource, holdout_reads

__all__ = ["ORIGINAL", "Recipe", "ShardSource", "TrainedClassifier", "TrainingInterrupted", "fit", "holdout_reads",
           "write_classifier"]
