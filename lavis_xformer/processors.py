"""Image processors of the plugin; importing this registers them into LAVIS's registry.

``xformer_image_train`` is LAVIS's ``blip2_image_train`` (RandomResizedCrop at ``image_size``
with scale ``min_scale``-``max_scale``, then a horizontal flip) whose flip can be switched off
with ``hflip: False``: the paper's "w/o HFlip" ablation (supplementary Table 11). With the
default ``hflip: True`` it draws exactly what ``blip2_image_train`` draws.
"""
from lavis.common.registry import registry
from lavis.processors.blip_processors import Blip2ImageTrainProcessor
from omegaconf import OmegaConf
from torchvision import transforms


@registry.register_processor("xformer_image_train")
class XFormerImageTrainProcessor(Blip2ImageTrainProcessor):
    def __init__(self, image_size=364, mean=None, std=None, min_scale=0.5, max_scale=1.0, hflip=True):
        super().__init__(image_size=image_size, mean=mean, std=std, min_scale=min_scale,
                         max_scale=max_scale)
        self.hflip = bool(hflip)
        if not self.hflip:
            self.transform = transforms.Compose(
                [t for t in self.transform.transforms
                 if not isinstance(t, transforms.RandomHorizontalFlip)])

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg if cfg is not None else OmegaConf.create()
        hflip = cfg.get("hflip", True)
        if not isinstance(hflip, bool):
            raise ValueError("vis_processor xformer_image_train: hflip must be True or False, got %r" % (hflip,))
        return cls(image_size=cfg.get("image_size", 364), mean=cfg.get("mean", None),
                   std=cfg.get("std", None), min_scale=cfg.get("min_scale", 0.5),
                   max_scale=cfg.get("max_scale", 1.0), hflip=hflip)
