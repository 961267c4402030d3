"""Building LAVIS's EVA ViT on the meta device.

Defect (LAVIS 1.0.2): ``lavis.models.eva_vit.VisionTransformer.__init__`` computes its
drop-path rates as ``[x.item() for x in torch.linspace(0, drop_path_rate, depth)]``. Under
``with torch.device("meta")`` (how the benchmark and the tests size ViT-g without allocating
it) that linspace is a meta tensor, and ``.item()`` raises "Tensor.item() cannot be called on
meta tensors".

Patch: ``linspace_on_cpu()`` is a torch function mode (torch's own extension point, active
only inside the ``with`` and only in this thread, nothing in torch is replaced) that gives every
``torch.linspace`` without an explicit device the CPU. ``models/encoders.py`` builds the ViT
inside it; the ViT's parameters still land on the surrounding default device.

Removal: once LAVIS computes the rates without ``.item()`` on a device tensor (e.g.
``torch.linspace(...).tolist()`` on the CPU, or plain Python), drop the ``with`` in
``encoders.build_eva_vit`` and delete this module.
"""
import torch
from torch.overrides import TorchFunctionMode


class linspace_on_cpu(TorchFunctionMode):
    """Context manager: ``torch.linspace`` without a ``device`` argument runs on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.linspace and kwargs.get("device") is None:
            # an explicit device wins over an outer `with torch.device(...)`
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)
