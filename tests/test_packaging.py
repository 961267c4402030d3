"""Packaging and the start-up hook, checked in fresh subprocesses of the installed environment.

These tests need the repo installed (README "Set-up": ``pip install -e '.[test]'``); the
start-up hook only exists in an installed environment. Each subprocess runs in an empty
temporary directory so that the repo's own folder is not on ``sys.path``.
"""
import json
import os
import re
import site
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PTH = "lavis_xformer_hook.pth"
HEAVY = ("torch", "numpy", "lavis", "lavis_xformer", "transformers", "omegaconf")


def _env(**extra):
    env = dict(os.environ)
    env.pop("LAVIS_XFORMER_NO_HOOK", None)
    env.update(extra)
    return env


def py(args, cwd, timeout=600, **env):
    """Run ``python ARGS`` of this environment; return the CompletedProcess (text)."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(**env), text=True,
                          capture_output=True, timeout=timeout)


def ok(proc):
    assert proc.returncode == 0, "rc=%s\nstdout:\n%s\nstderr:\n%s" % (
        proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:])
    return proc


def installed_pth():
    dirs = list(site.getsitepackages()) + [sysconfig.get_paths()["purelib"]]
    for d in dirs:
        if (Path(d) / PTH).is_file():
            return Path(d) / PTH
    return None


@pytest.fixture(scope="module", autouse=True)
def require_install():
    if installed_pth() is None:
        pytest.fail("%s is not in this environment's site-packages: install the repo first "
                    "(README, Set-up: pip install -e '.[test]')" % PTH)


def test_pth_is_installed_and_matches_the_repo():
    assert installed_pth().read_text() == (REPO / PTH).read_text()


def test_startup_installs_the_finder_and_imports_nothing_heavy(tmp_path):
    code = ("import json, sys; print(json.dumps({'finder': [type(f).__name__ for f in "
            "sys.meta_path if getattr(f, '_lavis_xformer_hook', False)], 'heavy': [m for m in "
            "%r if m in sys.modules]}))" % (HEAVY,))
    out = json.loads(ok(py(["-c", code], tmp_path)).stdout)
    assert out == {"finder": ["LavisXFormerFinder"], "heavy": []}


def test_startup_cost(tmp_path):
    """The hook imports only its own small module at start-up; its cost is reported, not asserted."""
    def modules(**env):
        err = ok(py(["-X", "importtime", "-c", "pass"], tmp_path, **env)).stderr
        return {line.split("|")[-1].strip() for line in err.splitlines()
                if line.startswith("import time:") and "imported package" not in line}

    hooked, switched_off = modules(), modules(LAVIS_XFORMER_NO_HOOK="1")
    assert "lavis_xformer_startup" in switched_off  # the .pth line imports it; run() checks the switch
    assert hooked - switched_off == set()

    # In-process time of the .pth line itself (locate _hook.py, run it, install the finder).
    code = ("import os, sys, time; del os.environ['LAVIS_XFORMER_NO_HOOK']; "
            "line = open(%r).read(); t = time.perf_counter(); exec(line); "
            "print((time.perf_counter() - t) * 1000)" % str(installed_pth()))
    times = sorted(float(ok(py(["-c", code], tmp_path, LAVIS_XFORMER_NO_HOOK="1")).stdout)
                   for _ in range(5))
    print("\nstart-up hook (.pth line): median %.2f ms, min %.2f ms" % (times[2], times[0]))


@pytest.mark.slow
def test_import_lavis_alone_registers_the_plugin(tmp_path):
    """A LAVIS user's process: only `lavis` is imported, the plugin comes with it."""
    code = """
import json, sys
import lavis
from lavis.common.registry import registry
from lavis.models import load_model, model_zoo
assert "lavis_xformer" in sys.modules
assert registry.get_model_class("xformer") is not None
assert {"tiny", "pretrain"} <= set(model_zoo.model_zoo["xformer"]), model_zoo.model_zoo
model = load_model("xformer", "tiny")
import lavis.train, lavis.evaluate, lavis_xformer.train, lavis_xformer.evaluate
assert lavis.train is lavis_xformer.train and lavis.evaluate is lavis_xformer.evaluate
assert lavis.train.__spec__.name == "lavis_xformer.train"
print("OK", type(model).__name__)
"""
    assert "OK XFormer" in ok(py(["-c", code], tmp_path)).stdout


