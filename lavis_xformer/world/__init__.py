"""The miniature world: procedural scenes of coloured shapes, their text, the three frozen parts
pretrained in that world (CLIP side, MAE, language model), and the main job that trains and
compares BLIP-2 and X-Former in it. See docs/miniature-world.md.

The world's caption dataset builder (``mini_world_caption``, ``datasets.py``) is registered
when ``lavis_xformer`` is imported; the other modules are imported by the commands
(``python -m lavis_xformer.world.build | pretrain | main``).
"""
