"""A non-strict weight load that says what it loaded, missed and ignored.

Defect (LAVIS 1.0.2): ``BaseModel.load_checkpoint_from_config`` cannot skip loading, and
``Blip2Base.load_from_pretrained`` loads non-strictly without logging which keys were missing
or unexpected, so a checkpoint that fits badly loads silently.

Patch: ``models/sources.py`` loads checkpoints through ``load_state_dict_logged``, which logs
the number of tensors loaded and examples of the missing and unexpected keys.

Removal: once LAVIS logs its load result (``msg``) in full, ``sources.py`` may call
``Blip2Base.load_from_pretrained``; delete this module.
"""
import logging

import torch


def load_state_dict_logged(model: torch.nn.Module, state_dict: dict, source: str):
    """Non-strict load that logs what was loaded, missing and unexpected."""
    msg = model.load_state_dict(state_dict, strict=False)
    loaded = len(state_dict) - len(msg.unexpected_keys)
    logging.info("Loaded %d tensors from %s", loaded, source)
    if msg.missing_keys:
        logging.info("Not in %s (kept as built): %d keys, e.g. %s", source,
                     len(msg.missing_keys), msg.missing_keys[:5])
    if msg.unexpected_keys:
        logging.warning("Ignored %d keys of %s not in the model, e.g. %s",
                        len(msg.unexpected_keys), source, msg.unexpected_keys[:5])
    return msg
