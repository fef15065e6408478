"""What one epoch of training measured: a line of a run's ``metrics.jsonl``."""

from dataclasses import asdict, dataclass
from typing import Optional

__all__ = ["EpochMetrics"]


@dataclass
class EpochMetrics:
    """One line of ``metrics.jsonl``: per-image nats, and the seconds spent training.

    ``train_elbo`` is minus the training objective per image of the epoch: the ELBO itself
    unless a KL weight (warm-up, beta) or extra terms (M2's classifier) are part of the
    objective. The test and validation figures are always the unweighted ELBO (and its two
    terms); they are NaN for a guide that cannot encode new images (a non-amortized one), and
    ``validation_elbo`` is None without a validation set. ``lr`` is the learning rate the
    epoch trained with (None in the history of runs from before it was recorded).
    ``skipped_steps``: the epoch's steps whose update was skipped (``--skip-grad-norm``).
    ``grad_norm``: the median of the epoch's gradient norms before clipping, measured with
    ``--grad-clip`` or ``--skip-grad-norm`` (None without).
    """

    epoch: int
    train_elbo: float
    test_elbo: float
    test_reconstruction: float
    test_kl: float
    seconds: float
    validation_elbo: Optional[float] = None
    lr: Optional[float] = None
    skipped_steps: int = 0
    grad_norm: Optional[float] = None

    def to_dict(self) -> dict:
        return asdict(self)
