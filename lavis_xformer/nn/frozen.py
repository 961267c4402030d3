"""One way to freeze a part of a model: no parameter of it trains, and a frozen module stays in
eval mode (no dropout, no drop-path) whatever mode its parent is switched to."""
from typing import Iterable, Union

from torch import nn


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """A frozen module's ``train``: whatever its parent asks for, it and every module inside
    it go to eval mode. A bound method (not a closure), so that a deep copy of the model
    binds its copy of the module."""
    return nn.Module.train(module, False)


def freeze(part: Union[nn.Module, nn.Parameter, Iterable[nn.Parameter]],
           eval_now: bool = True):
    """Stop ``part`` training and return it.

    ``part``: a module, or parameters (one, or several) of a module that keeps its mode. A
    module is pinned to eval mode: every later ``train(mode)`` of it or of its parent puts it
    in eval mode. ``eval_now``: also switch it to eval mode at once (False: it keeps its mode
    until the first ``train()``/``eval()`` call reaches it).
    """
    params = [part] if isinstance(part, nn.Parameter) else (
        part.parameters() if isinstance(part, nn.Module) else part)
    for param in params:
        param.requires_grad = False
    if isinstance(part, nn.Module):
        part.train = _stay_in_eval.__get__(part)  # a method of this module alone
        if eval_now:
            part.eval()
    return part
