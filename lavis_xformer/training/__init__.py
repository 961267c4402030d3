"""Training and launching: importing this registers ``runner_xformer`` into LAVIS's registry.

* ``runner.py``: ``RunnerXFormer`` (registered ``runner_xformer``), LAVIS's RunnerBase fixed for
  CPU/torchrun and owning the training loop; ``state.py``: its ``TrainState``; ``step.py``: the
  loss parts and the NaN/inf guard of one step.
* ``checkpoints.py``: atomic checkpoint files, resume paths, random states;
  ``preemption.py``: stop on SIGTERM/SIGINT after a checkpoint (exit status 75).
* ``launch.py``: what ``python -m lavis.train`` / ``lavis.evaluate`` share (command line,
  config loading and checks, distributed set-up); ``run_files.py``: ``includes:`` of run files.
"""
from lavis_xformer.training.runner import RunnerXFormer  # noqa: F401
