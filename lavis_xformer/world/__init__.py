"""The miniature world: procedural scenes of coloured shapes, their text, the three frozen parts
pretrained in that world (CLIP side, MAE, language model), and the main job that trains and
compares BLIP-2 and X-Former in it. See docs/miniature-world.md.

The world is an application on top of the plugin: ``import lavis`` (or ``lavis_xformer``) does
not import it. Its caption dataset builder (``mini_world_caption``, ``datasets.py``) is
registered by the runs whose project files name it under ``run.imports``
(``projects/xformer/mini/stage1.yaml``, ``stage2.yaml``); the other modules are imported by the
commands (``python -m lavis_xformer.world.build | pretrain | main``).
"""