@pytest.mark.slow
def test_import_plugin_first_then_lavis(tmp_path):
    """lavis_xformer imports lavis itself: no recursion, registrations once, zoo refreshed."""
    code = """
import lavis_xformer
import lavis
from lavis.common.registry import registry
from lavis.models import model_zoo
assert registry.get_model_class("xformer") is not None
assert "xformer" in model_zoo.model_zoo
assert lavis_xformer._hook.LavisXFormerFinder
print("OK")
"""
    assert ok(py(["-c", code], tmp_path)).stdout.strip().endswith("OK")


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["train", "evaluate"])
def test_python_m_lavis_entry_point(tmp_path, entry):
    out = ok(py(["-m", "lavis." + entry, "--help"], tmp_path)).stdout
    assert "--cfg-path" in out


@pytest.mark.slow
def test_torchrun_m_lavis_train(tmp_path):
    proc = py(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               "-m", "lavis.train", "--help"], tmp_path)
    assert "--cfg-path" in ok(proc).stdout + proc.stderr


@pytest.mark.slow
def test_env_switch_disables_the_hook(tmp_path):
    code = ("import sys; print(any(getattr(f, '_lavis_xformer_hook', False) "
            "for f in sys.meta_path), 'lavis_xformer._hook' in sys.modules)")
    assert ok(py(["-c", code], tmp_path, LAVIS_XFORMER_NO_HOOK="1")).stdout.split() == [
        "False", "False"]
    proc = py(["-m", "lavis.train", "--help"], tmp_path, LAVIS_XFORMER_NO_HOOK="1")
    assert proc.returncode != 0
    import importlib.metadata

    tokenizers = importlib.metadata.version("tokenizers")
    if tuple(int(p) for p in tokenizers.split(".")[:2]) >= (0, 14):
        # Python >= 3.12: stock LAVIS's `import lavis` already stops at transformers 4.26's
        # own tokenizers check, which only the plugin relaxes (docs/install.md).
        assert "tokenizers>=0.11.1,!=0.11.3,<0.14 is required" in proc.stderr
    else:
        assert "No module named lavis.train" in proc.stderr


def test_wheel_contents(tmp_path):
    """A regular (non-editable) wheel ships the .pth at its root, the yaml configs, and no
    top-level `tests`/`projects` (LAVIS's wheel owns those names)."""
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md", PTH, "lavis_xformer_startup.py"):
        (src / name).write_bytes((REPO / name).read_bytes())
    for path in (REPO / "lavis_xformer").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            dest = src / path.relative_to(REPO)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(path.read_bytes())
    ok(subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                       "--no-index", "-w", str(tmp_path / "dist"), str(src)],
                      capture_output=True, text=True, timeout=600))
    (wheel,) = (tmp_path / "dist").glob("lavis_xformer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert PTH in names
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"lavis_xformer", PTH, "lavis_xformer_startup.py"}
    configs = {str(p.relative_to(REPO)) for p in (REPO / "lavis_xformer" / "configs").rglob("*.yaml")}
    assert configs and configs <= set(names)
    meta = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    # LAVIS's stale pins stay out of the plugin's metadata (docs/install.md): LAVIS itself
    # comes from requirements-lavis.txt with --no-deps, transformers too on Python >= 3.12.
    assert "Requires-Dist: salesforce-lavis" not in meta
    assert re.search(r'Requires-Dist: transformers<4\.27,>=4\.26; python_version < "3\.12"', meta)
    assert re.search(r'Requires-Dist: tokenizers>=0\.14; python_version >= "3\.12"', meta)
    assert "Requires-Dist: numpy>=1.24\n" in meta  # numpy 2 allowed
    lavis_txt = (REPO / "requirements-lavis.txt").read_text().split()
    assert "salesforce-lavis==1.0.2" in lavis_txt and "transformers==4.26.1" in lavis_txt
    assert re.search(r"Requires-Dist: pytest.*extra == .test.", meta)


