"""``TrainState``: where a training run stands, in one place (training/runner.py)."""
from dataclasses import dataclass, field
from typing import List, Optional

from lavis_xformer.training.preemption import StopSignals


@dataclass
class TrainState:
    """What the runner's loop reads and writes between steps, besides what LAVIS's RunnerBase
    keeps (model, optimizer, scaler, lr schedule, ``start_epoch``). A checkpoint records
    ``iteration``, the loaders' positions and ``rng``; a resumed run restores them."""

    epoch: int = 0                # the epoch being trained
    iteration: int = 0            # iterations of ``epoch`` done: the loop continues from here
    loaders: List = field(default_factory=list)  # the train loaders (ResumableIterLoader)
    rng: Optional[List[dict]] = None  # every process's random state at the last snapshot
    last_checkpoint: Optional[str] = None       # the newest complete checkpoint of this run
    mid_epoch_checkpoint: Optional[str] = None  # the one checkpoint_<e>_iter<n>.pth kept
    signals: StopSignals = field(default_factory=StopSignals)  # SIGTERM/SIGINT in an epoch
