"""Two gloo processes under torchrun train like one process with the same global batch.

What must be equal and what cannot be (measured on the tiny model, one AdamW step):

* the data: global batch j of a pass is the same set of samples (datasets/sampling.py);
* the losses at equal weights: the averaged statistics (all-reduced over processes) equal the
  one-process losses (ITC's in-batch negatives are gathered from every process);
* the weights after a step, when the gradient is a plain mean over samples (here ITG alone):
  equal up to the reduction order (measured: max |difference| 4e-8 at lr 1e-6, cosine of the
  two updates 0.9999999997).

Not equal: random draws (MAE masks, ITM negatives, dropout, augmentation) come from each
process's own generator (seed + rank, as LAVIS does), so they are switched off here. And
ITC's gradient differs by design: like LAVIS's BLIP-2, the model gathers the other
processes' features without gradient (``concat_all_gather``), so under torchrun a process's
ITC gradient lacks the terms of the other processes' rows, while in one process the gather is
the identity and every term flows (measured with ITC on: 98.3% of the update's signs agree).
"""
import json
import random

import numpy as np
import pytest
import torch

from omegaconf import OmegaConf

LR = 1e-4

# no random draw anywhere: unmasked MAE, no ITM, no dropout, no augmentation; ITC computed
# (its value is compared) but not trained, so that the gradient is a plain mean (see above)
DETERMINISTIC = [
    "model.mask_ratio=0", "model.loss_weights.rec=0", "model.loss_weights.itm=0",
    "model.loss_weights.itc=0", "model.qformer.hidden_dropout_prob=0.0",
    "model.qformer.attention_probs_dropout_prob=0.0",
    "datasets.easyvqa_caption.vis_processor.train.name=blip_image_eval",
]


def _train(tiny_stage1, tmp_path, name, processes, batch_size):
    out = tmp_path / name
    output = tiny_stage1(name, "run.warmup_lr=%g" % LR, "run.init_lr=%g" % LR, *DETERMINISTIC,
                         images=4, batch_size=batch_size, processes=processes).output
    stats = [json.loads(line) for line in (out / "latest" / "log.txt").read_text().splitlines()
             if line.startswith("{") and "train_loss" in line]
    assert len(stats) == 1
    checkpoint = torch.load(out / "latest" / "checkpoint_0.pth", map_location="cpu")
    return output, stats[0], checkpoint


def _initial_weights(checkpoint):
    """The trainable weights before the step: the model built as launch.setup_seeds and
    task.build_model build it (seed 42 on rank 0, whose weights DDP broadcasts)."""
    from lavis.common.registry import registry

    import lavis_xformer  # noqa: F401

    random.seed(42)
    np.random.seed(42)
    torch.manual_seed(42)
    cfg = OmegaConf.create(checkpoint["config"]["model"])
    return registry.get_model_class(cfg.arch).from_config(cfg).state_dict()


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, tiny_stage1):
    one_out, one_stats, one = _train(tiny_stage1, tmp_path, "one", processes=1, batch_size=4)
    two_out, two_stats, two = _train(tiny_stage1, tmp_path, "two", processes=2, batch_size=2)
    assert "distributed init (rank 1, world 2, backend gloo)" in two_out
    assert "Not using distributed mode" in one_out

    # one step each, at the same weights: the all-reduced statistics are the one-process losses
    for name in ("train_loss", "train_loss_itc", "train_loss_lm"):
        assert float(one_stats[name]) > 0
        assert one_stats[name] == two_stats[name], name
    averaged = [line.split("Averaged stats: ")[1] for out in (one_out, two_out)
                for line in out.splitlines() if "Averaged stats: " in line]
    assert averaged[0] == averaged[1]  # 4 decimals of every loss

    init = _initial_weights(one)
    a, b = one["model"], two["model"]
    assert set(a) == set(b)
    keys = [k for k in a if a[k].is_floating_point()]
    step_one = torch.cat([(a[k].double() - init[k].double()).flatten() for k in keys])
    step_two = torch.cat([(b[k].double() - init[k].double()).flatten() for k in keys])
    assert step_one.abs().max() > LR / 2  # the weights did move (Adam's first step ~ lr)
    assert (step_one - step_two).abs().max() < LR / 10
    assert torch.nn.functional.cosine_similarity(step_one, step_two, dim=0) > 1 - 1e-6

