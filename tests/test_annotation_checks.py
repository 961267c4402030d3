"""Annotation content is checked when a run's files are read, before any model is built
(datasets/checks.py): GVTBench OC/MCI, caption evaluation, retrieval, easy-VQA and the
miniature world's files. A bad entry is one line naming the file, the entry and the field;
only the fields the code reads are demanded."""
import json

import pytest
from omegaconf import OmegaConf

import lavis_xformer  # noqa: F401  (registers the plugin)
from _testlib import REPO, launch_args, lavis_command, run_command, tiny_eval_project
from lavis.common.registry import registry
from lavis_xformer import evaluate
from lavis_xformer.config_keys import ConfigError
from lavis_xformer.datasets import benchmarks, checks, easyvqa
from lavis_xformer.training import launch

EVAL = REPO / "projects" / "xformer" / "eval"


def _oc(i):
    return {"image_id": i + 1, "text_in": "How many dogs are there in the image?", "text_out": "2",
            "n_obj_exist": 3}


def _mci(i):
    return {"image_id": i + 1, "text_in": "Does dog exist in the image?", "text_out": "Yes.",
            "n_obj_exist": 3}


def _karpathy(i):  # as coco_karpathy_test.json: no image_id, the id is in the file name
    return {"image": "val2014/COCO_val2014_%012d.jpg" % (i + 1), "caption": ["a dog", "a cat"]}


def _flickr(i):
    return {"image": "%d.jpg" % i, "caption": ["a dog", "a cat"]}


# project file, dataset key, split, good entry
BENCHMARKS = {
    "oc": (EVAL / "oc_coco.yaml", "gvtbench", "test", _oc),
    "mci": (EVAL / "mci_coco.yaml", "gvtbench", "test", _mci),
    "caption": (EVAL / "coco_caption.yaml", "coco_caption_eval", "test", _karpathy),
    "retrieval": (EVAL / "flickr30k_retrieval.yaml", "flickr30k_eval", "test", _flickr),
}

# benchmark, field of entry 1, its bad value, what the message says
FAILURES = [
    ("oc", "text_out", None, "entry 1: field 'text_out' is null, must be a count"),
    ("oc", "text_out", "many", "entry 1: field 'text_out' is str 'many', must be a count"),
    ("oc", "text_in", None, "entry 1: field 'text_in' is null, must be a string"),
    ("oc", "text_in", 7, "entry 1: field 'text_in' is int 7, must be a string"),
    ("mci", "text_out", None, "entry 1: field 'text_out' is null, must be \"Yes.\" or \"No.\""),
    ("mci", "text_out", "Maybe.", "entry 1: field 'text_out' is str 'Maybe.', must be \"Yes.\" or \"No.\""),
    ("mci", "text_in", None, "entry 1: field 'text_in' is null, must be a string"),
    ("caption", "caption", ["a dog", None], "entry 1: field 'caption' item 1 is null, must be a string"),
    ("caption", "caption", [], "entry 1: field 'caption' is an empty list"),
    ("caption", "image", None, "entry 1: field 'image' is null, must be a string path"),
    ("retrieval", "caption", "a dog", "entry 1: field 'caption' is str 'a dog', must be a non-empty "
                                      "list of strings"),
    ("retrieval", "caption", [None], "entry 1: field 'caption' item 0 is null, must be a string"),
]


def _evaluate_spied(monkeypatch, capsys, argv):
    """evaluate.main(argv) with the runner's build (datasets, model) recorded: (exit status,
    stderr, whether anything was built)."""
    built = []
    monkeypatch.setattr(launch, "build_runner", lambda *args: built.append(args))
    with pytest.raises(SystemExit) as info:
        evaluate.main(argv)
    return info.value.code, capsys.readouterr().err, bool(built)


@pytest.mark.parametrize("benchmark, field, value, message", FAILURES,
                         ids=["%s-%s-%r" % f[:3] for f in FAILURES])
def test_bad_entry_is_one_line_before_any_model(tmp_path, monkeypatch, capsys, benchmark, field,
                                                value, message):
    project, key, split, good = BENCHMARKS[benchmark]
    entries = [good(i) for i in range(3)]
    entries[1][field] = value
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps(entries))
    before = annotations.read_bytes()
    (tmp_path / "images").mkdir()
    cfg = tiny_eval_project(project, tmp_path / "run.yaml", {
        "datasets.%s.build_info.annotations.%s.storage" % (key, split): [str(annotations)],
        "datasets.%s.build_info.images.storage" % key: str(tmp_path / "images"),
        "run.output_dir": str(tmp_path / "out")})
    status, err, built = _evaluate_spied(monkeypatch, capsys, ["--cfg-path", str(cfg)])
    assert status == 2 and not built
    assert err.startswith("error: annotation file %s (dataset '%s', split '%s'): %s" % (
        annotations, key, split, message)), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert annotations.read_bytes() == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("benchmark", sorted(BENCHMARKS))
