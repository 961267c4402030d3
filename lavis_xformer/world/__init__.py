"""The miniature world: procedural scenes of coloured shapes, their text, the three frozen parts
pretrained in that world (CLIP side, MAE, language model), and the main job that trains and
compares BLIP-2 and X-Former in it. See docs/miniature-world.md.

Importing this package registers the world's caption dataset builder (``mini_world_caption``).
"""
