"""The miniature world's device path (bench/device/mini_finding.sh runs the finding on a GPU):
what can be checked without one. The GPU run itself has not been made (docs/miniature-world.md)."""
import os
import subprocess
import sys
import sysconfig

import pytest
import torch

from _testlib import REPO
from lavis_xformer.world import config as world_config, main as world_main, pretrain


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("device, says", [("cuda", "CUDA is not available here; use --device cpu"),
                                          ("tpu", "not a torch device"),
                                          ("meta", "runs on cpu or cuda")])
def test_an_unusable_device_is_one_clear_line_before_any_work(device, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        world_main.main(["--device", device, "--projects", str(REPO / "projects" / "xformer" / "mini")])
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "output")  # nothing was built


def test_every_stage_of_a_cuda_job_runs_on_cuda(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = world_main.Job(world_config.load("ci"), str(REPO / "projects" / "xformer" / "mini"), device="cuda")
    job.assets = {"world": "/w", "clip": "/c", "mae": "/m", "lm": "/l"}
    for stage in ("stage1", "stage2") + tuple(name for name, _ in world_main.EVALS):
        assert "run.device=cuda" in job.command("xformer", 1, stage), stage
    calls = []
    monkeypatch.setattr(job.children, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(world_main.world_build, "ensure_world", lambda cfg, cache_dir: str(tmp_path))
    monkeypatch.setattr(world_main.pretrain, "ensure_part", lambda cfg, part, cache_dir: str(tmp_path))
    job.prepare("ci")
    assert sorted(cmd[3] for cmd in calls) == sorted(pretrain.PARTS)
    assert all(cmd[cmd.index("--device") + 1] == "cuda" for cmd in calls)


def test_device_boot_gives_every_process_the_plugin_without_its_pth(tmp_path):
    """On the GPU machine the packages sit on PYTHONPATH, where the plugin's .pth is never read;
    bench/device/boot/sitecustomize.py must give each process (``python -m lavis.train``
    started by world.main) the plugin anyway. Reproduced here: this venv's base interpreter with
    the venv's site-packages on PYTHONPATH, without and with the boot folder."""
    base = os.path.join(sys.base_prefix, "bin", "python%d.%d" % sys.version_info[:2])
    if not os.path.isfile(base) or sys.prefix == sys.base_prefix:
        pytest.skip("needs a venv and its base interpreter")
    site = [sysconfig.get_paths()["purelib"], str(REPO)]
    code = ("import lavis.train; from lavis.common.registry import registry; "
            "print('xformer_opt' in registry.mapping['model_name_mapping'])")

    def run(*paths):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(list(paths) + site))
        env.pop("PYTHONHOME", None)
        return subprocess.run([base, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)

    without = run()  # the hook's two jobs undone: no lavis.train alias, and on Python >= 3.12
    # transformers 4.26 refuses the tokenizers installed there (its pin is relaxed by the hook)
    assert without.returncode != 0
    assert ("No module named 'lavis.train'" in without.stderr
            or "tokenizers>=0.11.1,!=0.11.3,<0.14 is required" in without.stderr), without.stderr[-3000:]
    booted = run(str(REPO / "bench" / "device" / "boot"))
    assert booted.returncode == 0, booted.stderr[-3000:]
    assert booted.stdout.strip() == "True"
