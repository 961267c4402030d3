"""The stage-2 pipeline on the CPU: tiny stage 1 -> tiny stage 2 from stage 1's `latest`
checkpoint -> zero-shot VQA evaluation on held-out easy-VQA questions, in one process and
under torchrun (two gloo processes, same predictions, no duplicated or lost question); the
launch-time check for a missing stage-1 checkpoint; the `latest` link; VQA answer scoring."""
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from _testlib import REPO, lavis_command, launch_args, run_command
import torch

import lavis_xformer  # noqa: F401  (registers builders, models, tasks, runner)
from lavis.common.registry import registry
from lavis_xformer.datasets import easyvqa
from lavis_xformer.training.run_files import load_run_file
from lavis_xformer.config_keys import ConfigError
from lavis_xformer.training import launch
from lavis_xformer.training.runner import point_latest
from lavis_xformer.scoring import metrics_table, normalize_answer, score

PROJECTS = REPO / "projects" / "xformer"
TINY1, TINY2, TINY_VQA = (PROJECTS / "tiny" / n for n in ("stage1.yaml", "stage2.yaml", "vqa.yaml"))
# odd, so that under two processes the sampler pads one of them with a repeated question;
# the first 5 test questions cover all three question types
QUESTIONS = 5


def _train_options(output_dir, pretrained=None):
    options = ["run.output_dir=%s" % output_dir, "run.max_epoch=1", "run.log_freq=1",
               "run.batch_size_train=2", "datasets.easyvqa_caption.build_info.max_images=2",
               "datasets.easyvqa_caption.build_info.splits=[train]"]
    return options + (["model.pretrained=%s" % pretrained] if pretrained else [])


def _vqa_options(output_dir, pretrained):
    return ["run.output_dir=%s" % output_dir, "model.pretrained=%s" % pretrained,
            "datasets.easyvqa_vqa.build_info.max_questions=%d" % QUESTIONS,
            "run.batch_size_eval=2", "run.log_freq=1"]


def _results(output_dir):
    result_dir = Path(output_dir) / "latest" / "result"
    with open(result_dir / "test_vqa_predictions.json") as f:
        predictions = json.load(f)
    with open(result_dir / "test_vqa_metrics.json") as f:
        metrics = json.load(f)
    return predictions, metrics


