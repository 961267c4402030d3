"""Runners of the plugin; importing this registers them into LAVIS's registry."""
from lavis_xformer.runners.runner_xformer import RunnerXFormer  # noqa: F401
