"""What the runner's loop does with the loss of one step (training/runner.py): the loss parts
for the log, copied to the host in one transfer, and the NaN/inf guard that stops a diverged
run before its update is applied."""
import numbers
import re

import torch

from lavis_xformer.lavis_patches import distributed


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or infinite values; the step's update was not applied. Raised
    once, by the runner's loop, with the step and the last complete checkpoint in its message;
    launch.run_main turns it into the message and exit status 3."""


ADVICE = ("this step's update was not applied. Lower run.init_lr, check the data, or switch "
          "off run.amp, then resume from the last checkpoint with "
          "run.resume_ckpt_path=<its path or job directory>")

# torch's errors about NaN/inf operands, e.g. torch.multinomial's "probability tensor
# contains either `inf`, `nan` or element < 0" (ITM's negative mining after a diverged step)
NON_FINITE_ERROR = re.compile(r"\b(nan|inf)\b", re.IGNORECASE)


def where(epoch, step, iters_per_epoch):
    return "epoch %d, iteration %d of %d (global step %d)" % (
        epoch, step, iters_per_epoch, epoch * iters_per_epoch + step)


def grads_finite(parameters):
    """0-dim bool tensor: every gradient of ``parameters`` is finite (no host sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    norms = torch._foreach_norm(grads)
    return torch.isfinite(torch.stack([n.float() for n in norms]).sum())


def nonfinite_flags(loss, grads_ok):
    """(k,) float tensor on the loss's device, 1 where the loss (and, unless ``grads_ok`` is
    None, the gradients) is NaN/inf in any process; all-reduced so that every process stops
    at the same step and none is left waiting in a collective. No host sync."""
    flags = [~torch.isfinite(loss.detach().float())]
    if grads_ok is not None:
        flags.append(~grads_ok.to(loss.device))
    bad = torch.stack([f.reshape(()) for f in flags]).float()
    if distributed.dist_ready():
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return bad


def check_finite(loss, grads_ok, parts, epoch, step, iters_per_epoch, last_checkpoint=None):
    """Raise NonFiniteLossError when ``loss`` (or, unless ``grads_ok`` is None, a gradient) is
    NaN or inf in any process; its message names the step and ``last_checkpoint``. Returns the
    loss ``parts`` as floats: flags and parts reach the host in one synchronisation."""
    parts, bad = to_host(parts, nonfinite_flags(loss, grads_ok))
    if not any(bad):
        return parts
    what = "loss" if bad[0] else "gradient"
    here = ""
    if not torch.isfinite(loss.detach()).all():
        here = " (in this process: %s)" % ", ".join("%s=%s" % (k, v) for k, v in parts.items())
    raise NonFiniteLossError("the training %s is not finite at %s%s; %s%s" % (
        what, where(epoch, step, iters_per_epoch), here, ADVICE, last_named(last_checkpoint)))


def last_named(last_checkpoint):
    """The end of every NonFiniteLossError message: where to resume from."""
    return ". Last complete checkpoint: %s" % (
        last_checkpoint or "none written by this run (see run.checkpoint_every_iters)")


def loss_parts(output):
    """{name: detached 0-dim tensor or float} of every scalar entry of a model output whose
    name starts with "loss". Tensors stay on the device: ``to_host`` copies them all at once."""
    parts = {}
    for name, value in output.items():
        if not name.startswith("loss") or value is None:
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            parts[name] = value.detach().float().reshape(())
        elif isinstance(value, numbers.Number):
            parts[name] = float(value)
    return parts


def to_host(parts, flags=None):
    """Copy the loss parts (and the NaN/inf ``flags``) to the host in one transfer: one
    host-device synchronisation per call, where an ``.item()`` per value costs one each.
    Returns ({name: float}, [flag values])."""
    tensors = [v for v in parts.values() if torch.is_tensor(v)]
    if flags is not None:
        tensors = [flags.to(tensors[0].device) if tensors else flags] + tensors
    values = torch.cat([t.reshape(-1).float() for t in tensors]).tolist() if tensors else []
    bad = values[:len(flags)] if flags is not None else []
    values = iter(values[len(bad):])
    return {k: next(values) if torch.is_tensor(v) else v for k, v in parts.items()}, bad