def test_good_files_pass(tmp_path, benchmark):
    project, key, split, good = BENCHMARKS[benchmark]
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps([good(i) for i in range(3)]))
    (tmp_path / "images").mkdir()
    cfg = tiny_eval_project(project, tmp_path / "run.yaml", {
        "datasets.%s.build_info.annotations.%s.storage" % (key, split): [str(annotations)],
        "datasets.%s.build_info.images.storage" % key: str(tmp_path / "images")})
    assert launch.load_config(launch_args(cfg)).datasets_cfg[key]


def _datasets(name, **build_info):
    """datasets_cfg as launch gives it: the builder's defaults, ``build_info`` keys set."""
    cfg = OmegaConf.load(registry.get_builder_class(name).default_config_path()).datasets[name]
    for dotted, value in build_info.items():
        OmegaConf.update(cfg.build_info, dotted, value, merge=False)
    return OmegaConf.create({name: cfg})


def _refused(datasets, path, message, run_cfg=None):
    with pytest.raises(ConfigError) as info:
        checks.check_datasets(datasets, run_cfg)
    text = str(info.value)
    assert text.startswith("annotation file %s (dataset " % path) and message in text, text
    assert "\n" not in text


def test_gvtbench_published_rows_pass_and_the_metric_picks_the_answer_kind(tmp_path):
    published = json.loads((REPO / "tests" / "data" / "gvtbench_published_rows.json").read_text())
    (tmp_path / "images").mkdir()
    for name, rows in published.items():
        if name.startswith("_"):
            continue
        path = tmp_path / name.replace("/", "_")
        path.write_text(json.dumps(rows))
        datasets = _datasets("gvtbench", **{"annotations.test.storage": [str(path)],
                                            "images.storage": str(tmp_path / "images")})
        metric = "oc" if name.endswith("_oc.json") else "mci"
        checks.check_datasets(datasets, OmegaConf.create({"metric": metric}))
        checks.check_datasets(datasets, OmegaConf.create({"metric": "exact_match"}))
        other = "mci" if metric == "oc" else "oc"  # the other benchmark's answers are refused
        _refused(datasets, path, "entry 0: field 'text_out' is str %r, must be" % rows[0]["text_out"],
                 OmegaConf.create({"metric": other}))


def test_gvtbench_reader_refuses_a_null_answer(tmp_path):
    """tools.score and the dataset read GVTBench files through load_gvtbench: a null answer is
    never turned into the string "None"."""
    path = tmp_path / "mci.json"
    path.write_text(json.dumps([_mci(0), dict(_mci(1), text_out=None)]))
    with pytest.raises(ValueError, match=r"mci.json: entry 1: field 'text_out' is null"):
        benchmarks.load_gvtbench(str(path))


def test_nocaps_coco_format_names_the_list_and_entry(tmp_path):
    path = tmp_path / "nocaps.json"
    path.write_text(json.dumps({"images": [{"id": 0, "file_name": "0.jpg", "domain": "in-domain"}],
                                "annotations": [{"image_id": 0, "caption": "a dog"},
                                                {"image_id": 0, "caption": None}]}))
    (tmp_path / "images").mkdir()
    datasets = _datasets("nocaps_eval", **{"annotations.val.storage": [str(path)],
                                           "images.storage": str(tmp_path / "images")})
    _refused(datasets, path, "annotations entry 1: field 'caption' is null, must be a string")
    path.write_text(json.dumps({"images": [{"id": 0, "file_name": "0.jpg"}]}))
    _refused(datasets, path, "a JSON object without 'annotations' list (COCO format")


def test_lavis_karpathy_val_and_test_need_no_image_id(tmp_path):
    """LAVIS's COCOCapEvalDataset takes the image id from the file name; its train split
    (CaptionDataset) does read image_id."""
    (tmp_path / "images").mkdir()
    files = {}
    for split in ("train", "val", "test"):
        files[split] = tmp_path / ("%s.json" % split)
        files[split].write_text(json.dumps(
            [{"image": "a.jpg", "caption": "a cat", "image_id": 0}] if split == "train"
            else [_karpathy(0), _karpathy(1)]))
    storage = {"annotations.%s.storage" % s: [str(p)] for s, p in files.items()}
    datasets = _datasets("coco_caption", **storage, **{"images.storage": str(tmp_path / "images")})
    checks.check_datasets(datasets)
    files["train"].write_text(json.dumps([{"image": "a.jpg", "caption": "a cat"}]))
    _refused(datasets, files["train"], "entry 0 has no field 'image_id'")


