"""Build the miniature world (or reuse it from the cache) and link it for the project files.

    python -m lavis_xformer.world.build --config mini [--cache-dir DIR]

The world folder holds, per split (train, val, test):

    <split>/images/00000.png ...    the rendered scenes (RGB PNG, lossless)
    <split>/scenes.json             each scene's description (objects, hard case)
    <split>/captions.json           [{"image", "image_id", "caption", "alt_text", "hard_case"}]
    <split>/oc.json, mci.json       GVTBench-layout questions (object counting, identification)
    <split>/attr.json               colour and shape questions (same layout, exact-match scored)

and ``tokenizer/vocab.txt``, a BERT WordPiece vocabulary of every word the world writes (the
Q-Former's tokenizer, ``model.tokenizer``). Image paths in the question files are relative to
the world folder, which is what ``build_info.images.storage`` points at.
"""
import argparse
import json
import logging
import os
import re
import sys
import time

from lavis_xformer.world import cache, config as world_config
from lavis_xformer.world import scenes as S
from lavis_xformer.world import text as T

QUESTION_FILES = {"oc": ("oc",), "mci": ("mci",), "attr": ("colour", "shape")}
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_SIZE = 256  # the Q-Former's text vocabulary (model.qformer.vocab_size of the mini types)


def _write_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=0)


def words(text):
    """Lowercased words and punctuation marks, as BERT's basic tokenizer splits them."""
    return re.findall(r"[a-z]+|\d|[^\sa-z\d]", text.lower())


def write_split(settings, split, folder, progress=True):
    os.makedirs(os.path.join(folder, split, "images"), exist_ok=True)
    scenes = S.generate(settings, split)
    captions, by_file, vocabulary = [], {name: [] for name in QUESTION_FILES}, set()
    start = time.time()
    for n, scene in enumerate(scenes):
        rng = S.scene_rng(settings, scene)
        image, _ = S.render(scene, settings, rng)
        image.save(os.path.join(folder, T.image_id(scene)))
        record = {"image": "images/%05d.png" % scene.index, "image_id": scene.index,
                  "caption": T.caption(scene, rng), "alt_text": T.alt_text(scene, rng),
                  "hard_case": scene.hard_case}
        captions.append(record)
        vocabulary.update(words(record["caption"]) + words(record["alt_text"]))
        for q in T.questions(scene, rng):
            vocabulary.update(words(q["text_in"]) + words(q["text_out"]))
            for name, kinds in QUESTION_FILES.items():
                if q["kind"] in kinds:
                    by_file[name].append(q)
        if progress and (n + 1) % 1000 == 0:
            print("  world %s: %d/%d scenes (%.0f s)" % (split, n + 1, len(scenes), time.time() - start),
                  flush=True)
    _write_json([s.to_dict() for s in scenes], os.path.join(folder, split, "scenes.json"))
    _write_json(captions, os.path.join(folder, split, "captions.json"))
    for name, records in by_file.items():
        _write_json(records, os.path.join(folder, split, "%s.json" % name))
    return vocabulary, {name: len(r) for name, r in by_file.items()}


def write_world(settings, folder):
    vocabulary, counts = set(), {}
    for split in ("train", "val", "test"):
        v, c = write_split(settings, split, folder)
        vocabulary |= v
        counts[split] = dict(c, scenes=int(settings.splits[split]))
    os.makedirs(os.path.join(folder, "tokenizer"))
    # a real WordPiece vocabulary for BertTokenizer: special tokens, then every word and mark
    vocab = list(SPECIAL_TOKENS) + sorted(vocabulary | set("0123456789"))
    if len(vocab) > VOCAB_SIZE:
        raise ValueError("the world writes %d distinct words and marks, more than the Q-Former "
                         "vocabulary's %d rows (VOCAB_SIZE)" % (len(vocab), VOCAB_SIZE))
    # padded to a fixed size as BERT's [unusedN] rows: model.qformer.vocab_size stays put
    vocab += ["[unused%d]" % i for i in range(VOCAB_SIZE - len(vocab))]
    with open(os.path.join(folder, "tokenizer", "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    _write_json(settings.to_dict(), os.path.join(folder, "settings.json"))
    return {"counts": counts, "words": len(vocabulary), "vocab_size": len(vocab)}


def ensure_world(cfg, cache_dir=None, link=True):
    """The world folder of ``cfg`` (built now unless cached), linked as
    output/<name>/assets/world. Returns its path. Every command starts here, so this is where
    the temporaries of killed builds are removed (cache.remove_stale)."""
    settings = S.WorldSettings.from_dict(cfg.get("world", {}))
    root = cache.cache_root(cache_dir)
    cache.remove_stale(root)
    if link:
        cache.remove_stale(world_config.assets_dir(cfg))
    path = cache.entry(root, "world", world_config.world_key(cfg))
    if cache.is_done(path):
        print("world: reusing %s" % path, flush=True)
    else:
        print("world: building %s (%s scenes)" % (path, dict(settings.splits)), flush=True)
        cache.build(path, lambda tmp: write_world(settings, tmp),
                    {"kind": "world", "settings": settings.to_dict(),
                     "generator_version": S.GENERATOR_VERSION})
        info = cache.read_done(path)
        print("world: built in %.1f s: %s" % (info["seconds"], info["counts"]), flush=True)
    if link:
        cache.publish(path, os.path.join(world_config.assets_dir(cfg), "world"))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build the miniature world (cached).")
    parser.add_argument("--config", default="mini", help="world config: a path or a packaged name (mini, ci, finding)")
    parser.add_argument("--cache-dir", default=None, help="cache root (default: $%s or ~/.cache/lavis_xformer/mini)" % cache.ENV_CACHE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = world_config.load(args.config)
    except (ValueError, FileNotFoundError) as e:  # a bad world config: one line, exit status 2
        parser.error(str(e))
    print(ensure_world(cfg, args.cache_dir))


if __name__ == "__main__":
    sys.exit(main())
