"""Helpers shared by the test files (pytest puts tests/ on sys.path; not a package, since
LAVIS's wheel already installs a top-level package named ``tests``). One helper per job that
several files do; the fixtures built on them are in conftest.py."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_STAGE1 = REPO / "projects" / "xformer" / "tiny" / "stage1.yaml"


def subprocess_env(threads=None, **extra):
    """The environment for a child Python (``python -m lavis.train``, torchrun, ...): this
    checkout first on PYTHONPATH, so the child runs the code under test; ``threads`` sets
    OMP_NUM_THREADS (1 where several processes share the two cores)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update(extra)
    return env


def lavis_command(cfg_path, *options, script="lavis.train", processes=1):
    """The command line of ``python -m lavis.train`` (or ``script="lavis.evaluate"``) on the
    run file ``cfg_path`` with ``--options``; under torchrun with ``processes`` processes
    (gloo on the CPU) when more than one."""
    launcher = [sys.executable, "-m", script]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=%d" % processes, "-m", script]
    return launcher + ["--cfg-path", str(cfg_path), "--options", *options]


def run_command(cmd, cwd, expect=0, threads=1, timeout=600, **env):
    """Run ``cmd`` in ``cwd`` with subprocess_env(threads, **env) and return the finished
    process, its stdout and stderr together as ``.output``; asserts the exit status is
    ``expect`` (None: any), showing the output's end when not."""
    result = subprocess.run(cmd, cwd=cwd, env=subprocess_env(threads=threads, **env),
                            capture_output=True, text=True, timeout=timeout)
    result.output = result.stdout + result.stderr
    if expect is not None:
        assert result.returncode == expect, result.output[-6000:]
    return result


def run_until(cmd, cwd, when, act, threads=1, timeout=300):
    """Start ``cmd`` in ``cwd`` (stdout and stderr together), call ``act(process)`` at the
    first output line for which ``when(line)`` holds, read on to the end. Returns (exit
    status, output); the process is killed if it outlives ``timeout``."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=subprocess_env(threads=threads),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if when(line):
                act(proc)
                break
        lines.extend(proc.stdout)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(lines)


def tiny_stage1_options(output_dir, images=8, batch_size=2, max_epoch=1):
    """``--options`` of a short tiny stage-1 run (TINY_STAGE1): the first ``images`` easy-VQA
    train images (``images / batch_size`` iterations per epoch in one process), one log line
    per iteration; ``max_epoch=None`` leaves the run file's."""
    options = ["run.output_dir=%s" % output_dir,
               "datasets.easyvqa_caption.build_info.max_images=%d" % images,
               "datasets.easyvqa_caption.build_info.splits=[train]",
               "run.batch_size_train=%d" % batch_size, "run.log_freq=1"]
    return options + ([] if max_epoch is None else ["run.max_epoch=%d" % max_epoch])


def easyvqa_split(root, split, images, truncated=(), missing=()):
    """``<root>/<split>/`` with the first ``images`` images of the packaged easy-VQA split and
    their questions; the images ``truncated`` are cut half-way (a real PNG header, then
    nothing), those ``missing`` left out. Returns the questions."""
    from lavis_xformer.datasets import easyvqa

    source = os.path.join(easyvqa.package_data_root(), split)
    folder = Path(root) / split
    (folder / "images").mkdir(parents=True)
    questions = [q for q in easyvqa.read_questions(source) if int(q[2]) < images]
    (folder / "questions.json").write_text(json.dumps(questions))
    for i in range(images):
        if i not in missing:
            shutil.copy(easyvqa.image_path(source, i), folder / "images" / ("%d.png" % i))
    for i in truncated:
        data = (folder / "images" / ("%d.png" % i)).read_bytes()
        (folder / "images" / ("%d.png" % i)).write_bytes(data[: len(data) // 2])
    return questions


def model_config(name="xformer", model_type="tiny", **overrides):
    """The model section of a registered model type's yaml, with dotted-key ``overrides``
    (e.g. ``**{"loss_weights.rec": 0}``): ``lavis_xformer.factory.model_config``."""
    from lavis_xformer import factory

    return factory.model_config(name, model_type, overrides)


def build_model(name="xformer", model_type="tiny", seed=0, **overrides):
    """A registered model built from its type's yaml (plus ``overrides``) after seeding
    torch's global generator with ``seed``, so trainable weights are reproducible."""
    import torch

    from lavis_xformer import factory

    cfg = model_config(name, model_type, **overrides)
    torch.manual_seed(seed)
    return factory.build_model(cfg)


def launch_args(cfg_path, *options):
    """The parsed command line of ``python -m lavis.train --cfg-path cfg_path --options ...``
    (for ``launch.load_config``, which checks a run before anything is built)."""
    from lavis_xformer.training import launch

    return launch.parse_args(["--cfg-path", str(cfg_path)] + (["--options", *options] if options else []))


def tiny_eval_project(src, dst, options, pretrained=None, model_defaults=()):
    """A copy at ``dst`` of the evaluation project file ``src`` with the tiny model type (LAVIS
    reads the model type's defaults from the file's model.model_type, so --options cannot
    switch it), ``model.pretrained`` (None: random tiny weights, unless ``options`` name a
    checkpoint), the dotted-key ``options`` (the fixture's data paths), 64-pixel images and a
    small CPU run; the ``model_defaults`` keys are dropped so that the tiny type's apply."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(src)
    cfg.model.model_type = "tiny"
    cfg.model.pretrained = None if pretrained is None else str(pretrained)
    for key in model_defaults:
        cfg.model.pop(key, None)
    for key, value in options.items():
        OmegaConf.update(cfg, key, value, merge=False)
    for name in cfg.datasets:
        cfg.datasets[name].vis_processor.eval.image_size = 64
    cfg.run.update(device="cpu", num_workers=0, batch_size_eval=2, log_freq=1)
    OmegaConf.save(cfg, dst)
    return dst


def meta_model(name, model_type, **overrides):
    """A registered model built on the meta device with ``random_init`` (no weight file read,
    no memory taken): a full-size model type for counting its parameters."""
    from lavis_xformer import factory

    return factory.create_model(name, model_type, dict(random_init=True, **overrides), device="meta")