@pytest.mark.parametrize("builder, entry, message", [
    ("easyvqa_vqa", ["why is the sky blue?", "air", 0],
     "entry 1: field 'question' 'why is the sky blue?' (answer 'air') is not a question form"),
    ("easyvqa_vqa", [None, "yes", 0], "entry 1: field 'question' is null, must be a string"),
    ("easyvqa_caption", ["what is this?", "red", 0],
     "entry 1: field 'question' 'what is this?' (answer 'red') is not a question form"),
    ("easyvqa_caption", ["what color is the shape?", "blue", 0],  # entry 0 says red
     "image_id 0 (entries 0, 1): contradicting color answers"),
    ("easyvqa_caption", ["what color is the shape?", None, 0], "entry 1: field 'answer' is null"),
])
def test_easyvqa_questions_the_reader_cannot_read(tmp_path, builder, entry, message):
    path = tmp_path / "test" / "questions.json"
    (tmp_path / "test" / "images").mkdir(parents=True)
    path.write_text(json.dumps([["what color is the shape?", "red", 0], entry]))
    datasets = _datasets(builder, root=str(tmp_path), splits=["test"])
    _refused(datasets, path, message)


def test_the_packaged_easyvqa_questions_pass():
    for builder in (easyvqa.EasyVQACaptionBuilder, easyvqa.EasyVQAVQABuilder):
        for split in ("train", "test"):
            data = easyvqa.read_questions(easyvqa.os.path.join(easyvqa.package_data_root(), split))
            assert builder.annotation_problems("questions.json", data, split) == []


@pytest.mark.parametrize("text, name, entry, message", [
    ("caption", "captions.json", {"image": "images/00001.png", "caption": None, "image_id": 1},
     "entry 1: field 'caption' is null, must be a string"),
    ("caption", "captions.json", {"image": "images/00001.png", "caption": "a dog", "image_id": "1"},
     "entry 1: field 'image_id' is str '1', must be an integer"),
    ("qa", "oc.json", {"image_id": "train/images/00001.png", "text_in": "How many?", "text_out": None},
     "entry 1: field 'text_out' is null, must be a string"),
    ("qa", "mci.json", {"image_id": "train/images/one.png", "text_in": "Is there?", "text_out": "yes"},
     "entry 1: field 'image_id' is str 'train/images/one.png', must be a path ending in <number>.png"),
])
def test_world_files(tmp_path, text, name, entry, message):
    import lavis_xformer.world.datasets  # noqa: F401  (registers mini_world_caption: run.imports)

    split = tmp_path / "train"
    split.mkdir()
    good = {"captions": {"image": "images/00000.png", "caption": "a red circle", "image_id": 0},
            "question": {"image_id": "train/images/00000.png", "text_in": "How many circles are "
                         "there in the image?", "text_out": "1"}}
    (split / "captions.json").write_text(json.dumps([good["captions"]] * 2))
    for stem in ("oc", "mci", "attr"):
        (split / ("%s.json" % stem)).write_text(json.dumps([good["question"]] * 2))
    datasets = _datasets("mini_world_caption", root=str(tmp_path), splits=["train"], text=text)
    checks.check_datasets(datasets)
    entries = json.loads((split / name).read_text())
    entries[1] = entry
    (split / name).write_text(json.dumps(entries))
    _refused(datasets, split / name, message)


def test_sugarcrepe_names_the_entry_by_its_key(tmp_path):
    path = tmp_path / "add_obj.json"
    path.write_text(json.dumps({"0": {"filename": "a.jpg", "caption": "a dog", "negative_caption": None}}))
    (tmp_path / "images").mkdir()
    datasets = _datasets("sugarcrepe_eval", **{"annotations.test.storage": [str(path)],
                                               "images.storage": str(tmp_path / "images")})
    _refused(datasets, path, "entry '0': field 'negative_caption' is null, must be a string")


@pytest.mark.slow
def test_cli_evaluate_stops_on_a_null_oc_answer(tmp_path):
    """python -m lavis.evaluate itself: exit 2, one line, nothing built or written."""
    annotations = tmp_path / "coco_oc.json"
    annotations.write_text(json.dumps([_oc(0), dict(_oc(1), text_out=None)]))
    (tmp_path / "images").mkdir()
    cfg = tiny_eval_project(EVAL / "oc_coco.yaml", tmp_path / "oc.yaml", {
        "datasets.gvtbench.build_info.annotations.test.storage": [str(annotations)],
        "datasets.gvtbench.build_info.images.storage": str(tmp_path / "images")})
    result = run_command(lavis_command(cfg, "run.output_dir=%s" % (tmp_path / "out"),
                                       script="lavis.evaluate"), tmp_path, expect=2, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.stderr and errors == [
        "error: annotation file %s (dataset 'gvtbench', split 'test'): entry 1: field 'text_out' "
        "is null, must be a count (an integer, or a string of one such as \"3\"); fix or drop "
        "those entries" % annotations]
    assert "Building" not in result.stdout and not (tmp_path / "out").exists()
