"""The main job: the miniature world end to end, in one command.

    python -m lavis_xformer.world.main --config mini

1. builds the world (or reuses it), 2. pretrains the frozen CLIP side, MAE and OPT (or reuses
them), 3. for every variant and seed of the config's ``job`` section runs stage 1 and stage 2
through ``python -m lavis.train`` and the three held-out evaluations (OC, MCI, colour/shape)
through ``python -m lavis.evaluate``, with the project files under projects/xformer/mini/,
4. prints the models side by side with the majority baseline (mean ± std over seeds), per count
bin and per hard case, with linear probes of the two frozen image encoders (probes.py), and
writes ``report.json`` (and, with ``--results-dir``, a copy with the printed tables).

Every run writes into a job folder of its own, ``output/<name>/<start time>_<pid>_<random>/``
(the training runs' scheme, training.launch.new_job_id), so a second run never replaces the
first one's files; ``output/<name>/latest`` points at the newest finished run (one with its
``report.json``, written last). ``--resume`` continues the newest unfinished run (or the one
named) in its own folder. The links to the cached world and frozen parts stay shared, in
``output/<name>/assets/``.

Run it from the repository's root (the project files and output/ are relative to it).
``--device cuda`` trains the frozen parts and runs every stage on a GPU (the CPU is the
default and what the docs' numbers come from); ``--parallel N`` runs N pipelines at once.
Progress: each stage's training/evaluation progress lines are shown; full logs go to
``output/<name>/<job>/runs/<variant>-s<seed>/<stage>.log``.

Its child processes end with it: SIGTERM or SIGINT stops them (SIGTERM; a second signal:
SIGKILL) and exits with 128 + the signal's number, naming the command that resumes; a
SIGKILL, which no handler sees, reaches them through the kernel (Linux's parent-death signal).
"""
import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from lavis_xformer.training.checkpoints import JOB_FOLDER, atomic_save
from lavis_xformer.training.launch import new_job_id
from lavis_xformer.training.runner import LATEST, point_latest
from lavis_xformer.world import build as world_build
from lavis_xformer.world import cache, config as world_config, pretrain, probes, report

EVALS = (("oc", "oc.yaml"), ("mci", "mci.yaml"), ("attr", "attr.yaml"))
SHOWN = ("Train: data epoch", "Evaluation", "Averaged stats", "[mini_world", "accuracy")
REPORT = "report.json"  # written last: a job folder holding it is a finished run
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with(parent):
    """The ``preexec_fn`` of every child: the kernel sends it SIGKILL when the thread that
    started it ends, which includes world.main's death by SIGKILL, which no handler can
    forward. (A thread's end counts, not only the process's: each child is started and waited
    for by one thread.)"""
    def preexec():
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before the line above took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec if _PRCTL is not None else None


class Stopped(BaseException):
    """world.main got SIGTERM or SIGINT (``signum``). A BaseException, as KeyboardInterrupt is,
    so that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum=None):
        super().__init__(signum)
        self.signum = signum


class Children:
    """The processes world.main starts (the frozen parts' pretraining, LAVIS's stages). They end
    with it: through the kernel when it dies (``_die_with``), and by ``stop`` when it is asked to
    stop, after which no new one starts."""

    def __init__(self):
        # reentrant: stop() runs in a signal handler, maybe on a thread inside start()
        self.live, self.stopping, self.lock = set(), False, threading.RLock()

    def start(self, cmd, **kwargs):
        """subprocess.Popen(cmd, **kwargs); wait for it with ``wait``, on the same thread."""
        with self.lock:
            if self.stopping:
                raise Stopped()
            proc = subprocess.Popen(cmd, preexec_fn=_die_with(os.getpid()), **kwargs)
            self.live.add(proc)
        return proc

    def wait(self, proc):
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.live.discard(proc)

    def run(self, cmd, **kwargs):
        """subprocess.run(cmd, check=True, **kwargs), for a child of world.main."""
        proc = self.start(cmd, **kwargs)
        if self.wait(proc):
            raise subprocess.CalledProcessError(proc.returncode, cmd)

    def stop(self, sig=signal.SIGTERM):
        with self.lock:
            self.stopping = True
            for proc in self.live:
                proc.send_signal(sig)  # only to a child not yet waited for


@contextlib.contextmanager
def stop_on_signals(children):
    """While inside (on the main thread): SIGTERM or SIGINT sends SIGTERM to the children (a
    LAVIS stage then stops as preemption.py says) and raises Stopped; a second signal sends
    them SIGKILL."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        first = not children.stopping
        children.stop(signal.SIGTERM if first else signal.SIGKILL)
        if first:
            raise Stopped(signum)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _opts(prefix, values):
    return ["%s%s=%s" % (prefix, k, "null" if v is None else v) for k, v in values.items()]


