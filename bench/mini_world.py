"""Wall time of the README's main job (the miniature world), from an empty cache.

    python -m bench.mini_world [--config mini] [--out bench/results/mini-world-cpu.json]

Runs ``python -m lavis_xformer.world.main --config <config>`` with a fresh, empty cache root
(so the world and the three frozen parts are built, as on a first run after installation; the
run gets a job folder of its own under output/<name>/, earlier runs are kept), and writes the total wall time, the CPU time of the whole process
tree (user + system), the driver's own split (world and frozen parts, then each variant's
stages) and the machine's load average before and after. A wall time taken on a machine that
other jobs share is no figure for the 2-core target; the CPU time is, nearly: on 2 idle cores
the job cannot take less than CPU time / 2, and takes about that when its two pipelines keep
both cores busy.
Run it from the repository's root.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mini")
    parser.add_argument("--out", default=os.path.join("bench", "results", "mini-world-cpu.json"))
    args = parser.parse_args(argv)
    from lavis_xformer.world import config as world_config

    name = world_config.load(args.config)["name"]
    cache_root = tempfile.mkdtemp(prefix="mini-world-cache-")
    env = dict(os.environ, LAVIS_XFORMER_CACHE=cache_root)
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    try:
        subprocess.run([sys.executable, "-m", "lavis_xformer.world.main", "--config", args.config],
                       check=True, env=env)
    finally:
        wall = time.time() - start
        shutil.rmtree(cache_root, ignore_errors=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(os.path.join("output", name, "latest", "report.json")) as f:  # this run, finished
        report = json.load(f)
    result = {
        "config": args.config, "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
        "wall_seconds_lower_bound_on_2_idle_cores": round(cpu / 2, 1),
        "driver_seconds": report["seconds"],
        "per_run_seconds": {v: [r["seconds"] for r in runs] for v, runs in report["results"].items()},
        "cpu_count": os.cpu_count(), "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "python": platform.python_version(),
        "scores": {v: [{k: r[k] for k in ("oc_acc", "oc_mae", "mci_acc", "colour_acc", "shape_acc")}
                       for r in runs] for v, runs in report["results"].items()},
        "majority_baseline": {k: report["baseline"][k] for k in ("oc_acc", "oc_mae", "mci_acc", "colour_acc", "shape_acc")},
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("main job: %.0f s wall (%.1f min), %.0f s CPU (at least %.1f min on 2 idle cores); "
          "written to %s" % (wall, wall / 60, cpu, cpu / 120, args.out))
    return result


if __name__ == "__main__":
    main()
