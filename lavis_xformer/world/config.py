"""The miniature world's configuration file: world settings, the three frozen parts' settings
and the main job's runs, in one yaml (``lavis_xformer/configs/world/*.yaml``)."""
import os

from omegaconf import OmegaConf

from lavis_xformer import PACKAGE_DIR
from lavis_xformer.world import cache
from lavis_xformer.world.scenes import WorldSettings

CONFIG_DIR = os.path.join(PACKAGE_DIR, "configs", "world")
SECTIONS = ("name", "world", "clip", "mae", "lm", "job")


def load(path_or_name):
    """A config by path, or by name (``mini``, ``ci``, ``finding``) from the package."""
    path = path_or_name
    if not os.path.isfile(path):
        candidate = os.path.join(CONFIG_DIR, "%s.yaml" % path_or_name)
        if not os.path.isfile(candidate):
            names = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))
            raise FileNotFoundError("world config %r: no such file, and no packaged config of "
                                    "that name (packaged: %s)" % (path_or_name, ", ".join(names)))
        path = candidate
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    unknown = set(cfg) - set(SECTIONS)
    if unknown:
        raise ValueError("world config %s: unknown sections %s; known: %s" % (
            path, sorted(unknown), list(SECTIONS)))
    cfg.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    WorldSettings.from_dict(cfg.get("world", {}))  # validates
    return cfg


def world_key(cfg):
    return cache.key("world", WorldSettings.from_dict(cfg.get("world", {})).to_dict())


def part_key(cfg, part):
    """The key of a frozen part: its own settings and the world it is trained on."""
    return cache.key(part, cfg.get(part, {}), world_key(cfg))


def assets_dir(cfg):
    """Where the links to the cached products go: output/<name>/assets (relative to the
    current directory, as the project files' other paths are)."""
    return os.path.join("output", cfg["name"], "assets")
