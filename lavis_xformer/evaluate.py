"""Evaluation entry point, in place of the evaluate.py at the root of LAVIS's git repository
(the 1.0.2 wheel has none). With the plugin installed, ``python -m lavis.evaluate`` runs this.

    python -m lavis_xformer.evaluate --cfg-path <run yaml> [--options ...]

It evaluates the configured model on run.test_splits with the runner named by run.runner
(LAVIS's runner_base when absent; runner_xformer also works on CPU), after the same early
configuration and data checks as lavis_xformer.train.
"""
import lavis_xformer  # noqa: F401  (registers the plugin's models, datasets, tasks, runner)
from lavis_xformer.training import launch


def _evaluate(cfg, job_id):
    runner = launch.build_runner(cfg, job_id)
    # the run's configuration at the top of <job>/log.txt, as a training run has it, so that
    # the results can be told apart later (python -m lavis_xformer.tools.compare reads it)
    runner.log_config()
    return runner.evaluate(skip_reload=True)

def main(argv=None):
    return launch.run_main(_evaluate, argv, "Evaluate a LAVIS model (X-Former plugin included).")


if __name__ == "__main__":
    main()
