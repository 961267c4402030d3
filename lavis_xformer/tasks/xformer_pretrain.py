"""``xformer_pretrain``: LAVIS's image-text pre-training task whose step hands the runner every
loss the model returns (``loss`` and its parts ``loss_itc``, ``loss_itm``, ``loss_lm``,
``loss_rec``), so that runner_xformer's loop (training/runner.py) logs and prints them all, e.g.

    Train: data epoch: [0]  [10/20]  eta: 0:00:07  lr: 0.000100  loss: 9.1721  loss_itc: ...

The loop, checkpoints, resume and the NaN/inf guard are the runner's: this task trains under
``run.runner: runner_xformer`` (LAVIS's own loops back-propagate ``train_step``'s result,
which here is the model's output dict).
"""
from lavis.common.registry import registry
from lavis.tasks.image_text_pretrain import ImageTextPretrainTask


@registry.register_task("xformer_pretrain")
class XFormerPretrainTask(ImageTextPretrainTask):

    def train_step(self, model, samples):
        """The model's output: ``loss`` to back-propagate and its named parts to log."""
        return model(samples)
