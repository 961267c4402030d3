"""``xformer_vqa``: zero-shot open-ended VQA by generation, scored by ``run.metric``.

The paper's protocol is the default (run-config keys in brackets): the model's
``predict_answers`` with prompt "Question: {} Short Answer:" [prompt], beam search with 5
beams [num_beams], answers of 1 [min_len] to 10 [max_len] tokens, length penalty 0
[length_penalty], ``inference_method="generate"`` [inference_method].

Per evaluated split, in the run's ``result/`` folder:

* ``<split>_vqa_predictions.json``: one record per question, sorted by question_id, with
  ``question_id``, ``question``, ``answer`` (the ground truth), ``prediction``, ``correct``,
  plus ``question_type`` and ``image_id`` where the dataset gives them;
* ``<split>_vqa_metrics.json``: the accuracy (%) of ``run.metric`` at full precision, as the
  benchmark's reference code computes it (docs/scoring.md), its extra columns, per question
  type, and the majority-answer baseline (always answering the most frequent answer of the
  dataset's train split) next to each; ``agg_metrics`` = accuracy, as in LAVIS's VQA tasks.

A short table is printed at the end, and a progress line (with the running accuracy of this
process) every ``log_freq`` batches. Under torchrun every process answers its share and the
results are merged without duplicates or losses (see ``results.py``).

Datasets need items with ``image``, ``text_input`` (the question) and ``question_id``; with an
``answer`` the task scores (``question_type`` adds the per-type rows), and a dataset attribute
``train_answer_counts`` (a Counter of the train split's answers) gives the baseline. A dataset
without answers (e.g. a test server split) gets the predictions file only. Ground truth that
does not fit in a batch (VQAv2's 10 human answers, GQA's two type labels) is looked up by
``question_id`` in the dataset's ``annotation`` records (keys ``answer``, ``answers``,
``question_type`` (a string or a list of them), ``n_obj_exist``).

``run.metric`` says how answers are scored (``lavis_xformer/scoring.py``): ``exact_match`` (default; GQA,
easy-VQA; LAVIS 1.0.2's GQATask), ``vqa_accuracy`` (VQAv2, OK-VQA; LAVIS 1.0.2's VQAEval),
``oc`` and ``mci`` (GVTBench's count.py and multiclass.py). The metrics JSON
also names the benchmark (``run.benchmark``, default: the dataset's name) and the model
(arch, model_type, fusion), for comparison reports.
"""
import logging
from collections import OrderedDict
from typing import NamedTuple, Optional

import torch
from lavis.common.logger import SmoothedValue
from lavis.common.registry import registry

from lavis_xformer import scoring
from lavis_xformer.models.generation import VQA_PROMPT
from lavis_xformer.tasks.evaluation import XFormerEvalTask


def _question_id(value):
    """Question ids as the data give them: numbers become ints (tensors from the collate
    too), strings stay strings (GQA's ids may have leading zeros)."""
    if isinstance(value, str):
        return value
    return int(value)


def _as_list(value):
    if torch.is_tensor(value):
        return value.tolist()
    return [value] if isinstance(value, (str, int)) else list(value)


class VQASplit(NamedTuple):
    """What the steps of one VQA split need from its dataset (``split_state``)."""
    truth: dict                   # question id -> its annotation record (ground truth)
    answer_list: Optional[list]   # the split's candidate answers (inference_method "rank")