def test_readme_commands_and_ci_agree():
    """README's two set-up lines exist, and .ci/run runs the README's test line."""
    readme = (REPO / "README.md").read_text()
    start = "${PYTHON:-python3} -m venv"  # PYTHON=python3.12 before the line picks another
    main = [l for l in readme.splitlines() if l.startswith(start) and "world.main" in l]
    test = [l for l in readme.splitlines() if l.startswith(start) and "pytest" in l]
    assert len(main) == 1 and len(test) == 1
    for line in main + test:
        assert ("--no-deps --no-warn-conflicts -r requirements-lavis.txt "
                "-r requirements-assets.txt") in line
    assert main[0].endswith("-m lavis_xformer.world.main --config mini")  # the miniature world
    assert (REPO / "lavis_xformer" / "configs" / "world" / "mini.yaml").is_file()
    assert "'.[test]'" in test[0] and test[0].endswith("-m pytest -q tests")
    ci = (REPO / ".ci" / "run").read_text()
    assert "README.md" in ci and "PIP_CONSTRAINT=" in ci and "constraints/lavis-1.0.2-pins.txt" in ci
    assert (REPO / "constraints" / "lavis-1.0.2-pins.txt").is_file()


def test_ci_runs_both_stacks_with_the_readme_command(tmp_path):
    """.ci/run with a stand-in README command: both stacks, each with its PYTHON and
    constraints, and one line saying a stack could not be set up."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    (repo / ".ci" / "run").write_text((REPO / ".ci" / "run").read_text())
    (repo / "README.md").write_text(
        "${PYTHON:-python3} -m venv --clear .venv && echo \"ran with $PYTHON "
        "${PIP_CONSTRAINT:-none}\" >> log.txt && false -m pytest -q tests\n")
    env = _env(CI_SPLIT="none")
    for name in ("CI_STACKS", "PIP_CONSTRAINT", "PYTHON"):  # set when this runs inside .ci/run
        env.pop(name, None)
    proc = subprocess.run(["bash", ".ci/run"], cwd=repo, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 1
    ran = (repo / "log.txt").read_text().splitlines()
    out = proc.stdout + proc.stderr
    assert ".ci/run: failed: pinned modern" in out
    assert "3.11" in ran[0] and ran[0].endswith("constraints/lavis-1.0.2-pins.txt"), out
    assert ".ci/run: pinned stack could not be set up" in out
    if "no Python 3.12 or 3.13" in out:  # a machine without them: said in one line
        assert len(ran) == 1
        return
    assert len(ran) == 2 and re.search(r"3\.1[23]", ran[1]) and ran[1].endswith(" none"), out
    assert ".ci/run: modern stack could not be set up" in out


def test_test_shards_split_the_files(tmp_path):
    """LAVIS_XFORMER_TEST_SHARD=k/n (tests/conftest.py): whole files, disjoint, all covered."""
    files = ["tests/test_opencv_compat.py", "tests/test_tokenizers_compat.py",
             "tests/test_packaging.py"]

    def collected(shard):
        env = {"LAVIS_XFORMER_TEST_SHARD": shard} if shard else {}
        out = ok(py(["-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                    REPO, **env)).stdout
        return {line.split("::")[0] for line in out.splitlines() if "::" in line}

    whole, first, second = collected(""), collected("1/2"), collected("2/2")
    assert whole == set(files)
    assert first and second and not first & second and first | second == whole
    bad = py(["-m", "pytest", "--collect-only", "-q", *files], REPO, LAVIS_XFORMER_TEST_SHARD="3/2")
    assert bad.returncode != 0 and "LAVIS_XFORMER_TEST_SHARD='3/2'" in bad.stdout + bad.stderr
