"""LAVIS generation classes whose generation cache reaches the model.

Defect (LAVIS 1.0.2): ``lavis.models.blip2_models.Qformer.BertLMHeadModel``,
``modeling_opt.OPTForCausalLM`` and ``modeling_t5.T5ForConditionalGeneration`` name the cache
``past`` in ``prepare_inputs_for_generation``, but transformers 4.26 hands it over as
``past_key_values``: the cache is silently dropped and every generation step recomputes the
whole sequence (same tokens, about 5x slower for the tiny OPT).

Patch: the subclasses below (same names as LAVIS's, same weights and state-dict keys) pass
``past_key_values`` on as ``past``. ``models/encoders.py`` (Q-Former) and ``models/llm.py``
(OPT, T5) build these instead of LAVIS's classes.

Removal: once LAVIS's ``prepare_inputs_for_generation`` accepts ``past_key_values``, build
LAVIS's classes directly and delete this module.
"""
from lavis.models.blip2_models import Qformer, modeling_opt, modeling_t5


class _PassCacheOn:
    """Mixin: ``past_key_values`` (transformers 4.26) is given to LAVIS's code as ``past``."""

    def prepare_inputs_for_generation(self, *args, past_key_values=None, **kwargs):
        if past_key_values is not None and kwargs.get("past") is None:
            kwargs["past"] = past_key_values
        return super().prepare_inputs_for_generation(*args, **kwargs)


class BertLMHeadModel(_PassCacheOn, Qformer.BertLMHeadModel):
    """LAVIS's Q-Former ``BertLMHeadModel`` with the generation cache passed on."""


class OPTForCausalLM(_PassCacheOn, modeling_opt.OPTForCausalLM):
    """LAVIS's ``modeling_opt.OPTForCausalLM`` with the generation cache passed on."""


class T5ForConditionalGeneration(_PassCacheOn, modeling_t5.T5ForConditionalGeneration):
    """LAVIS's ``modeling_t5.T5ForConditionalGeneration`` with the generation cache passed on."""
