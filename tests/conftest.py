"""Suite-wide settings: the tests run offline, on the CPU.

Nothing may reach the model hub: the tiny model types read only files shipped by pip
packages, and every full-size model is built with random weights. Setting the offline
switches here (inherited by the subprocesses the tests start) turns an accidental download
into an immediate error instead of a network wait.
"""
import os

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")
# Keep CPU tests predictable on small machines.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
