"""The miniature world's scenes: procedural images of coloured shapes, deterministic from a seed.

A scene is a plain description (``Scene``: background, objects with shape, colour, size,
position) drawn from ``WorldSettings`` with one ``numpy`` generator; ``render`` turns it into
an RGB image and a label map (object index + 1 per pixel, 0 for background), so that every
count can be checked again by looking at the pixels.

Hard cases (the paper's Figure 6), one per scene, drawn with fixed probabilities:

    plain           objects apart on a plain dark background.
    touching        2 or 3 objects of the asked shape and one colour placed edge to edge.
    similar_colour  every object's colour comes from one pair of neighbouring hues
                    (red/orange, orange/yellow, blue/purple, green/teal).
    camouflage      a striped background in one object's colour: that object blends in.

Nothing here depends on torch; the text of each scene is written by ``text.py``.
"""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = "2"  # part of every cache key: bump when a scene or its text changes

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {  # name -> RGB; neighbouring hues make the similar-colour case
    "red": (215, 45, 45),
    "orange": (235, 125, 35),
    "yellow": (230, 210, 50),
    "green": (55, 165, 70),
    "teal": (40, 165, 160),
    "blue": (45, 85, 215),
    "purple": (135, 65, 195),
    "white": (230, 230, 230),
}
SIMILAR_PAIRS = (("red", "orange"), ("orange", "yellow"), ("blue", "purple"), ("green", "teal"))
HARD_CASES = ("plain", "touching", "similar_colour", "camouflage")
SIZES = {"small": (2.6, 3.4), "medium": (3.8, 4.8), "large": (5.4, 6.6)}  # radius in px at 64 px


@dataclass
class WorldSettings:
    """Everything that decides the world. Fixed before any model is compared (see
    docs/miniature-world.md); a change gives a new cache key and a new world."""

    seed: int = 0
    image_size: int = 64
    splits: Dict[str, int] = field(default_factory=lambda: {"train": 6000, "val": 300, "test": 600})
    max_count: int = 8           # counts of the asked shape: 1..max_count, uniform
    max_objects: int = 12        # all objects of a scene together
    hard_cases: Dict[str, float] = field(default_factory=lambda: {
        "plain": 0.4, "touching": 0.2, "similar_colour": 0.2, "camouflage": 0.2})
    supersample: int = 4         # drawn at 4x and reduced: smooth edges, no aliasing pattern
    colour_jitter: int = 12      # per object, per channel: shades of one colour name
    pixel_noise: float = 3.0     # per pixel sensor noise (std, 0-255 scale)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError("world settings: unknown keys %s; known: %s" % (
                sorted(unknown), sorted(known)))
        settings = cls(**dict(values))
        if settings.max_count < 1 or settings.max_objects < settings.max_count:
            raise ValueError("world settings: need 1 <= max_count <= max_objects")
        if set(settings.hard_cases) - set(HARD_CASES):
            raise ValueError("world settings: hard_cases keys must be among %s" % (HARD_CASES,))
        return settings

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclass
class Obj:
    shape: str
    colour: str
    size: str
    x: float
    y: float
    r: float
    rgb: Tuple[int, int, int]
    angle: float = 0.0


@dataclass
class Scene:
    """One image's description. ``objects[0]``'s shape is the asked shape of the counting
    question (``target``)."""

    index: int
    split: str
    hard_case: str
    background: Tuple[int, int, int]
    stripe_colour: str = None     # camouflage: the colour name of the stripes
    objects: List[Obj] = field(default_factory=list)

    @property
    def target(self):
        return self.objects[0].shape

    def count(self, shape=None, colour=None):
        return sum(1 for o in self.objects
                   if (shape is None or o.shape == shape) and (colour is None or o.colour == colour))

    def shapes(self):
        """Shapes present, in order of first appearance."""
        return list(dict.fromkeys(o.shape for o in self.objects))

    def kinds(self):
        """(colour, shape) pairs present."""
        return sorted({(o.colour, o.shape) for o in self.objects})

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["objects"] = [dict(dataclasses.asdict(o), rgb=list(o.rgb)) for o in self.objects]
        d["background"] = list(self.background)
        return d

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["objects"] = [Obj(**dict(o, rgb=tuple(o["rgb"]))) for o in d["objects"]]
        d["background"] = tuple(d["background"])
        return cls(**d)


