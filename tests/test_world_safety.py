"""``python -m lavis_xformer.world.main`` neither replaces nor orphans: each run has a job
folder of its own (``latest`` points at the newest finished one), finished runs and result
folders are replaced only with ``--overwrite``, its child processes end with it (SIGKILL
included), and the temporaries of killed cache builds are removed at the next start."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import yaml

from _testlib import REPO, subprocess_env
from lavis_xformer.world import build as world_build
from lavis_xformer.world import cache, config as world_config, main as world_main, probes

PROJECTS = str(REPO / "projects" / "xformer" / "mini")
TINY = {"name": "t", "world": {"seed": 3, "splits": {"train": 24, "val": 6, "test": 6}},
        "job": {"variants": ["blip2"], "seeds": [1], "stage1": {"max_epoch": 1}, "stage2": {"max_epoch": 1}}}


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def _gone(pid, seconds=20):
    """True once ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


# ----------------------------------------------------------------------------- child processes

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_child_dies_with_world_main_killed_by_sigkill(tmp_path):
    """world.main's way of starting children (Children.run on a pool thread, as prepare and the
    pipelines do); SIGKILL to the parent, which no handler sees, ends the child too."""
    parent = textwrap.dedent("""
        import sys, time
        from concurrent.futures import ThreadPoolExecutor
        from lavis_xformer.world.main import Children
        children = Children()
        with ThreadPoolExecutor(1) as pool:
            pool.submit(children.run, [sys.executable, "-c",
                                       "import os, time; print(os.getpid(), flush=True); time.sleep(300)"])
            time.sleep(300)
        """)
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        assert not _gone(child, seconds=0.5)  # running while its parent does
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _gone(child), "the child of a SIGKILLed world.main still runs"
    finally:
        proc.kill()
        proc.wait()


def _config_file(tmp_path, **overrides):
    cfg = json.loads(json.dumps(TINY))
    cfg.update(overrides)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_sigterm_stops_the_children_and_names_the_resume_command(tmp_path, monkeypatch, capsys):
    """SIGTERM while the first frozen part trains (the real prepare and pretraining command):
    the child gets SIGTERM, no further child starts, world.main exits 143 with one line that
    names the command resuming its run; the run stays unfinished (no report, no latest)."""
    monkeypatch.chdir(tmp_path)
    started = []
    start = world_main.Children.start
    monkeypatch.setattr(world_main.Children, "start",
                        lambda self, cmd, **kw: started.append(start(self, cmd, **kw)) or started[-1])

    def stop_when_a_child_runs():
        deadline = time.time() + 120
        while not started and time.time() < deadline:
            time.sleep(0.05)
        if started:
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)

    handler = signal.getsignal(signal.SIGTERM)

    threading.Thread(target=stop_when_a_child_runs, daemon=True).start()
    with pytest.raises(SystemExit) as exit_info:
        world_main.main(["--config", _config_file(tmp_path), "--projects", PROJECTS,
                         "--cache-dir", str(tmp_path / "cache")])
    assert exit_info.value.code == 128 + signal.SIGTERM
    (job,) = world_main.job_folders(os.path.join("output", "t"))
    err = capsys.readouterr().err
    assert "stopped by SIGTERM" in err and "--resume %s" % job in err, err
    assert len(started) == 1 and started[0].returncode == -signal.SIGTERM  # stopped, not left running
    assert not os.path.exists(os.path.join(job, "report.json"))
    assert not os.path.lexists(os.path.join("output", "t", "latest"))
    assert signal.getsignal(signal.SIGTERM) is handler  # given back


# ----------------------------------------------------------------------------- stale temporaries