# --- scoring --------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, normalised", [
    ("Blue", "blue"), (" yes\n", "yes"), ("A circle.", "circle"), ("the Red one!", "red 1"),
    ("an  apple", "apple"), ("two", "2"), ("isnt", "isn't"), ("2.5", "2.5"), ("rectangle?", "rectangle"),
])
def test_answers_are_normalised_as_vqa_does(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_scores_per_question_type_with_majority_baseline():
    records = [
        {"question_type": "yes/no", "answer": "yes", "prediction": "Yes."},
        {"question_type": "yes/no", "answer": "no", "prediction": "yes"},
        {"question_type": "color", "answer": "blue", "prediction": "a blue"},
        {"question_type": "shape", "answer": "circle", "prediction": "a blue circle"},
    ]
    metrics = score(records, Counter({"yes": 5, "no": 4, "blue": 1}))
    assert metrics["num_questions"] == 4
    assert metrics["accuracy"] == metrics["agg_metrics"] == 50.0
    assert metrics["majority_baseline"]["answer"] == "yes"
    assert metrics["majority_baseline"]["accuracy"] == 25.0
    assert "5 of 10" in metrics["majority_baseline"]["source"]
    per_type = metrics["per_question_type"]
    assert per_type["yes/no"] == {"num_questions": 2, "accuracy": 50.0, "accuracy_normalised": 50.0,
                                  "majority_baseline": 50.0}
    assert per_type["color"]["accuracy"] == 100.0 and per_type["shape"]["accuracy"] == 0.0
    table = metrics_table(metrics, "title").splitlines()
    assert table[1].split() == ["question", "type", "questions", "accuracy", "%", "both", "normalised",
                                "%", "majority", '"yes"', "%"]
    assert table[3].split() == ["all", "4", "50.00", "50.00", "25.00"]
    # without train answers there is no baseline, and the scores stay
    assert "majority_baseline" not in score(records) and score(records)["accuracy"] == 50.0


def test_easyvqa_questions_keep_ids_types_and_train_answers():
    builder = registry.get_builder_class("easyvqa_vqa")()
    builder.config.build_info.max_questions = 12
    datasets = builder.build_datasets()
    test = datasets["test"]
    assert len(test) == 12 and len(datasets["train"]) == 12
    item = test[3]
    assert set(item) == {"image", "text_input", "question_id", "image_id", "answer", "question_type"}
    assert item["text_input"] == "does the image contain a circle?"  # blip_question: lowercase
    assert (item["question_id"], item["image_id"], item["answer"], item["question_type"]) == (
        3, 0, "no", "yes/no")
    assert tuple(item["image"].shape) == (3, 64, 64)
    assert {a["question_type"] for a in test.annotation} == {"yes/no", "color", "shape"}
    # the baseline counts the whole train split, whatever is kept
    assert sum(test.train_answer_counts.values()) == 38575
    assert test.train_answer_counts.most_common(1)[0] == ("yes", 14229)
    every = easyvqa.load_questions(os.path.join(easyvqa.package_data_root(), "test"))
    assert len(every) == 9673 and len({q["question_id"] for q in every}) == 9673
    first_two = [q["question_id"] for q in every if q["image_id"] < 2]  # grouped by image
    assert [q["question_id"] for q in easyvqa.load_questions(
        os.path.join(easyvqa.package_data_root(), "test"), max_images=2)] == first_two
    assert first_two == list(range(len(first_two)))


# --- launch-time checks and project files ---------------------------------------------------

def test_missing_stage1_checkpoint_stops_before_building(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(TINY2))
    message = str(info.value)
    path = tmp_path / "output" / "xformer" / "tiny_stage1" / "latest" / "checkpoint_0.pth"
    assert "model.pretrained: no checkpoint at %s" % path in message
    assert ("run projects/xformer/tiny/stage1.yaml first (python -m lavis.train --cfg-path "
            "projects/xformer/tiny/stage1.yaml) or point model.pretrained at its checkpoint") in message
    assert "\n" not in message

    # the paper-size project names its stage 1 the same way, before any data check
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(PROJECTS / "stage2.yaml"))
    message = str(info.value)
    assert str(tmp_path / "output/xformer/stage1/latest/checkpoint_8.pth") in message
    assert "python -m lavis.train --cfg-path projects/xformer/stage1.yaml" in message

    # a stage 1 cut short: the message lists what is there
    job = tmp_path / "output" / "xformer" / "tiny_stage1" / "20260101000"
    job.mkdir(parents=True)
    torch.save({"model": {}}, job / "checkpoint_0.pth")
    assert point_latest(job)
    with pytest.raises(ConfigError, match="that folder holds checkpoint_0.pth"):
        launch.load_config(launch_args(TINY2, "model.pretrained=output/xformer/tiny_stage1/latest/checkpoint_3.pth"))
    # without a run.requires hint
    with pytest.raises(ConfigError, match="run the previous stage first or point model.pretrained"):
        launch.load_config(launch_args(TINY2, "run.requires=null", "model.pretrained=nowhere/ckpt.pth"))
    cfg = launch.load_config(launch_args(TINY2))  # now it exists
    assert cfg.model_cfg.pretrained == "output/xformer/tiny_stage1/latest/checkpoint_0.pth"

    # the command line: exit status 2 and the one message, no traceback
    from lavis_xformer import evaluate

    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--cfg-path", str(TINY_VQA)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.pretrained: no checkpoint at ")
    assert "python -m lavis.train --cfg-path projects/xformer/tiny/stage2.yaml" in err


def test_stage2_projects_carry_the_papers_setup(tmp_path):
    ckpt = tmp_path / "checkpoint_8.pth"
    ckpt.write_bytes(b"")
    for name, model_type, out in (("stage2.yaml", "pretrain_opt2.7b", "stage2_opt2.7b"),
                                  ("stage2_opt6.7b.yaml", "pretrain_opt6.7b", "stage2_opt6.7b")):
        # past the checkpoint check, the missing 14M data are the next (and only) error
        with pytest.raises(ConfigError, match="data for this run is missing") as info:
            launch.load_config(launch_args(PROJECTS / name, "model.pretrained=%s" % ckpt))
        assert "model.pretrained" not in str(info.value)
        raw = load_run_file(str(PROJECTS / name))
        assert raw.model.arch == "xformer_opt" and raw.model.model_type == model_type
        assert raw.model.pretrained == "output/xformer/stage1/latest/checkpoint_8.pth"
        assert set(raw.datasets) == set(load_run_file(str(PROJECTS / "stage1.yaml")).datasets)
        run = raw.run
        assert (run.task, run.runner, run.max_epoch, run.lr_sched) == (
            "xformer_pretrain", "runner_xformer", 1, "linear_warmup_cosine_step_lr")
        assert (run.init_lr, run.min_lr, run.warmup_lr, run.warmup_steps) == (1e-4, 5e-5, 1e-6, 2000)
        assert (run.weight_decay, run.beta2, run.amp, run.batch_size_train) == (0.05, 0.98, True, 64)
        assert run.output_dir == "output/xformer/%s" % out
        for dataset in raw.datasets.values():
            assert dataset.vis_processor.train.name == "blip2_image_train"
            assert dataset.vis_processor.train.image_size == 224


