"""BLIP-2 vs X-Former cost benchmark (``python -m bench --help``).

Both models are built from this plugin's own code with random weights (``fusion: blip2`` is
BLIP-2, tested equal to LAVIS's ``Blip2Qformer``; ``fusion: xformer`` is X-Former), at one of
three sizes, and measured side by side in one process, alternating step by step after a
warm-up: stage-1 training steps, stage-2 training steps (OPT), caption generation and VQA
answers, plus a per-component breakdown and an analytic FLOP count of each step. Not a test:
it reports, it does not assert. ``--parts stock`` adds LAVIS 1.0.2's own ``Blip2Qformer``
(bench/stock.py: its forward, its attention, no speed work) as the stock baseline.
"""