def test_temporaries_of_killed_builds_are_removed_at_the_next_start_live_ones_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = world_config.load(_config_file(tmp_path))
    root = tmp_path / "cache"
    world = cache.entry(str(root), "world", world_config.world_key(cfg))
    os.makedirs(world)
    open(os.path.join(world, "DONE.json"), "w").write("{}")  # cached: the start reuses it
    host = socket.gethostname().split(".")[0]
    dead, live = _dead_pid(), os.getpid()
    stale = ["clip-0123456789ab.tmp-%d.%s" % (dead, host), "mae-0123456789ab.tmp-%d" % dead]
    kept = ["lm-0123456789ab.tmp-%d.%s" % (live, host),  # a build in progress
            "clip-0123456789ab.tmp-%d.otherhost" % dead,  # another host's: its pid means nothing here
            "notes.tmp-%d" % dead]  # not the cache's
    for name in stale + kept:
        os.makedirs(root / name / "sub")
        (root / name / "sub" / "part.pth").write_text("x")
    assets = tmp_path / "output" / "t" / "assets"
    os.makedirs(assets)
    os.symlink(world, assets / ("world.tmp-%d.%s" % (dead, host)))  # a killed publish
    assert world_build.ensure_world(cfg, str(root)) == world
    out = capsys.readouterr().out
    for name in stale:
        assert not (root / name).exists()
        assert "cache: removed %s, left by a build that was killed (process %d is gone)" % (root / name, dead) in out
    assert sorted(os.listdir(assets)) == ["world"]
    for name in kept:
        assert (root / name / "sub" / "part.pth").read_text() == "x"
    assert out.count("cache: removed") == 3


# ----------------------------------------------------------------------------- job folders

@pytest.fixture
def cheap(tmp_path, monkeypatch):
    """world.main with the expensive parts replaced: a real tiny world, fake frozen parts, each
    pipeline writes its log and metrics.json as the real one does; ``crash`` makes it fail."""
    monkeypatch.chdir(tmp_path)
    parts = {}
    for part in ("clip", "mae", "lm"):
        parts[part] = str(tmp_path / "cache" / part)
        os.makedirs(parts[part])
        with open(os.path.join(parts[part], "DONE.json"), "w") as f:
            json.dump({"result": {"quality": part}}, f)
    monkeypatch.setattr(world_main.Job, "prepare", lambda self, path: self.assets.update(
        parts, world=os.path.abspath(world_build.ensure_world(self.cfg, str(tmp_path / "cache")))))
    state = {"crash": False, "pipelines": 0}

    def pipeline(self, variant, seed):
        state["pipelines"] += 1
        if state["crash"]:
            raise RuntimeError("stage1 failed")
        os.makedirs(self.run_dir(variant, seed), exist_ok=True)
        with open(os.path.join(self.run_dir(variant, seed), "stage1.log"), "w") as f:
            f.write("run %s\n" % self.out)
        metrics = {"oc_acc": 20.0 + state["pipelines"], "seed": seed}
        with open(os.path.join(self.run_dir(variant, seed), "metrics.json"), "w") as f:
            json.dump(metrics, f)
        return metrics

    monkeypatch.setattr(world_main.Job, "pipeline", pipeline)
    # runs a second apart (job folders sort by their start time; these runs take less)
    ids = iter("2026010100%04d_%d_0000abcd" % (n, os.getpid()) for n in range(100))
    monkeypatch.setattr(world_main, "new_job_id", lambda: next(ids))
    monkeypatch.setattr(world_main, "compare_runs", lambda job, tasks: None)
    monkeypatch.setattr(probes, "probe_frozen_parts", lambda *a: {})
    monkeypatch.setattr(probes, "format_probes", lambda p: "")
    config = _config_file(tmp_path)
    return lambda *args: world_main.main(["--config", config, "--projects", PROJECTS, *args]), state


def _files(folder):
    """Every file under ``folder``: its bytes, by path."""
    return {os.path.join(d, n): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(folder) for n in names}


def test_a_second_run_keeps_the_first_runs_report_metrics_and_logs(cheap):
    run, _ = cheap
    run()
    (first,) = world_main.job_folders(os.path.join("output", "t"))
    before = _files(first)
    assert {os.path.relpath(p, first) for p in before} >= {
        "report.json", "report.txt", os.path.join("runs", "blip2-s1", "stage1.log"),
        os.path.join("runs", "blip2-s1", "metrics.json")}
    assert os.path.realpath(os.path.join("output", "t", "latest")) == os.path.realpath(first)
    run()
    old, second = world_main.job_folders(os.path.join("output", "t"))
    assert old == first and _files(first) == before  # nothing of the first run replaced
    assert os.path.realpath(os.path.join("output", "t", "latest")) == os.path.realpath(second)
    reports = [json.load(open(os.path.join(j, "report.json")))["results"]["blip2"][0]["oc_acc"]
               for j in (first, second)]
    assert reports == [21.0, 22.0]


