"""The three kinds of text each scene gets, all written from the scene's description.

* ``alt_text``: web-like alt text for the contrastive encoder. It names the kinds of objects,
  with a count only where a person writing alt text would give one: "a red circle",
  "two squares", otherwise "some", "a few", "several", "many" (never an exact count above two).
* ``caption``: COCO-like, one or two sentences, usually with exact counts
  ("there are five circles, three red and two blue, and a yellow square on a dark background").
* ``questions``: held-out questions in GVTBench's layout and wording
  (``{"image_id", "text_in", "text_out", "n_obj_exist"}``):
    - OC: "How many {shape}s are there in the image?" -> the count as digits;
    - MCI: "Does {colour} {shape} exist in the image?" -> "Yes" / "No" (half and half; a "No"
      is a near miss where the world allows it: the shape in another colour, or the colour on
      another shape);
    - colour: "What color is the {shape}?" (only when exactly one object has that shape);
    - shape: "What shape is the {colour} object?" (only when exactly one object has that colour).
  ``n_obj_exist`` is the number of different shapes in the image.

Every choice of wording is drawn from the scene's own generator, so text is deterministic.
"""
from lavis_xformer.world.scenes import COLOURS, SHAPES

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine", "ten", "eleven", "twelve")


def plural(shape):
    return shape + "s"


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _colours_of(scene, shape):
    """Colour names of the objects of one shape with their counts, most frequent first."""
    counts = {}
    for o in scene.objects:
        if o.shape == shape:
            counts[o.colour] = counts.get(o.colour, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _join(parts):
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _background_words(scene, rng):
    if scene.stripe_colour is not None:
        return "%s stripes" % scene.stripe_colour if rng.random() < 0.5 else \
            "a %s striped background" % scene.stripe_colour
    return _pick(rng, ("a dark background", "a black background", "a dark grey background"))


def alt_text(scene, rng):
    """Alt text: kinds present, counts only for one or two, vague words otherwise."""
    parts = []
    for shape in scene.shapes():
        n = scene.count(shape)
        colours = _colours_of(scene, shape)
        colour = colours[0][0] + " " if len(colours) == 1 and rng.random() < 0.7 else ""
        if n == 1:
            parts.append("a %s%s" % (colour, shape))
        elif n == 2 and rng.random() < 0.7:
            parts.append("two %s%s" % (colour, plural(shape)))
        else:
            vague = ["some", "several"] + (["a few"] if n <= 4 else ["many", "lots of"])
            parts.append("%s %s%s" % (_pick(rng, vague), colour, plural(shape)))
    rng.shuffle(parts)
    text = _join(parts)
    if rng.random() < 0.4:
        text += " on " + _background_words(scene, rng)
    if rng.random() < 0.3:
        text = _pick(rng, ("image of ", "picture of ", "illustration: ", "shapes: ")) + text
    return text


def _shape_phrase(scene, shape, rng):
    """"five circles, three red and two blue" / "a yellow square" / "three green triangles"."""
    n = scene.count(shape)
    colours = _colours_of(scene, shape)
    if n == 1:
        return "a %s %s" % (colours[0][0], shape)
    if len(colours) == 1:
        return "%s %s %s" % (NUMBER_WORDS[n], colours[0][0], plural(shape))
    split = _join(["%s %s" % (NUMBER_WORDS[c], name) for name, c in colours])
    return "%s %s, %s" % (NUMBER_WORDS[n], plural(shape), split)


def caption(scene, rng):
    """A COCO-like caption: one or two sentences, usually with exact counts."""
    shapes = scene.shapes()
    phrases = [_shape_phrase(scene, s, rng) for s in shapes]
    if rng.random() < 0.15:  # some captions stay vague, as people's do
        phrases = ["%s %s" % (_pick(rng, ("some", "several")), plural(s)) if scene.count(s) > 1
                   else "a %s" % s for s in shapes]
    body = _join(phrases)
    first_is_one = scene.count(shapes[0]) == 1
    template = int(rng.integers(3))
    if template == 0:
        sentence = "there %s %s on %s" % ("is" if first_is_one and len(shapes) == 1 else "are",
                                         body, _background_words(scene, rng))
    elif template == 1:
        sentence = "%s on %s" % (body, _background_words(scene, rng))
    else:
        sentence = "an image with %s" % body
    sentences = [sentence]
    if rng.random() < 0.5:
        extra = _second_sentence(scene, rng)
        if extra:
            sentences.append(extra)
    return ". ".join(s[0].upper() + s[1:] for s in sentences) + "."


def _second_sentence(scene, rng):
    if scene.hard_case == "touching":
        return "some of the %s touch each other" % plural(scene.target)
    if scene.hard_case == "camouflage":
        hidden = [o for o in scene.objects if o.colour == scene.stripe_colour]
        if hidden:
            return "a %s %s is hard to see against the stripes" % (hidden[0].colour, hidden[0].shape)
    if scene.hard_case == "similar_colour":
        names = sorted({o.colour for o in scene.objects})
        return "the shapes are %s" % _join(names)
    total = len(scene.objects)
    return "there are %s shapes in all" % NUMBER_WORDS[total] if total < len(NUMBER_WORDS) else None


def _record(scene, question, answer, kind):
    return {"image_id": image_id(scene), "text_in": question, "text_out": answer,
            "n_obj_exist": len(scene.shapes()), "kind": kind, "hard_case": scene.hard_case}


def image_id(scene):
    """The image's path under the world folder: GVTBench takes non-numeric ids as paths."""
    return "%s/images/%05d.png" % (scene.split, scene.index)


def questions(scene, rng):
    """GVTBench-style question records for one scene: one OC, one MCI, and a colour and a
    shape question where the scene has an unambiguous one. Extra keys (``kind``,
    ``hard_case``) are ignored by the gvtbench builder."""
    out = [_record(scene, "How many %s are there in the image?" % plural(scene.target),
                   str(scene.count(scene.target)), "oc")]

    kinds = scene.kinds()
    if rng.random() < 0.5:
        colour, shape = kinds[int(rng.integers(len(kinds)))]
        out.append(_record(scene, "Does %s %s exist in the image?" % (colour, shape), "Yes", "mci"))
    else:
        present = set(kinds)
        near = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present and
                any(c == pc or s == ps for pc, ps in present)]
        far = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        pool = near or far
        colour, shape = pool[int(rng.integers(len(pool)))]
        out.append(_record(scene, "Does %s %s exist in the image?" % (colour, shape), "No", "mci"))

    single_shapes = [s for s in scene.shapes() if scene.count(s) == 1]
    if single_shapes:
        shape = single_shapes[int(rng.integers(len(single_shapes)))]
        colour = next(o.colour for o in scene.objects if o.shape == shape)
        out.append(_record(scene, "What color is the %s?" % shape, colour, "colour"))
    colours = sorted({o.colour for o in scene.objects})
    single_colours = [c for c in colours if scene.count(colour=c) == 1]
    if single_colours:
        colour = single_colours[int(rng.integers(len(single_colours)))]
        shape = next(o.shape for o in scene.objects if o.colour == colour)
        out.append(_record(scene, "What shape is the %s object?" % colour, shape, "shape"))
    return out


def qa_text(question, answer):
    """A question and its answer in the zero-shot VQA prompt's format (what the language
    model and stage 2 read): "Question: {q} Short Answer: {a}"."""
    return "Question: %s Short Answer: %s" % (question, answer)
