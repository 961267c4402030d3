"""The frozen-LLM head shared by X-Former stage 2 (``xformer_opt``, ``xformer_t5``) and the
stock-BLIP-2 twin (``blip2_opt_twin``): one implementation of building the frozen LLM and the
projection, its tokenizer, the prompt, the precision it runs in and keeping it in eval mode.

    image --(model's image path)--> queries (B, Nq, D) --proj--> prefix (B, Nq, H_llm)
    [prefix; prompt tokens] --(frozen LLM)--> loss / generated text

A model mixes in ``FrozenLLMHead`` (T5) or ``OPTHead`` (OPT, with the decoding both OPT models
share), calls ``build_llm_head(cfg, width)`` in its ``__init__`` and supplies
``decode_prefix(image, qformer_text=None)``: the projected prefix for decoding. The module
names are class attributes, because the twin keeps LAVIS ``Blip2OPT``'s state-dict keys
(``opt_model``, ``opt_proj``) and X-Former its own (``llm_model``, ``llm_proj``).
"""
from functools import cached_property

import torch
from torch import nn

from lavis_xformer.models import llm as llm_builders
from lavis_xformer.models.generation import LLMDecodingMixin, opt_generate
from lavis_xformer.nn import freeze


class FrozenLLMHead(LLMDecodingMixin):
    """A frozen LLM fed a linear projection of the image queries; ``generate`` and
    ``predict_answers`` (``LLMDecodingMixin``) run over the model's ``decode``."""

    LLM_KIND = None  # "opt" or "t5" (llm.build_llm)
    LLM_ATTR = "llm_model"
    PROJ_ATTR = "llm_proj"

    def build_llm_head(self, c, width: int):
        """The frozen LLM (``model.llm_weights``, or random from ``model.llm``) and the trained
        projection from the query width ``width`` to the LLM's; the LLM is built first, then
        the projection (the order of random draws every checkpoint was written with).
        ``c``: the model's ``ModelConfig``."""
        self.prompt = c.prompt
        self.max_txt_len = c.max_txt_len
        # Frozen: in eval mode (no dropout) from the model's first train()/eval() call on, not
        # at once, as it always was: a randomly initialised LLM (tiny, mini) is built in train
        # mode, and a forward before that call draws its dropout; eval_now=True would change
        # those numbers. (from_pretrained LLMs come in eval mode anyway.)
        llm = freeze(llm_builders.build_llm(c, self.LLM_KIND), eval_now=False)
        setattr(self, self.LLM_ATTR, llm)
        setattr(self, self.PROJ_ATTR, nn.Linear(width, llm.config.hidden_size))

    @property
    def llm(self) -> nn.Module:
        return getattr(self, self.LLM_ATTR)

    def project(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, Nq, D) -> (B, Nq, H_llm)."""
        return getattr(self, self.PROJ_ATTR)(queries)

    @cached_property
    def llm_tokenizer(self):
        """Loaded on first use, so that building (random_init, meta device) loads nothing."""
        return llm_builders.build_tokenizer(self.model_config, self.LLM_KIND)

    def llm_autocast(self):
        """Autocast to the frozen LLM's half precision on GPU; nothing on CPU."""
        dtype = torch.bfloat16 if self.llm.dtype == torch.bfloat16 else torch.float16
        return self.maybe_autocast(dtype)


class OPTHead(FrozenLLMHead):
    """The OPT head: generation after [prefix; prompt] through ``generation.opt_generate``,
    stopping at the newline BLIP-2 appends to every training text."""

    LLM_KIND = "opt"

    @cached_property
    def newline_id(self) -> int:
        return self.llm_tokenizer("\n", add_special_tokens=False).input_ids[0]

    @cached_property
    def prompt_length(self) -> int:
        """Tokens of ``prompt`` (BOS included), masked out of the LM labels."""
        return len(self.llm_tokenizer(self.prompt).input_ids)

    def decode(self, image, prompts, num_return_sequences=1, use_nucleus_sampling=False,
               num_beams=5, qformer_text=None, **kwargs):
        prefix = self.decode_prefix(image, qformer_text=qformer_text)
        with self.llm_autocast():
            return opt_generate(
                self.llm, self.llm_tokenizer, prefix, prompts, self.newline_id,
                num_return_sequences=num_return_sequences,
                use_nucleus_sampling=use_nucleus_sampling, num_beams=num_beams, **kwargs,
            )
