"""Training entry point, in place of the train.py at the root of LAVIS's git repository (the
1.0.2 wheel has none). With the plugin installed, ``python -m lavis.train`` runs this.

    python -m lavis_xformer.train --cfg-path projects/xformer/tiny/stage1.yaml \
        [--options run.max_epoch=1 ...]
    torchrun --nproc_per_node=2 -m lavis_xformer.train --cfg-path ...

Unlike LAVIS's script it checks the configuration and the data before building anything,
and sets up torch.distributed on CPUs too (gloo); see lavis_xformer.lavis_patches.
"""
import lavis_xformer  # noqa: F401  (registers the plugin's models, datasets, tasks, runner)
from lavis_xformer.training import launch


def _train(cfg, job_id):
    runner = launch.build_runner(cfg, job_id)
    runner.train()
    return runner

def main(argv=None):
    return launch.run_main(_train, argv, "Train a LAVIS model (X-Former plugin included).")


if __name__ == "__main__":
    main()
