"""Suite-wide settings and fixtures: the tests run offline, on the CPU.

Nothing may reach the model hub: the tiny model types read only files shipped by pip
packages, and every full-size model is built with random weights. Setting the offline
switches here (inherited by the subprocesses the tests start) turns an accidental download
into an immediate error instead of a network wait.
"""
import os

import pytest

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")
# Keep CPU tests predictable on small machines.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def one_thread():
    """In-process training on one thread, as the subprocesses run (OMP_NUM_THREADS=1): the
    machine's cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def result_dirs(tmp_path, monkeypatch):
    """``tmp_path`` as the run's ``result_dir`` and ``output_dir`` in LAVIS's registry, where
    the evaluation tasks write their files (the runner sets them in a real run)."""
    from lavis.common.registry import registry

    monkeypatch.setitem(registry.mapping["paths"], "result_dir", str(tmp_path))
    monkeypatch.setitem(registry.mapping["paths"], "output_dir", str(tmp_path))
    return tmp_path


@pytest.fixture
def lavis_run(tmp_path):
    """``lavis_run(cfg_path, *options, script="lavis.train", processes=1, expect=0)``: run
    LAVIS's entry point on this checkout in ``tmp_path`` (one thread per process) and return
    the finished process (``.output``: stdout and stderr), asserting its exit status."""
    from _testlib import lavis_command, run_command

    def run(cfg_path, *options, script="lavis.train", processes=1, expect=0, threads=1, **env):
        return run_command(lavis_command(cfg_path, *options, script=script, processes=processes),
                           tmp_path, expect=expect, threads=threads, **env)
    return run


@pytest.fixture
def tiny_stage1(lavis_run, tmp_path):
    """``tiny_stage1(name, *options, images=8, batch_size=2, max_epoch=1, processes=1,
    expect=0)``: a short tiny stage-1 training run (TINY_STAGE1) writing into
    ``tmp_path/name``; returns the finished process."""
    from _testlib import TINY_STAGE1, tiny_stage1_options

    def run(name, *options, images=8, batch_size=2, max_epoch=1, processes=1, expect=0, **env):
        return lavis_run(TINY_STAGE1, *tiny_stage1_options(tmp_path / name, images, batch_size,
                                                           max_epoch), *options,
                         processes=processes, expect=expect, **env)
    return run


def pytest_collection_modifyitems(config, items):
    """``LAVIS_XFORMER_TEST_SHARD=k/n`` keeps the k-th of n shares of the test files.

    Whole files (their module fixtures stay together), taken round-robin in name order; for
    splitting the suite between CI's two stacks when time is short (.ci/run, CI_SPLIT).
    """
    shard = os.environ.get("LAVIS_XFORMER_TEST_SHARD", "")
    if not shard:
        return
    try:
        k, n = (int(x) for x in shard.split("/"))
        assert 1 <= k <= n
    except (ValueError, AssertionError):
        import pytest

        raise pytest.UsageError("LAVIS_XFORMER_TEST_SHARD=%r: expected k/n with 1 <= k <= n, e.g. 1/2" % shard)
    files = sorted({str(item.path) for item in items})
    keep = {f for i, f in enumerate(files) if i % n == k - 1}
    selected = [item for item in items if str(item.path) in keep]
    deselected = [item for item in items if str(item.path) not in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
