"""The training recipe of the original VirNucPro `train.py` (REFERENCE.md §1 "Training"), as data.

It is recorded in the training checkpoint and in classifier.json, so a finished classifier says how
it was made and a checkpoint made with another recipe is never resumed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Recipe:
    hidden: int = 512  # MLPClassifier(input width, 512, 2): Linear, BatchNorm1d, ReLU, Dropout(0.5), Linear
    classes: int = 2  # 0 = other, 1 = virus (the released classifiers' order)
    init: str = "xavier_uniform"  # of both Linear weights; biases keep torch's default
    loss: str = "cross_entropy"
    optimizer: str = "sgd"
    learning_rate: float = 2e-4
    momentum: float = 0.9
    batch_size: int = 32  # shuffled every epoch
    lr_step_epochs: int = 10  # StepLR(step_size=10, gamma=0.85), stepped once per epoch
    lr_gamma: float = 0.85
    max_epochs: int = 200
    patience: int = 5  # early stopping on the held-out loss; the best epoch's weights are kept

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        return cls(**data)


ORIGINAL = Recipe()