class Job:
    def __init__(self, cfg, projects, cache_dir=None, quiet=False, resume=False, device="cpu",
                 out=None):
        self.cfg, self.projects, self.quiet, self.resume = cfg, projects, quiet, resume
        self.device = device
        self.job = cfg.get("job", {})
        self.name = cfg["name"]
        self.root = os.path.join("output", self.name)  # assets/, the runs' job folders, latest
        self.out = out or os.path.join(self.root, new_job_id())  # this run's job folder
        self.assets = {}
        self.cache_dir = cache_dir
        self.children = Children()
        self.lock = None

    def claim(self):
        """Make the job folder (a resumed run's exists) and hold its lock while the run lasts:
        a second world.main resuming it meanwhile is refused (ValueError). The kernel releases
        the lock when this process ends, however it ends."""
        os.makedirs(self.out, exist_ok=bool(self.resume))
        self.lock = open(os.path.join(self.out, ".lock"), "a")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock.close()
            raise ValueError("%s is being run by another world.main; let it finish or stop it, "
                             "then resume it" % self.out) from None

    def env(self):
        return dict(os.environ, OMP_NUM_THREADS=str(self.job.get("threads", 1)),
                    HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")

    def prepare(self, config_path):
        """The world, then the three frozen parts: each part not cached yet is trained by its own
        command (``python -m lavis_xformer.world.pretrain <part>``), up to ``job.parallel``
        at once, with ``job.threads`` threads each."""
        self.assets["world"] = os.path.abspath(world_build.ensure_world(self.cfg, self.cache_dir))

        def train(part):
            cmd = [sys.executable, "-m", "lavis_xformer.world.pretrain", part, "--config", config_path,
                   "--device", self.device]
            if self.cache_dir:
                cmd += ["--cache-dir", self.cache_dir]
            self.children.run(cmd, env=self.env())

        with ThreadPoolExecutor(max_workers=int(self.job.get("parallel", 1))) as pool:
            list(pool.map(train, pretrain.PARTS))
        for part in pretrain.PARTS:  # cached now: only looked up and linked
            self.assets[part] = os.path.abspath(pretrain.ensure_part(self.cfg, part, self.cache_dir))

    def asset_options(self, stage):
        return ["model.%s=%s" % kv for kv in pretrain.asset_model_keys(self.assets, stage).items()]

    def run_dir(self, variant, seed):
        return os.path.join(self.out, "runs", "%s-s%d" % (variant, seed))

    def command(self, variant, seed, stage):
        spec = world_config.VARIANTS[variant]
        run = os.path.join(self.run_dir(variant, seed), stage)
        opts = self.asset_options(stage) + _opts("model.", spec.get("model", {}))
        opts += ["run.output_dir=%s" % run, "run.seed=%d" % seed, "run.device=%s" % self.device]
        if stage in ("stage1", "stage2"):
            settings = dict(self.job.get(stage, {}))
            data = "datasets.mini_world_caption.build_info."
            opts += ["%sroot=%s" % (data, self.assets["world"]),
                     "%smax_images=%s" % (data, settings.pop("max_images", None) or "null")]
            opts += _opts("run.", settings)
            if stage == "stage1":
                opts += _opts("model.", spec.get("stage1", {}))
            else:
                opts.append("model.pretrained=%s" % os.path.abspath(self.stage_output(variant, seed, "stage1")))
            return [sys.executable, "-m", "lavis.train", "--cfg-path",
                    os.path.join(self.projects, "%s.yaml" % stage), "--options"] + opts
        data = "datasets.gvtbench.build_info."
        opts += ["model.pretrained=%s" % os.path.abspath(self.stage_output(variant, seed, "stage2")),
                 "%sannotations.test.storage=%s" % (data, os.path.join(self.assets["world"], "test", "%s.json" % stage)),
                 "%simages.storage=%s/" % (data, self.assets["world"]),
                 "%smax_items=%s" % (data, self.job.get("eval", {}).get("max_items", None) or "null")]
        opts += _opts("run.", {k: v for k, v in self.job.get("eval", {}).items() if k != "max_items"})
        return [sys.executable, "-m", "lavis.evaluate", "--cfg-path",
                os.path.join(self.projects, "%s.yaml" % stage), "--options"] + opts

    def execute(self, variant, seed, stage):
        cmd = self.command(variant, seed, stage)
        log = os.path.join(self.run_dir(variant, seed), "%s.log" % stage)
        os.makedirs(os.path.dirname(log), exist_ok=True)
        env = self.env()
        tag = "%s-s%d %s" % (variant, seed, stage)
        start = time.time()
        with open(log, "w", buffering=1) as f:  # line-buffered: the log shows progress
            f.write(" ".join(cmd) + "\n")
            f.flush()
            proc = self.children.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       env=env)
            for line in proc.stdout:
                f.write(line)
                if not self.quiet and any(s in line for s in SHOWN):
                    print("[%s] %s" % (tag, line.rstrip()[:160]), flush=True)
            self.children.wait(proc)
        if proc.returncode:
            raise RuntimeError("%s failed (exit %d); log: %s" % (tag, proc.returncode, log))
        seconds = time.time() - start
        print("[%s] done in %.0f s" % (tag, seconds), flush=True)
        return seconds

    def stage_output(self, variant, seed, stage):
        """The file a finished stage leaves: its last checkpoint, or its predictions."""
        latest = os.path.join(self.run_dir(variant, seed), stage, "latest")
        if stage in ("stage1", "stage2"):
            epochs = int(self.job.get(stage, {}).get("max_epoch", 1))
            return os.path.join(latest, "checkpoint_%d.pth" % (epochs - 1))
        return os.path.join(latest, "result", "test_vqa_predictions.json")

    def pipeline(self, variant, seed):
        done = self.finished(variant, seed) if self.resume else None
        if done is not None:
            print("[%s-s%d] finished before: its metrics.json kept (--resume)" % (variant, seed), flush=True)
            return done
        times = OrderedDict()
        for stage in ("stage1", "stage2") + tuple(name for name, _ in EVALS):
            if self.resume and os.path.isfile(self.stage_output(variant, seed, stage)):
                print("[%s-s%d %s] finished before: kept (--resume)" % (variant, seed, stage), flush=True)
                times[stage] = None
                continue
            times[stage] = round(self.execute(variant, seed, stage), 1)
        metrics_itc = self.stage1_itc(variant, seed)
        predictions = {}
        for name, _ in EVALS:
            predictions[name] = report.load_json(self.stage_output(variant, seed, name))
        metrics = report.score_predictions(report.world_questions(self.assets["world"], "test"), predictions)
        metrics["stage1_itc"] = metrics_itc
        metrics["seconds"] = times
        metrics["seed"] = seed
        with open(os.path.join(self.run_dir(variant, seed), "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)
        return metrics

    def stage1_itc(self, variant, seed):
        """Held-out image -> caption retrieval of the stage-1 checkpoint (retrieval.py)."""
        from lavis_xformer.world.retrieval import stage1_retrieval

        spec = world_config.VARIANTS[variant]
        checkpoint = self.stage_output(variant, seed, "stage1")
        options = dict(spec.get("model", {}), **spec.get("stage1", {}))
        result = stage1_retrieval(checkpoint, self.assets, options, device=self.device)
        print("[%s-s%d stage1] held-out image->caption ITC retrieval: R@1 %.1f R@5 %.1f (chance %.1f / %.1f)" % (
            variant, seed, result["r1"], result["r5"], result["chance_r1"], result["chance_r5"]), flush=True)
        return result

    def finished(self, variant, seed):
        """The metrics of a pipeline that has finished (None otherwise)."""
        path = os.path.join(self.run_dir(variant, seed), "metrics.json")
        return report.load_json(path) if os.path.isfile(path) else None


def compare_runs(job, tasks):
    """The evaluation runs through ``lavis_xformer.tools.compare`` too: its markdown table and
    PNG chart (per benchmark: mini_world_oc, _mci, _attr) under <job folder>/compare/."""
    from lavis_xformer.tools import compare

    runs, labels = [], []
    for variant, seed in tasks:
        for name, _ in EVALS:
            runs.append(os.path.join(job.run_dir(variant, seed), name))
            labels.append("%s-s%d" % (variant, seed))
    out = os.path.join(job.out, "compare")
    shutil.rmtree(out, ignore_errors=True)  # an unfinished (or --overwrite) run's earlier chart
    try:
        with open(os.devnull, "w") as devnull:
            stdout, sys.stdout = sys.stdout, devnull
            try:
                compare.main(runs + ["--out", out, "--labels"] + labels + ["--paper", "none"])
            finally:
                sys.stdout = stdout
        print("comparison chart: %s" % os.path.join(out, "comparison.png"))
    except (Exception, SystemExit) as e:  # the report above stands on its own
        print("lavis_xformer.tools.compare could not chart the runs: %s" % e)


def job_folders(root):
    """The runs' job folders in output/<name>/, oldest first (their names start with the time)."""
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    return [os.path.join(root, n) for n in names if JOB_FOLDER.match(n) and os.path.isdir(os.path.join(root, n))]


def is_finished(folder):
    return os.path.isfile(os.path.join(folder, REPORT))


def pick_job(root, given, option, unfinished):
    """The job folder ``option`` (--resume, --report-only) works on: ``given`` (a job folder,
    its name in ``root``, or ``root``/latest), else (``given`` is True) the newest one, or with
    ``unfinished`` the newest without its report. A one-line ValueError where there is none."""
    runs = job_folders(root)
    listed = ", ".join(os.path.basename(r) for r in runs[-3:]) or "none"
    if given is not True:
        real = os.path.realpath(given if os.path.isdir(given) else os.path.join(root, given))
        if not (os.path.isdir(real) and JOB_FOLDER.match(os.path.basename(real))):
            raise ValueError("%s %s: not a job folder of world.main (%s/<start time>_<pid>_<random>; "
                             "the newest there: %s)" % (option, given, root, listed))
        if os.path.dirname(real) != os.path.realpath(root):
            raise ValueError("%s %s: a run of another config (this config's runs are in %s); pass "
                             "that run's --config" % (option, given, root))
        return os.path.join(root, os.path.basename(real))
    candidates = [r for r in runs if not (unfinished and is_finished(r))]
    if candidates:
        return candidates[-1]
    if not runs:
        raise ValueError("%s: no run in %s yet; start one without %s" % (option, root, option))
    raise ValueError("%s: every run in %s has finished (the newest: %s); start a new run without %s, "
                     "or give the run and --overwrite to redo it" % (option, root, runs[-1], option))


def resume_command(args, job):
    """The command line that resumes ``job`` with the settings of this one."""
    cmd = ["python", "-m", "lavis_xformer.world.main", "--config", args.config]
    for flag, value, default in (("--cache-dir", args.cache_dir, None), ("--device", args.device, "cpu"),
                                 ("--projects", args.projects, os.path.join("projects", "xformer", "mini")),
                                 ("--parallel", args.parallel, None), ("--results-dir", args.results_dir, None)):
        if value != default:
            cmd += [flag, str(value)]
    return shlex.join(cmd + ["--quiet"] * args.quiet + ["--resume", job.out])


def _write_json(obj, path):
    """Atomically (a killed write leaves the old file or none, never half of one)."""
    atomic_save(obj, path, save=lambda o, f: f.write(json.dumps(o, indent=1).encode()))


def make_parser():
    parser = argparse.ArgumentParser(description="The miniature world's main job: BLIP-2 against X-Former.")
    parser.add_argument("--config", default="mini", help="world config: a path or a packaged name (mini, ci, finding)")
    parser.add_argument("--cache-dir", default=None, help="cache root (default: $%s or ~/.cache/lavis_xformer/mini)" % cache.ENV_CACHE)
    parser.add_argument("--projects", default=os.path.join("projects", "xformer", "mini"),
                        help="folder of the project files (default: projects/xformer/mini, from the repository root)")
    parser.add_argument("--results-dir", default=None,
                        help="also copy report.json and the tables here (a folder without a report.json, "
                             "unless --overwrite)")
    parser.add_argument("--quiet", action="store_true", help="show only each stage's end")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="JOB",
                        help="continue an unfinished run in its job folder: JOB (output/<name>/<job>, or "
                             "its name), by default the newest unfinished one; every stage that "
                             "finished before (its checkpoint or predictions exist) is kept, the rest "
                             "runs, e.g. after a crash or a stop")
    parser.add_argument("--device", default="cpu",
                        help="where everything trains and evaluates: cpu (default; the numbers in the "
                             "docs) or cuda (bench/device/mini_finding.sh)")
    parser.add_argument("--parallel", type=int, default=None,
                        help="pipelines (and frozen parts) at once; overrides the config's job.parallel "
                             "(e.g. 9 on one GPU for the finding's 3 variants x 3 seeds)")
    parser.add_argument("--report-only", nargs="?", const=True, default=None, metavar="JOB",
                        help="train nothing: print the report of the pipelines of run JOB (default: the "
                             "newest run, finished or still running) that have finished (their "
                             "metrics.json); writes nothing into the run's folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow replacing a finished result: --resume JOB of a finished run redoes "
                             "its report; --results-dir may hold a report.json")
    return parser


def check_args(args):
    """Refuse (ValueError, one line) a command line that cannot run, before any work."""
    if not os.path.isfile(os.path.join(args.projects, "stage1.yaml")):
        raise ValueError("no project files in %s: run from the repository's root or pass --projects" % args.projects)
    pretrain.check_device(args.device)
    if args.parallel is not None and args.parallel < 1:
        raise ValueError("--parallel %d: give 1 or more" % args.parallel)
    if args.resume and args.report_only:
        raise ValueError("--resume and --report-only: give one of them")
    if args.results_dir and not args.overwrite and os.path.exists(os.path.join(args.results_dir, REPORT)):
        raise ValueError("--results-dir %s holds a report.json already: choose another folder, or add "
                         "--overwrite to replace it" % args.results_dir)


def load_config(args):
    """(world config, variants to run) of ``args.config``, with ``--parallel`` applied."""
    try:
        cfg = world_config.load(args.config)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    if args.parallel is not None:  # how the job runs, not what it runs: the report keeps it
        cfg.setdefault("job", {})["parallel"] = args.parallel
    variants = list(cfg.get("job", {}).get("variants", ["blip2", "xformer"]))
    unknown = [v for v in variants if v not in world_config.VARIANTS]
    if unknown:
        raise ValueError("job.variants: %s not known; known: %s" % (unknown, ", ".join(world_config.VARIANTS)))
    return cfg, variants


def open_job(args, cfg):
    """The run's Job: a new job folder, or the one ``--resume`` / ``--report-only`` picks; a
    run that trains claims its folder (ValueError when it cannot)."""
    folder, root = None, os.path.join("output", cfg["name"])
    if args.resume or args.report_only:
        option = "--resume" if args.resume else "--report-only"
        folder = pick_job(root, args.resume or args.report_only, option, unfinished=bool(args.resume))
        if args.resume and is_finished(folder) and not args.overwrite:
            raise ValueError("--resume %s: that run has finished (its %s exists); start a new run "
                             "without --resume, or add --overwrite to redo its report" % (folder, REPORT))
    job = Job(cfg, args.projects, args.cache_dir, args.quiet, bool(args.resume), args.device, folder)
    if not args.report_only:
        job.claim()
    return job


def main(argv=None):
    """The main job: parse and check the command line, load the world config, claim the run's
    job folder, then run it (``run``) with the children stopped on SIGTERM/SIGINT."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
        start = time.time()
        cfg, variants = load_config(args)
        job = open_job(args, cfg)
    except ValueError as e:
        parser.error(str(e))
    print("run: %s%s" % (job.out, " (resumed)" if args.resume else " (report only)" if args.report_only else ""),
          flush=True)
    try:
        with stop_on_signals(job.children):
            return run(job, args, variants, start)
    except Stopped as e:
        signum = e.signum or signal.SIGTERM
        print("world.main: stopped by %s; its child processes were stopped too. Resume with: %s" % (
            signal.Signals(signum).name, resume_command(args, job)), file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)


def run(job, args, variants, start):
    """The job itself, once its folder is claimed: the world and frozen parts, the pipelines,
    the report, then the files and links (``write_report``)."""
    cfg = job.cfg
    if args.report_only:
        job.assets["world"] = os.path.abspath(world_build.ensure_world(cfg, args.cache_dir, link=False))
    else:
        job.prepare(args.config)
    prepared = time.time() - start
    seeds = [int(s) for s in cfg.get("job", {}).get("seeds", [42])]
    tasks, results = run_pipelines(job, args, [(v, s) for s in seeds for v in variants], variants)
    out, text = make_report(job, results, seeds)
    total = time.time() - start
    print("total %.0f s (world + frozen parts %.0f s)" % (total, prepared))
    out.update(device=args.device, seconds={"total": round(total, 1),
                                            "world_and_frozen_parts": round(prepared, 1)})
    write_report(job, args, out, text, tasks)
    return out


def run_pipelines(job, args, tasks, variants):
    """(the (variant, seed) pipelines reported, their metrics by variant): all of them run
    (``job.parallel`` at once), or with ``--report-only`` those that have finished."""
    if args.report_only:  # what has finished so far (e.g. while a long job still runs)
        tasks = [vs for vs in tasks if job.finished(*vs) is not None]
        outcomes = [(vs, job.finished(*vs)) for vs in tasks]
        job.assets.update({p: os.path.realpath(os.path.join(world_config.assets_dir(job.cfg), p))
                           for p in pretrain.PARTS})  # the parts the runs were linked to
        for (variant, seed), metrics in outcomes:  # runs of a driver that did not measure it
            if "stage1_itc" not in metrics:
                metrics["stage1_itc"] = job.stage1_itc(variant, seed)
    else:
        with ThreadPoolExecutor(max_workers=int(job.job.get("parallel", 1))) as pool:
            outcomes = list(pool.map(lambda vs: (vs, job.pipeline(*vs)), tasks))
    results = OrderedDict((v, []) for v in variants)
    for (variant, seed), metrics in outcomes:
        results[variant].append(metrics)
    return tasks, OrderedDict((v, r) for v, r in results.items() if r)


def make_report(job, results, seeds):
    """(report.json's content, the printed text): the results beside the majority baseline on
    the held-out questions, per count bin and hard case, and the frozen parts' probes."""
    cfg, world = job.cfg, job.assets["world"]
    max_items = job.job.get("eval", {}).get("max_items", None)
    test = {k: v[:max_items] if max_items else v for k, v in report.world_questions(world, "test").items()}
    baseline = report.majority_baseline(report.world_questions(world, "train"), test)
    itc = [r["stage1_itc"] for runs in results.values() for r in runs if r.get("stage1_itc")]
    if itc:
        baseline["itc_r5"] = itc[0]["chance_r5"]  # the baseline row shows chance for retrieval
    main_table = report.table(results, baseline)
    keys = [(k, k) for k in baseline if k.startswith(("oc_acc[", "mci_acc["))]
    detail_table = report.table(results, baseline, keys)
    text = ("Miniature world %r: held-out test questions (%s), mean ± std over seeds %s; the "
            "baseline row shows chance for the retrieval column\n%s\n\n"
            "Per count bin and hard case:\n%s\n" % (
                cfg["name"], baseline["num_questions"], seeds, main_table, detail_table))
    print("\n" + text)
    quality = OrderedDict((part, cache.read_done(job.assets[part]).get("result"))
                          for part in pretrain.PARTS if part in job.assets)
    quality["probes"] = probes.probe_frozen_parts(world, job.assets["clip"], job.assets["mae"],
                                                  world_config.architecture())
    text += "\n" + probes.format_probes(quality["probes"]) + "\n"
    print(probes.format_probes(quality["probes"]))
    out = OrderedDict(config=cfg, device=None, assets=job.assets, frozen_parts=quality,
                      baseline=baseline, results=results, seconds=None)
    return out, text


def write_report(job, args, out, text, tasks):
    """report.txt, the comparison chart and report.json (last: the run has finished) in the
    job folder, then its ``latest`` link; a copy in ``--results-dir``. ``--report-only``
    writes nothing into the run's folder."""
    if args.report_only:  # the run may still be going: its folder stays its own
        print("(--report-only: nothing written to %s)" % job.out)
    else:
        with open(os.path.join(job.out, "report.txt"), "w") as f:
            f.write(text)
        compare_runs(job, tasks)
        _write_json(out, os.path.join(job.out, REPORT))  # last: the run has finished
        point_latest(job.out)
        print("report: %s (and %s)" % (os.path.join(job.out, REPORT), os.path.join(job.root, LATEST, REPORT)))
    if args.results_dir:  # for the repository: cache folders by name, not by machine path
        os.makedirs(args.results_dir, exist_ok=True)
        out["assets"] = OrderedDict((k, os.path.basename(v)) for k, v in job.assets.items())
        _write_json(out, os.path.join(args.results_dir, REPORT))
        with open(os.path.join(args.results_dir, "report.txt"), "w") as f:
            f.write(text)
        for name in ("comparison.md", "comparison.png") if not args.report_only else ():
            path = os.path.join(job.out, "compare", name)
            if os.path.isfile(path):
                shutil.copy(path, os.path.join(args.results_dir, name))


if __name__ == "__main__":
    main()