def test_latest_link_is_relative_and_replaced(tmp_path):
    first, second = tmp_path / "202601010000", tmp_path / "202601010010"
    first.mkdir()
    second.mkdir()
    assert point_latest(first)
    assert os.readlink(tmp_path / "latest") == first.name
    assert point_latest(second)
    assert os.readlink(tmp_path / "latest") == second.name
    assert sorted(os.listdir(tmp_path)) == [first.name, second.name, "latest"]  # no temporary left
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "latest").mkdir()  # a real directory is left alone, with a warning
    (tmp_path / "other" / "job").mkdir()
    assert not point_latest(tmp_path / "other" / "job")
    assert sorted(os.listdir(tmp_path / "other")) == ["job", "latest"]


# --- end to end -----------------------------------------------------------------------------

@pytest.mark.slow
def test_stage1_then_stage2_then_vqa_in_one_process_and_under_torchrun(tmp_path, monkeypatch, capsys):
    from lavis_xformer import evaluate, train

    monkeypatch.chdir(tmp_path)
    # stage 1 (one step), then stage 2 from stage 1's `latest` checkpoint (one step)
    train.main(["--cfg-path", str(TINY1), "--options", *_train_options("out/s1")])
    latest = tmp_path / "out" / "s1" / "latest"
    assert latest.is_symlink() and (latest / "checkpoint_0.pth").is_file()
    train.main(["--cfg-path", str(TINY2), "--options",
                *_train_options("out/s2", pretrained="out/s1/latest/checkpoint_0.pth")])
    out = capsys.readouterr().out
    assert "Train: data epoch: [0]  [0/1]" in out and " loss_lm: " in out
    stage2 = torch.load(tmp_path / "out" / "s2" / "latest" / "checkpoint_0.pth", map_location="cpu")
    assert stage2["config"]["model"]["arch"] == "xformer_opt"
    assert any(k.startswith("llm_proj.") for k in stage2["model"])

    # zero-shot VQA on held-out questions, one process
    logs = evaluate.main(["--cfg-path", str(TINY_VQA), "--options",
                          *_vqa_options("out/vqa", "out/s2/latest/checkpoint_0.pth")])
    out = capsys.readouterr().out
    predictions, metrics = _results(tmp_path / "out" / "vqa")
    assert len(predictions) == QUESTIONS
    assert [p["question_id"] for p in predictions] == list(range(QUESTIONS))
    for p in predictions:
        assert {"question_id", "image_id", "question_type", "question", "answer", "prediction",
                "correct"} <= set(p)
        assert isinstance(p["prediction"], str)
    assert predictions[3]["question"] == "does the image contain a circle?"
    assert predictions[3]["answer"] == "no"
    assert metrics["num_questions"] == QUESTIONS
    assert 0 <= metrics["accuracy"] <= 100 and metrics["agg_metrics"] == metrics["accuracy"]
    assert metrics["majority_baseline"]["answer"] == "yes"
    assert set(metrics["per_question_type"]) == {"yes/no", "color", "shape"}
    assert metrics["protocol"] == {"inference_method": "generate", "prompt": "Question: {} Short Answer:",
                                   "num_beams": 5, "max_len": 10, "min_len": 1, "length_penalty": 0.0}
    assert logs["test"]["agg_metrics"] == metrics["accuracy"]
    assert "Evaluation  [0/3]" in out  # progress
    assert "Zero-shot VQA, split 'test': %d questions" % QUESTIONS in out
    assert 'majority "yes" %' in out

    # the same evaluation under torchrun, two gloo processes: same predictions, each once
    output = run_command(lavis_command(TINY_VQA, *_vqa_options("out/vqa2", "out/s2/latest/checkpoint_0.pth"),
                                       script="lavis.evaluate", processes=2), tmp_path).output
    assert "distributed init (rank 1, world 2, backend gloo)" in output
    assert output.count("Zero-shot VQA, split 'test'") == 1  # printed by rank 0 only
    distributed, distributed_metrics = _results(tmp_path / "out" / "vqa2")
    assert [p["question_id"] for p in distributed] == list(range(QUESTIONS))
    assert distributed == predictions
    for key in ("accuracy", "majority_baseline", "per_question_type"):
        assert distributed_metrics[key] == metrics[key]
