"""Suite-wide settings: the tests run offline, on the CPU.

Nothing may reach the model hub: the tiny model types read only files shipped by pip
packages, and every full-size model is built with random weights. Setting the offline
switches here (inherited by the subprocesses the tests start) turns an accidental download
into an immediate error instead of a network wait.
"""
import os

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")
# Keep CPU tests predictable on small machines.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
