"""The miniature world's generator and text (lavis_xformer.world): determinism, counts that are
right by construction and by re-detection in the rendered pixels, and what the alt text, the
captions and the questions carry. Pure numpy/PIL: fast."""
import json
import re
from collections import deque

import numpy as np
import pytest

from lavis_xformer.world import build as world_build
from lavis_xformer.world import scenes as S
from lavis_xformer.world import text as T

SETTINGS = S.WorldSettings(splits={"train": 160, "val": 20, "test": 80})
NUMBER = {w: i for i, w in enumerate(T.NUMBER_WORDS)}


@pytest.fixture(scope="module")
def train_scenes():
    return S.generate(SETTINGS, "train")


def components(mask):
    """Number of 8-connected components of a boolean image (an independent flood fill)."""
    seen = np.zeros_like(mask, dtype=bool)
    n = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        n += 1
        queue = deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)):
                ny, nx = cy + dy, cx + dx
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
    return n


def test_generator_is_deterministic_and_seeded(train_scenes):
    again = S.generate(SETTINGS, "train")
    assert [s.to_dict() for s in again] == [s.to_dict() for s in train_scenes]
    a, _ = S.render(train_scenes[3], SETTINGS, S.scene_rng(SETTINGS, train_scenes[3]))
    b, _ = S.render(again[3], SETTINGS, S.scene_rng(SETTINGS, again[3]))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    rng = S.scene_rng(SETTINGS, train_scenes[3])
    assert T.caption(train_scenes[3], rng) == T.caption(again[3], S.scene_rng(SETTINGS, again[3]))
    other = S.generate(S.WorldSettings(seed=1, splits=SETTINGS.splits), "train")
    assert [s.to_dict() for s in other] != [s.to_dict() for s in train_scenes]
    # splits are separate streams: the test split does not repeat the train split
    test = S.generate(SETTINGS, "test")
    assert [s.to_dict()["objects"] for s in test[:20]] != [s.to_dict()["objects"] for s in train_scenes[:20]]


def test_world_covers_counts_shapes_colours_and_hard_cases(train_scenes):
    counts = {s.count(s.target) for s in train_scenes}
    assert counts == set(range(1, SETTINGS.max_count + 1))
    assert {o.shape for s in train_scenes for o in s.objects} == set(S.SHAPES)
    assert len({o.colour for s in train_scenes for o in s.objects}) >= 6
    assert {o.size for s in train_scenes for o in s.objects} == set(S.SIZES)
    assert {s.hard_case for s in train_scenes} == set(S.HARD_CASES)
    assert all(len(s.objects) <= SETTINGS.max_objects for s in train_scenes)
    for s in train_scenes:
        if s.hard_case == "similar_colour":
            assert any({o.colour for o in s.objects} <= set(pair) for pair in S.SIMILAR_PAIRS)
        if s.hard_case == "camouflage":
            assert s.stripe_colour in {o.colour for o in s.objects if o.shape == s.target}
        if s.hard_case == "touching":  # two objects of the asked shape edge to edge
            targets = [o for o in s.objects if o.shape == s.target]
            gaps = [np.hypot(a.x - b.x, a.y - b.y) - S.extent(a) - S.extent(b)
                    for i, a in enumerate(targets) for b in targets[i + 1:]]
            assert min(gaps) < 0.1


def test_counts_are_right_by_re_detection(train_scenes):
    for scene in train_scenes[:80]:
        image, labels = S.render(scene, SETTINGS, S.scene_rng(SETTINGS, scene))
        # every object owns visible pixels in the label map (nothing is hidden under another)
        visible = {int(v) - 1 for v in np.unique(labels) if v}
        assert visible == set(range(len(scene.objects)))
        shapes_seen = [scene.objects[i].shape for i in visible]
        assert shapes_seen.count(scene.target) == scene.count(scene.target)
        # each object is one piece (touching objects overlap a little: a neighbour may clip a
        # corner off, never split an object in two halves)
        for i in range(len(scene.objects)):
            pieces = components(labels == i + 1)
            assert pieces == 1 or (scene.hard_case == "touching" and pieces <= 2)
        if scene.hard_case in ("plain", "similar_colour"):
            # independently of the label map: pixels that differ from the background colour
            # form exactly one blob per object (objects of these scenes are apart)
            pixels = np.asarray(image, dtype=np.int32)
            differs = np.abs(pixels - np.array(scene.background)).max(axis=-1) > 40
            assert components(differs) == len(scene.objects), scene.to_dict()


def test_alt_text_gives_kinds_and_counts_only_as_people_do(train_scenes):
    for scene in train_scenes:
        alt = T.alt_text(scene, S.scene_rng(SETTINGS, scene))
        for shape in scene.shapes():
            assert re.search(r"\b%ss?\b" % shape, alt), (alt, shape)
        assert not re.search(r"\d", alt)
        said = [w for w in re.findall(r"[a-z]+", alt) if w in NUMBER]
        assert all(NUMBER[w] <= 2 for w in said), alt  # never an exact count above two
        for shape in scene.shapes():  # "two circles" only if there are two
            if re.search(r"\btwo (\w+ )?%ss\b" % shape, alt):
                assert scene.count(shape) == 2


