"""Image keys and values of the Q-Former's cross-attention, computed once per training step.

A stage-1 step runs the Q-Former's cross-attention over the same image tokens in three passes:
the query pass (B images), ITM ([positive; hard-negative image; positive] = 3B images) and
ITG (B images). Each pass projected the image tokens to keys and values in every
cross-attention layer again: 5B image rows where B distinct ones exist (at the paper's size
10.4 of a stage-1 step's TFLOP where 2.1 do). Inside ``shared_image_kv()`` the first pass
computes them for the B images of the step and the later passes index into them.

Same results: a pass reads the very keys/values it computed before (same inputs, same
weights); ITM's rows are gathered from them, and the gradient flows back through the gather
(index_add) to the one projection. Dropout is not involved (keys and values have none).

Only the fused attention (``FusedBertSelfAttention``, ``model.fused_attention: true``) reads
the shared keys/values; LAVIS's own attention class always recomputes them. A pass whose
image tokens were not registered (``bind``) computes its own, so the sharing can only skip
work that is known to repeat.
"""
from contextlib import contextmanager
from typing import List, Optional, Union

import torch

_ACTIVE: List["SharedImageKV"] = []


class SharedImageKV:
    """The keys/values of one step's image tokens, per cross-attention module.

    ``base``: the (B, Nc, Dc) image tokens of the step (the query pass's
    ``encoder_hidden_states``). Other passes register their image tokens with ``bind`` as
    rows of ``base`` (or, for rows from other ranks, as tokens to project afresh).
    """

    def __init__(self):
        self.base: Optional[torch.Tensor] = None
        self._views = {}  # id(tokens) -> (tokens, parts)
        self._cache = {}  # attention module -> (keys, values) of base, (B, heads, Nc, d)

    def set_base(self, tokens: torch.Tensor):
        if self.base is None:
            self.base = tokens
            self._views[id(tokens)] = (tokens, None)

    def bind(self, tokens: torch.Tensor, parts: List[Union[torch.Tensor, "Fresh"]]) -> torch.Tensor:
        """Declare ``tokens`` (R, Nc, Dc) to be, in order along dim 0, the concatenation of
        ``parts``: LongTensors of row indices into ``base``, or ``Fresh(tensor)`` rows not in
        ``base`` (projected afresh). Returns ``tokens``."""
        if self.base is not None:
            self._views[id(tokens)] = (tokens, parts)
        return tokens

    def lookup(self, module, tokens):
        """(keys, values) for ``module`` over ``tokens``, or None when ``tokens`` is not bound."""
        entry = self._views.get(id(tokens))
        if entry is None or entry[0] is not tokens:
            return None
        parts = entry[1]
        if module not in self._cache:
            self._cache[module] = project(module, self.base)
        keys, values = self._cache[module]
        if parts is None:
            return keys, values
        out_k, out_v = [], []
        for part in parts:
            if isinstance(part, Fresh):
                k, v = project(module, part.tokens)
            else:
                k, v = keys.index_select(0, part), values.index_select(0, part)
            out_k.append(k)
            out_v.append(v)
        return torch.cat(out_k), torch.cat(out_v)


class Fresh:
    """Image tokens that are not rows of the step's base (e.g. hard negatives from other ranks)."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens


def project(module, tokens):
    """The keys and values ``BertSelfAttention`` computes from encoder tokens, (B, heads, Nc, d)."""
    return (module.transpose_for_scores(module.key(tokens)),
            module.transpose_for_scores(module.value(tokens)))


@contextmanager
def shared_image_kv(enabled: bool = True):
    """Within the block, the first registered image tokens (``register_base``, called by the
    query pass) get their keys/values computed once per cross-attention layer; yields the
    ``SharedImageKV`` (None when disabled)."""
    if not enabled:
        yield None
        return
    scope = SharedImageKV()
    _ACTIVE.append(scope)
    try:
        yield scope
    finally:
        _ACTIVE.remove(scope)


def register_base(tokens: torch.Tensor):
    """Called with the query pass's image tokens; a no-op outside ``shared_image_kv``."""
    if _ACTIVE:
        _ACTIVE[-1].set_base(tokens)


def bind(tokens: torch.Tensor, parts) -> torch.Tensor:
    """``SharedImageKV.bind`` in the active scope; a no-op outside ``shared_image_kv``."""
    if _ACTIVE:
        _ACTIVE[-1].bind(tokens, parts)
    return tokens


def lookup(module, tokens):
    """Shared (keys, values) of ``tokens`` for ``module``, or None (compute them as usual)."""
    if not _ACTIVE:
        return None
    return _ACTIVE[-1].lookup(module, tokens)
