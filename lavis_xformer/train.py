"""Training entry point, in place of the train.py at the root of LAVIS's git repository (the
1.0.2 wheel has none). With the plugin installed, ``python -m lavis.train`` runs this.

    python -m lavis_xformer.train --cfg-path projects/xformer/tiny/stage1.yaml \
        [--options run.max_epoch=1 ...]
    torchrun --nproc_per_node=2 -m lavis_xformer.train --cfg-path ...

Unlike LAVIS's script it checks the configuration and the data before building anything,
and sets up torch.distributed on CPUs too (gloo); see lavis_xformer.compat.
"""
import lavis.tasks as tasks
from lavis.common.logger import setup_logger

import lavis_xformer  # noqa: F401  (registers the plugin's models, datasets, tasks, runner)
from lavis_xformer.runners import launch


def _train(cfg, job_id):
    launch.setup_seeds(cfg)
    setup_logger()  # after the distributed set-up, so that only rank 0 logs INFO
    cfg.pretty_print()

    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)

    runner = launch.get_runner_class(cfg)(
        cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets)
    runner.train()
    return runner


def main(argv=None):
    return launch.run_main(_train, argv, "Train a LAVIS model (X-Former plugin included).")


if __name__ == "__main__":
    main()