def _choice(rng, seq, p=None):
    return seq[int(rng.choice(len(seq), p=p))]


def _jitter(rng, rgb, amount):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


# how far a shape's corners reach, as a multiple of its radius r (see _polygon)
EXTENT = {"circle": 1.0, "square": 0.86 * 2 ** 0.5, "diamond": 1.15, "triangle": 1.25}


def extent(o):
    return o.r * EXTENT[o.shape]


def _place(rng, objects, shape, r, size, touching_with=None, tries=400):
    """A centre for a new object of radius r: inside the image, apart from the others by at
    least 2 px (between the circles around their corners); with ``touching_with`` an object,
    edge to edge with that one."""
    r = r * EXTENT[shape]
    margin = r + 1.0
    for _ in range(tries):
        if touching_with is not None:
            a = rng.uniform(0, 2 * math.pi)
            d = extent(touching_with) + r * rng.uniform(0.85, 0.95)
            x, y = touching_with.x + d * math.cos(a), touching_with.y + d * math.sin(a)
        else:
            x, y = rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)
        if not (margin <= x <= size - margin and margin <= y <= size - margin):
            continue
        ok = True
        for o in objects:
            gap = math.hypot(o.x - x, o.y - y) - extent(o) - r
            need = -0.25 * r if o is touching_with else 2.0
            if gap < need:
                ok = False
                break
        if ok:
            return x, y
    return None