def test_captions_state_right_counts(train_scenes):
    with_counts = 0
    for scene in train_scenes:
        caption = T.caption(scene, S.scene_rng(SETTINGS, scene)).lower()
        assert 1 <= caption.count(".") <= 2 and caption.endswith(".")
        for shape in scene.shapes():
            assert re.search(r"\b%ss?\b" % shape, caption), (caption, shape)
            match = re.search(r"\b(%s) (?:\w+ )?%ss\b" % ("|".join(T.NUMBER_WORDS[2:]), shape), caption)
            if match:
                with_counts += 1
                assert NUMBER[match.group(1)] == scene.count(shape), (caption, scene.to_dict())
    assert with_counts > len(train_scenes) // 2  # usually with counts


def test_questions_are_gvtbench_records_with_right_answers(train_scenes, tmp_path):
    from lavis_xformer.datasets.benchmarks import load_gvtbench

    records, yes = [], 0
    for scene in train_scenes:
        qs = T.questions(scene, S.scene_rng(SETTINGS, scene))
        oc = [q for q in qs if q["kind"] == "oc"][0]
        assert oc["text_in"] == "How many %ss are there in the image?" % scene.target
        assert int(oc["text_out"]) == scene.count(scene.target)
        assert oc["n_obj_exist"] == len(scene.shapes())
        mci = [q for q in qs if q["kind"] == "mci"][0]
        colour, shape = re.fullmatch(r"Does (\w+) (\w+) exist in the image\?", mci["text_in"]).groups()
        assert mci["text_out"] == ("Yes" if scene.count(shape, colour) else "No")
        yes += mci["text_out"] == "Yes"
        for q in qs:
            if q["kind"] == "colour":
                shape = re.fullmatch(r"What color is the (\w+)\?", q["text_in"]).group(1)
                assert scene.count(shape) == 1 and q["text_out"] in {o.colour for o in scene.objects if o.shape == shape}
            if q["kind"] == "shape":
                colour = re.fullmatch(r"What shape is the (\w+) object\?", q["text_in"]).group(1)
                assert scene.count(colour=colour) == 1
                assert q["text_out"] in {o.shape for o in scene.objects if o.colour == colour}
        records += qs
    assert 0.35 < yes / len(train_scenes) < 0.65
    path = tmp_path / "oc.json"
    path.write_text(json.dumps([q for q in records if q["kind"] == "oc"]))
    loaded = load_gvtbench(str(path))  # the unchanged gvtbench builder's reader
    assert loaded[0]["image"] == "train/images/00000.png"
    assert loaded[0]["question_type"] == "n_obj_exist 1-9"


def test_written_world_has_its_files_and_a_bert_vocab(tmp_path):
    from transformers import BertTokenizer

    settings = S.WorldSettings(splits={"train": 30, "val": 5, "test": 10})
    info = world_build.write_world(settings, str(tmp_path))
    assert info["counts"]["test"]["oc"] == 10
    captions = json.loads((tmp_path / "train" / "captions.json").read_text())
    assert len(captions) == 30 and (tmp_path / "train" / captions[0]["image"]).is_file()
    tokenizer = BertTokenizer(str(tmp_path / "tokenizer" / "vocab.txt"))
    assert tokenizer.vocab_size == world_build.VOCAB_SIZE
    for record in captions:
        assert tokenizer.unk_token_id not in tokenizer(record["caption"]).input_ids
    # every word the generator can write fits the fixed vocabulary
    assert info["words"] < world_build.VOCAB_SIZE - len(world_build.SPECIAL_TOKENS)


