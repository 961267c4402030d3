"""Decoding shared by every OPT-based model of the plugin: X-Former stage 2 (``xformer_opt``)
and the stock-BLIP-2 twin (``blip2_opt_twin``, models/blip2_twin.py), so that a comparison of
the two differs in the visual prefix only, never in the prompt or the decoding.

    prefix (B, Nq, H_llm) + prompts (B strings) --(frozen OPT, beam search)--> B*R strings

``LLMDecodingMixin`` gives a model ``generate`` (captions) and ``predict_answers`` (the call
LAVIS's VQA tasks make) on top of one method the model supplies,
``decode(image, prompts, num_return_sequences, use_nucleus_sampling, num_beams, **kwargs)``.
"""
import torch

VQA_PROMPT = "Question: {} Short Answer:"


def format_prompts(questions, prompt):
    """One prompt per question: ``prompt.format(q)`` when the prompt has ``{}``, else the
    prompt followed by the question; an empty prompt gives the bare questions."""
    prompt = prompt or "{}"
    if "{}" in prompt:
        return [prompt.format(q) for q in questions]
    return [prompt + q for q in questions]


def first_line(texts):
    """Answers end at the first newline (BLIP-2 appends one to every training text)."""
    return [t.split("\n")[0].strip() for t in texts]


def opt_generate(llm, tokenizer, prefix, prompts, eos_token_id, num_return_sequences=1,
                 use_nucleus_sampling=False, num_beams=5, **kwargs):
    """Generate with a frozen OPT (LAVIS's ``modeling_opt.OPTForCausalLM``) after
    [prefix; prompt].

    prefix: (B, Nq, H_llm) visual tokens; prompts: B strings, left-padded so that every
    sequence ends where generation starts (OPT's positions follow the attention mask, so
    padding between the queries and a short prompt changes nothing); ``eos_token_id`` ends
    generation (BLIP-2: the newline). Returns B * num_return_sequences stripped strings,
    image-major. Call it under the model's autocast.
    """
    tokenizer.padding_side = "left"
    tokens = tokenizer(list(prompts), return_tensors="pt", padding="longest").to(prefix.device)
    if tokens.input_ids.shape[0] != prefix.shape[0]:
        raise ValueError("%d prompts for %d images" % (tokens.input_ids.shape[0], prefix.shape[0]))
    repeat = num_return_sequences if use_nucleus_sampling else num_beams
    ones = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
    outputs = llm.generate(
        input_ids=tokens.input_ids,
        query_embeds=prefix.to(llm.dtype).repeat_interleave(repeat, dim=0),
        attention_mask=torch.cat([ones, tokens.attention_mask], dim=1),
        do_sample=use_nucleus_sampling,
        num_beams=1 if use_nucleus_sampling else num_beams,
        num_return_sequences=num_return_sequences,
        eos_token_id=eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )
    texts = tokenizer.batch_decode(outputs[:, tokens.input_ids.shape[1]:], skip_special_tokens=True)
    return [t.strip() for t in texts]


class LLMDecodingMixin:
    """``generate`` and ``predict_answers`` over the model's ``decode``; the model also has
    ``prompt`` (the caption prompt) and ``check_text``-like access to samples."""

    @torch.no_grad()
    def generate(
        self,
        samples,
        use_nucleus_sampling=False,
        num_beams=5,
        max_length=30,
        min_length=1,
        top_p=0.9,
        repetition_penalty=1.0,
        length_penalty=1.0,
        num_captions=1,
        temperature=1.0,
    ):
        """Captions: ``B * num_captions`` strings, image-major. ``samples["prompt"]`` (a string
        or one per image) overrides the model's ``prompt``."""
        image = samples["image"]
        prompt = samples.get("prompt", self.prompt)
        prompts = [prompt] * image.shape[0] if isinstance(prompt, str) else list(prompt)
        # with qformer_text_input the Q-Former reads the prompt, as LAVIS's instruct models do
        extra = {"qformer_text": prompts} if getattr(self, "qformer_text_input", False) else {}
        return self.decode(
            image, prompts, **extra, use_nucleus_sampling=use_nucleus_sampling, num_beams=num_beams,
            max_new_tokens=max_length, min_length=min_length, top_p=top_p,
            repetition_penalty=repetition_penalty, length_penalty=length_penalty,
            num_return_sequences=num_captions, temperature=temperature,
        )

    @torch.no_grad()
    def predict_answers(
        self,
        samples,
        num_beams=5,
        inference_method="generate",
        max_len=10,
        min_len=1,
        num_ans_candidates=None,
        answer_list=None,
        prompt=VQA_PROMPT,
        length_penalty=0,
        **kwargs,
    ):
        """Zero-shot open-ended answers (the call LAVIS's ``vqa``/``gqa`` tasks make):
        ``prompt`` formatted with each question, beam search, cut at the first newline."""
        if inference_method != "generate":
            raise ValueError(
                f"inference_method={inference_method!r} is not supported; this model answers "
                f"by generation (inference_method='generate')"
            )
        if "text_input" not in samples:
            raise KeyError(f"samples has no 'text_input' (the questions); keys: {sorted(samples)}")
        questions = samples["text_input"]
        questions = [questions] if isinstance(questions, str) else list(questions)
        # a model fine-tuned with the question in its Q-Former (qformer_text_input) reads it there too
        extra = {"qformer_text": questions} if getattr(self, "qformer_text_input", False) else {}
        answers = self.decode(
            samples["image"], format_prompts(questions, prompt), num_beams=num_beams,
            max_new_tokens=max_len, min_length=min_len, length_penalty=length_penalty, **extra,
        )
        return first_line(answers)