def sample_scene(rng, settings: WorldSettings, index: int, split: str) -> Scene:
    """One scene from the generator ``rng`` (a ``numpy.random.Generator``)."""
    cases = [c for c in HARD_CASES if settings.hard_cases.get(c, 0) > 0]
    p = np.array([settings.hard_cases[c] for c in cases], dtype=float)
    hard_case = _choice(rng, cases, p / p.sum())
    size = settings.image_size
    scale = size / 64.0

    while True:  # a crowded draw that cannot be placed is drawn again
        shapes = list(rng.permutation(SHAPES))
        n_kinds = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
        low = 2 if hard_case == "touching" else 1
        counts = [int(rng.integers(low, settings.max_count + 1))]
        for _ in range(n_kinds - 1):
            room = settings.max_objects - sum(counts)
            if room < 1:
                break
            counts.append(int(rng.integers(1, min(room, settings.max_count // 2) + 1)))
        total = sum(counts)
        sizes = ("small", "medium", "large") if total <= 6 else (
            ("small", "medium") if total <= 9 else ("small",))

        if hard_case == "similar_colour":
            palette = list(_choice(rng, SIMILAR_PAIRS))
        else:
            palette = list(COLOURS)
        stripe_colour = None
        if hard_case == "camouflage":
            stripe_colour = _choice(rng, [c for c in COLOURS if c != "white"])
        background = tuple(int(v) for v in rng.integers(25, 70, size=3))

        objects = []
        failed = False
        for k, (shape, n) in enumerate(zip(shapes, counts)):
            # each shape comes in one or two colours
            colours = list(rng.choice(palette, size=min(len(palette), int(rng.integers(1, 3))),
                                      replace=False))
            if k == 0 and hard_case == "camouflage":  # the asked shape's first object hides
                colours = [stripe_colour] + [c for c in colours if c != stripe_colour][:1]
            cluster = int(rng.integers(2, min(3, n) + 1)) if (k == 0 and hard_case == "touching") else 0
            for i in range(n):
                colour = colours[0] if (i < cluster or i == 0) else _choice(rng, colours)
                size_name = _choice(rng, sizes)
                r = rng.uniform(*SIZES[size_name]) * scale
                anchor = objects[-1] if 0 < i < cluster else None
                pos = _place(rng, objects, shape, r, size, touching_with=anchor)
                if pos is None:
                    failed = True
                    break
                rgb = _jitter(rng, COLOURS[colour], settings.colour_jitter)
                angle = float(rng.uniform(-0.35, 0.35)) if shape in ("square", "triangle", "diamond") else 0.0
                objects.append(Obj(shape, str(colour), size_name, float(pos[0]), float(pos[1]),
                                   float(r), rgb, angle))
            if failed:
                break
        if not failed:
            return Scene(index, split, hard_case, background, stripe_colour, objects)


def _polygon(o, s):
    """Vertices of a shape at supersampling factor s."""
    cx, cy, r = o.x * s, o.y * s, o.r * s
    if o.shape == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        rr = r * 0.86
    elif o.shape == "diamond":
        corners = [(0, -1.15), (0.8, 0), (0, 1.15), (-0.8, 0)]
        rr = r
    else:  # triangle
        corners = [(0, -1.1), (1.0, 0.75), (-1.0, 0.75)]
        rr = r
    c, si = math.cos(o.angle), math.sin(o.angle)
    return [(cx + rr * (x * c - y * si), cy + rr * (x * si + y * c)) for x, y in corners]


def _draw(draw, o, s, fill):
    if o.shape == "circle":
        draw.ellipse([o.x * s - o.r * s, o.y * s - o.r * s, o.x * s + o.r * s, o.y * s + o.r * s], fill=fill)
    else:
        draw.polygon(_polygon(o, s), fill=fill)


def render(scene: Scene, settings: WorldSettings, rng=None):
    """(RGB image as a PIL image, label map as an int array: 0 background, i + 1 object i).

    The label map is drawn at the output size without smoothing, so every object owns the
    pixels whose centre it covers. ``rng`` adds the pixel noise (seeded per scene)."""
    size, s = settings.image_size, settings.supersample
    big = Image.new("RGB", (size * s, size * s), scene.background)
    draw = ImageDraw.Draw(big)
    if scene.stripe_colour is not None:
        rgb = tuple(int(0.8 * c) for c in COLOURS[scene.stripe_colour])  # a shade darker: hard, not hidden
        width = 3 * s
        for off in range(-size * s, 2 * size * s, 2 * width):
            draw.polygon([(off, 0), (off + width, 0), (off + width - size * s, size * s),
                          (off - size * s, size * s)], fill=rgb)
    for o in scene.objects:
        _draw(draw, o, s, o.rgb)
    image = big.resize((size, size), Image.BOX)

    labels = Image.new("I", (size, size), 0)
    ldraw = ImageDraw.Draw(labels)
    for i, o in enumerate(scene.objects):
        _draw(ldraw, o, 1, i + 1)
    label_map = np.array(labels, dtype=np.int32)

    if rng is not None and settings.pixel_noise > 0:
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + rng.normal(0, settings.pixel_noise, size=pixels.shape)
        image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    return image, label_map


def generate(settings: WorldSettings, split: str):
    """The scenes of one split, in index order; each split has its own stream of the world
    seed, so changing one split's size leaves the other splits' scenes as they are."""
    split_ids = {"train": 0, "val": 1, "test": 2}
    if split not in split_ids:
        raise ValueError("split %r is not known; the world has train, val and test" % split)
    rng = np.random.default_rng([settings.seed, split_ids[split]])
    return [sample_scene(rng, settings, i, split) for i in range(int(settings.splits[split]))]


def scene_rng(settings: WorldSettings, scene: Scene):
    """The generator of a scene's pixel noise (and its text), from the seed, split and index."""
    split_ids = {"train": 0, "val": 1, "test": 2}
    return np.random.default_rng([settings.seed, split_ids[scene.split], scene.index, 7])