def test_report_scores_by_kind_bin_and_hard_case():
    from lavis_xformer.world import report

    def q(kind, answer, case="plain"):
        return {"kind": kind, "text_out": answer, "hard_case": case}

    questions = {"oc": [q("oc", "1"), q("oc", "4", "touching"), q("oc", "7", "touching")],
                 "mci": [q("mci", "Yes"), q("mci", "No", "camouflage")],
                 "attr": [q("colour", "red"), q("shape", "circle")]}
    predictions = {"oc": [{"question_id": 0, "prediction": "1"}, {"question_id": 1, "prediction": "three"},
                          {"question_id": 2, "prediction": "none"}],
                   "mci": [{"question_id": 0, "prediction": "yes"}, {"question_id": 1, "prediction": "Yes"}],
                   "attr": [{"question_id": 0, "prediction": "Red"}, {"question_id": 1, "prediction": "square"}]}
    m = report.score_predictions(questions, predictions)
    assert m["oc_acc"] == round(100 / 3, 2)
    assert m["oc_mae"] == round((0 + 1 + 7) / 3, 3)  # no number counts as 0
    assert (m["mci_acc"], m["colour_acc"], m["shape_acc"]) == (50.0, 100.0, 0.0)
    assert (m["oc_acc[1-2]"], m["oc_acc[3-4]"], m["oc_acc[7-8]"], m["oc_acc[5-6]"]) == (100.0, 0.0, 0.0, None)
    assert (m["oc_acc[touching]"], m["mci_acc[camouflage]"]) == (0.0, 0.0)
    train = {"oc": [q("oc", "4"), q("oc", "4"), q("oc", "1")], "mci": [q("mci", "No")],
             "attr": [q("colour", "red"), q("shape", "square")]}
    b = report.majority_baseline(train, questions)
    assert b["answers"] == {"oc": "4", "mci": "no", "colour": "red", "shape": "square"}
    assert b["oc_acc"] == round(100 / 3, 2) and b["oc_mae"] == round((3 + 0 + 3) / 3, 3)
    assert (b["mci_acc"], b["colour_acc"], b["shape_acc"]) == (50.0, 100.0, 0.0)


def test_stage2_items_are_prompt_target_pairs_and_the_loss_masks_the_prompt(tmp_path):
    """``caption+qa`` items are (prompt, target) pairs with one key set: a question is the
    zero-shot prompt -> its answer, a caption is "" -> the caption; stage 2's VQA path then
    puts the loss on the target tokens only (checked on the labels the OPT receives)."""
    import torch
    from lavis.processors.blip_processors import BlipCaptionProcessor, BlipImageEvalProcessor

    from lavis_xformer.models.generation import VQA_PROMPT
    from lavis_xformer.world.datasets import MiniWorldCaptionDataset

    world_build.write_world(S.WorldSettings(splits={"train": 12, "val": 2, "test": 2}), str(tmp_path))
    data = MiniWorldCaptionDataset(BlipImageEvalProcessor(image_size=64), BlipCaptionProcessor(),
                                   str(tmp_path / "train"), text="caption+qa")
    items = [data[i] for i in range(len(data))]
    assert {frozenset(item) for item in items} == {frozenset({"image", "text_input", "text_output", "image_id"})}
    captions = [item for item in items if item["text_input"] == ""]
    questions = [item for item in items if item["text_input"]]
    assert len(captions) == 12 and len(questions) >= 24
    oc = json.loads((tmp_path / "train" / "oc.json").read_text())[0]
    first = next(item for item in questions if item["image_id"] == int(oc["image_id"][-9:-4])
                 and "how many" in item["text_input"])
    from lavis.processors.blip_processors import BlipQuestionProcessor

    assert first["text_input"] == VQA_PROMPT.format(BlipQuestionProcessor()(oc["text_in"]))
    assert first["text_output"] == oc["text_out"]
    # the data set's own loader over LAVIS's collater keeps both keys
    batch = data.collater(items[:3] + questions[:3])
    assert len(batch["text_output"]) == 6 and len(batch["text_input"]) == 6
    # the model's VQA path: the labels cover the target (and its newline) only
    from lavis_xformer.models.xformer_llm import XFormerOPT

    class Tok:
        """Whitespace tokenizer in the OPT tokenizer's call shape (BOS prepended)."""
        padding_side = "right"

        def __call__(self, texts, return_tensors=None, padding=None, truncation=None, max_length=None):
            single = isinstance(texts, str)
            rows = [["<s>"] + t.replace("\n", " \n").split(" ") for t in ([texts] if single else texts)]
            rows = [[w for w in r if w] for r in rows]
            if single:
                return type("E", (), {"input_ids": list(range(len(rows[0])))})()
            width = max(len(r) for r in rows)
            ids = torch.tensor([[1 + i for i in range(len(r))] + [0] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            enc = type("E", (), {})()
            enc.input_ids, enc.attention_mask = ids, mask
            enc.to = lambda device: enc
            return enc

    seen = {}

    class LLM(torch.nn.Module):
        def get_input_embeddings(self):
            return lambda ids: torch.zeros(*ids.shape, 4)

        def forward(self, inputs_embeds, attention_mask, labels, return_dict):
            seen["labels"] = labels
            return type("O", (), {"loss": torch.tensor(0.0)})()

    model = XFormerOPT.__new__(XFormerOPT)
    torch.nn.Module.__init__(model)
    model.__dict__.update(llm_tokenizer=Tok(), max_txt_len=64, prompt="")
    model.llm_model = LLM()
    text = ["Question: how many circles are there in the image? Short Answer:", ""]
    model.lm_loss(torch.zeros(2, 3, 4), {"text_output": ["5", "a red circle"]}, text)
    labels = seen["labels"][:, 3:]  # after the 3 query positions
    assert (labels[0] != -100).sum() == 2  # "5" and the newline
    assert (labels[1] != -100).sum() == 4  # "a red circle" and the newline