def test_resume_continues_the_newest_unfinished_run_in_its_own_folder(cheap, capsys):
    run, state = cheap
    run()
    (finished,) = world_main.job_folders(os.path.join("output", "t"))
    done = _files(finished)
    state["crash"] = True
    with pytest.raises(RuntimeError):
        run()
    crashed = world_main.job_folders(os.path.join("output", "t"))[-1]
    assert not os.path.exists(os.path.join(crashed, "report.json"))
    assert os.path.realpath(os.path.join("output", "t", "latest")) == os.path.realpath(finished)
    state["crash"] = False
    run("--resume")
    assert "run: %s (resumed)" % crashed in capsys.readouterr().out
    assert world_main.job_folders(os.path.join("output", "t")) == [finished, crashed]
    assert os.path.isfile(os.path.join(crashed, "report.json")) and _files(finished) == done
    assert os.path.realpath(os.path.join("output", "t", "latest")) == os.path.realpath(crashed)


def _finished_run_and_a_results_folder(cheap):
    """(run, state, job folder) after one finished run, beside a results/ holding a report."""
    run, state = cheap
    run()
    (job,) = world_main.job_folders(os.path.join("output", "t"))
    os.makedirs("results")
    with open(os.path.join("results", "report.json"), "w") as f:
        f.write("mine")
    return run, state, job


@pytest.mark.parametrize("args, says", [
    (["--resume"], "--resume: every run in output/t has finished (the newest: {job}); start a new "
                   "run without --resume, or give the run and --overwrite to redo it"),
    (["--resume", "{job}"], "--resume {job}: that run has finished (its report.json exists); start a "
                            "new run without --resume, or add --overwrite to redo its report"),
    (["--resume", "output/t/assets"], "--resume output/t/assets: not a job folder of world.main "
                                      "(output/t/<start time>_<pid>_<random>; the newest there: {name})"),
    (["--report-only", "elsewhere"], "--report-only elsewhere: not a job folder of world.main"),
    (["--results-dir", "results"], "--results-dir results holds a report.json already: choose another "
                                   "folder, or add --overwrite to replace it"),
])
def test_a_finished_result_is_not_replaced_without_overwrite(cheap, capsys, args, says):
    run, state, job = _finished_run_and_a_results_folder(cheap)
    kept = _files(".")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(*[a.format(job=job) for a in args])
    assert exit_info.value.code == 2
    assert "error: " + says.format(job=job, name=os.path.basename(job)) in capsys.readouterr().err
    assert _files(".") == kept and state["pipelines"] == 1  # nothing ran, nothing replaced


def test_overwrite_redoes_a_finished_runs_report_and_replaces_a_results_folders(cheap):
    run, state, job = _finished_run_and_a_results_folder(cheap)
    os.remove(os.path.join(job, "runs", "blip2-s1", "metrics.json"))  # one pipeline to redo
    run("--resume", job, "--overwrite", "--results-dir", "results")
    assert world_main.job_folders(os.path.join("output", "t")) == [job]
    for report in (os.path.join(job, "report.json"), os.path.join("results", "report.json")):
        assert json.load(open(report))["results"]["blip2"][0]["oc_acc"] == 22.0


def test_a_run_that_another_world_main_runs_is_not_resumed(cheap, capsys):
    run, state = cheap
    state["crash"] = True
    with pytest.raises(RuntimeError):
        run()
    (job,) = world_main.job_folders(os.path.join("output", "t"))
    state["crash"] = False
    holder = world_main.Job(dict(TINY), PROJECTS, resume=True, out=job)
    holder.claim()  # as the world.main that runs it does
    try:
        with pytest.raises(SystemExit) as exit_info:
            run("--resume")
        assert exit_info.value.code == 2
        assert ("error: %s is being run by another world.main; let it finish or stop it, then "
                "resume it" % job) in capsys.readouterr().err
        assert not os.path.exists(os.path.join(job, "report.json")) and state["pipelines"] == 1
    finally:
        holder.lock.close()
    run("--resume")  # once it has ended
    assert os.path.isfile(os.path.join(job, "report.json"))