@registry.register_task("xformer_vqa")
class XFormerVQATask(XFormerEvalTask):
    """LAVIS's ``vqa`` task (same run keys) with the paper's zero-shot protocol as defaults,
    runnable on a CPU, merging results across processes, scoring exact match against a
    majority baseline. The loop, the merge and the files are XFormerEvalTask's
    (tasks/evaluation.py). Unlike LAVIS's VQATask it keeps nothing of the datasets: the
    answer list and the ground truth of a split come from that split's dataset
    (``split_state``)."""

    KIND = "vqa"
    ID_KEY = "question_id"
    SKIPPED_WHAT = "questions whose image"
    # unreadable images are skipped and recorded; records are streamed to a per-process JSONL
    # and run.resume_predictions continues an interrupted evaluation (tasks/evaluation.py)
    skips_unreadable_images = True
    streams_predictions = True

    def __init__(self, num_beams=5, max_len=10, min_len=1, evaluate=True,
                 num_ans_candidates=128, inference_method="generate", prompt=VQA_PROMPT,
                 length_penalty=0, log_freq=10, metric="exact_match", benchmark=None,
                 model_info=None):
        if metric not in scoring.METRICS:
            raise ValueError("run.metric=%r is not known; available: %s" % (
                metric, ", ".join(scoring.METRICS)))
        super().__init__(log_freq=log_freq, benchmark=benchmark, model_info=model_info)
        self.num_beams = num_beams
        self.max_len = max_len
        self.min_len = min_len
        self.evaluate = evaluate
        self.inference_method = inference_method
        self.num_ans_candidates = num_ans_candidates
        self.prompt = prompt
        self.length_penalty = length_penalty
        self.metric = metric

    @classmethod
    def setup_task(cls, cfg):
        run_cfg = cfg.run_cfg
        task = cls(
            num_beams=int(run_cfg.get("num_beams", 5)),
            max_len=int(run_cfg.get("max_len", 10)),
            min_len=int(run_cfg.get("min_len", 1)),
            evaluate=run_cfg.get("evaluate", False),
            num_ans_candidates=run_cfg.get("num_ans_candidates", 128),
            inference_method=run_cfg.get("inference_method", "generate"),
            prompt=run_cfg.get("prompt", VQA_PROMPT),
            length_penalty=float(run_cfg.get("length_penalty", 0)),
            metric=run_cfg.get("metric", "exact_match"),
            **cls.common_args(cfg),
        )
        task.setup_resume(cfg)  # run.resume_predictions, checked before anything is built
        return task

    def _has_truth(self, record):
        return "answers" in record if self.metric == "vqa_accuracy" else "answer" in record

    @property
    def protocol(self):
        return OrderedDict([
            ("inference_method", self.inference_method), ("prompt", self.prompt),
            ("num_beams", self.num_beams), ("max_len", self.max_len),
            ("min_len", self.min_len), ("length_penalty", self.length_penalty),
        ])

    def generation_settings(self):
        """The protocol, the candidates of the rank method, and the metric (the records carry
        their score)."""
        return OrderedDict(self.protocol, num_ans_candidates=self.num_ans_candidates,
                           metric=self.metric)

    def split_state(self, model, dataset):
        """The ground truth that does not fit in a batch, by question id (the dataset's
        ``annotation`` records), and the dataset's ``answer_list`` (None without one)."""
        truth = {_question_id(a["question_id"]): a
                 for a in getattr(dataset, "annotation", None) or []
                 if isinstance(a, dict) and "question_id" in a}
        return VQASplit(truth, getattr(dataset, "answer_list", None))

    def sample_ids(self, samples):
        return [_question_id(q) for q in _as_list(samples["question_id"])]

    def valid_step(self, model, samples, state=None):
        truth, answer_list = state if state is not None else ({}, None)
        answers = model.predict_answers(
            samples=samples,
            answer_list=answer_list,
            inference_method=self.inference_method,
            num_beams=self.num_beams,
            max_len=self.max_len,
            min_len=self.min_len,
            num_ans_candidates=self.num_ans_candidates,
            prompt=self.prompt,
            length_penalty=self.length_penalty,
        )
        n = len(answers)
        question_ids = self.sample_ids(samples)
        image_ids = _as_list(samples["image_id"]) if "image_id" in samples else None
        types = _as_list(samples["question_type"]) if "question_type" in samples else None
        questions = _as_list(samples["text_input"])
        truths = _as_list(samples["answer"]) if "answer" in samples else None
        records = []
        for i in range(n):
            ann = truth.get(question_ids[i], {})
            record = OrderedDict(question_id=question_ids[i])
            if image_ids is not None:
                record["image_id"] = image_ids[i]
            elif "image_id" in ann:
                record["image_id"] = ann["image_id"]
            if types is not None:
                record["question_type"] = types[i]
            elif "question_type" in ann:
                record["question_type"] = ann["question_type"]
            if "n_obj_exist" in ann:
                record["n_obj_exist"] = ann["n_obj_exist"]
            record["question"] = questions[i]
            if "answers" in ann:
                record["answers"] = list(ann["answers"])
                record["answer"] = scoring.majority(record["answers"])
            if truths is not None and truths[i] is not None:
                record["answer"] = truths[i]
            elif "answer" in ann:
                record["answer"] = ann["answer"]
            record["prediction"] = answers[i]
            if self._has_truth(record):
                scoring.score_record(record, self.metric)
            records.append(record)
        return records

    def update_progress(self, metric_logger, records):
        """The progress line adds this process's running accuracy."""
        scored = [r["score"] for r in records if "score" in r]
        if scored:
            if "acc" not in metric_logger.meters:  # made at the first score: an empty
                # meter cannot be printed (batches skipped or resumed come first)
                metric_logger.add_meter("acc", SmoothedValue(window_size=1, fmt="{global_avg:.2f}"))
            accuracy = scoring.percent(sum(scored), len(scored), lavis_order=True)
            metric_logger.meters["acc"].update(accuracy, n=len(scored))

    def split_metrics(self, records, skipped, dataset, split_name, epoch):
        expected = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
        mismatch = expected is not None and len(records) + len(skipped) != expected
        if mismatch:  # reported, not raised: the predictions that exist are still written
            logging.error(
                "evaluation of split %r: %d distinct question_ids merged from all processes, "
                "but the split has %d questions (duplicate question_ids in the data, or "
                "questions lost)", split_name, len(records), expected)
        metrics = self.metrics_head(split_name, epoch, self.metric)
        if records and all(self._has_truth(r) for r in records):
            metrics.update(scoring.score(records, getattr(dataset, "train_answer_counts", None),
                                         self.metric))
        else:
            metrics["num_questions"] = len(records)
            logging.warning("split %r has no ground-truth answers: predictions only",
                            split_name)
        if expected is not None:
            metrics["questions_in_split"] = expected
        return metrics

    def scored(self, metrics):
        return "accuracy" in metrics

    def table(self, metrics, split_name):
        title = "[%s, %s] Zero-shot VQA, split %r: %d questions (%s, beams %d, length penalty %g)" % (
            self.benchmark, self.metric, split_name, metrics["num_questions"],
            _prompt_label(self.prompt), self.num_beams, self.length_penalty)
        return scoring.metrics_table(metrics, title)


def _prompt_label(prompt):
    return "prompt %r" % prompt if prompt else "no prompt"

