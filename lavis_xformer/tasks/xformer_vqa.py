"""``xformer_vqa``: zero-shot open-ended VQA by generation, scored by exact match.

The paper's protocol is the default (run-config keys in brackets): the model's
``predict_answers`` with prompt "Question: {} Short Answer:" [prompt], beam search with 5
beams [num_beams], answers of 1 [min_len] to 10 [max_len] tokens, length penalty 0
[length_penalty], ``inference_method="generate"`` [inference_method].

Per evaluated split, in the run's ``result/`` folder:

* ``<split>_vqa_predictions.json``: one record per question, sorted by question_id, with
  ``question_id``, ``question``, ``answer`` (the ground truth), ``prediction``, ``correct``,
  plus ``question_type`` and ``image_id`` where the dataset gives them;
* ``<split>_vqa_metrics.json``: exact-match accuracy (%) after VQA's answer normalisation,
  per question type, and the majority-answer baseline (always answering the most frequent
  answer of the dataset's train split) next to each; ``agg_metrics`` = accuracy.

A short table is printed at the end, and a progress line (with the running accuracy of this
process) every ``log_freq`` batches. Under torchrun every process answers its share and the
results are merged without duplicates or losses (see ``results.py``).

Datasets need items with ``image``, ``text_input`` (the question) and ``question_id``; with an
``answer`` the task scores (``question_type`` adds the per-type rows), and a dataset attribute
``train_answer_counts`` (a Counter of the train split's answers) gives the baseline. A dataset
without answers (e.g. a test server split) gets the predictions file only.
"""
import json
import logging
import os
from collections import Counter, OrderedDict

import torch
from lavis.common.dist_utils import is_main_process
from lavis.common.logger import MetricLogger, SmoothedValue
from lavis.common.registry import registry
from lavis.common.vqa_tools.vqa_eval import VQAEval
from lavis.datasets.data_utils import prepare_sample
from lavis.tasks.vqa import VQATask

from lavis_xformer import compat
from lavis_xformer.models.xformer_llm import VQA_PROMPT
from lavis_xformer.tasks.results import format_table, gather_results, write_json

_VQA_EVAL = VQAEval()  # only its answer normalisation (no annotations needed)


def normalize_answer(text):
    """VQA's answer normalisation (the official evaluation's, as LAVIS ships it): whitespace,
    lowercase, punctuation (kept inside numbers such as 2.5 or 1,000), number words to digits,
    articles (a, an, the) dropped, common contractions restored."""
    text = " ".join(str(text).replace("\n", " ").replace("\t", " ").split())
    text = _VQA_EVAL.processPunctuation(text)
    text = _VQA_EVAL.processDigitArticle(text)
    return " ".join(text.split())


def is_correct(prediction, answer):
    return normalize_answer(prediction) == normalize_answer(answer)


def _percent(hits, total):
    return round(100.0 * hits / total, 2) if total else 0.0


def majority_answer(answer_counts):
    """(most frequent answer, its count, total) of a Counter; None when empty or None."""
    if not answer_counts:
        return None
    answer, count = Counter(answer_counts).most_common(1)[0]
    return answer, count, sum(answer_counts.values())


def score(records, answer_counts=None):
    """Metrics of records carrying ``prediction`` and ``answer`` (and maybe
    ``question_type``): accuracy (%), per question type, majority-answer baseline."""
    majority = majority_answer(answer_counts)
    groups = OrderedDict([("all", records)])
    for qtype in sorted({r["question_type"] for r in records if "question_type" in r}):
        groups[qtype] = [r for r in records if r.get("question_type") == qtype]

    per_type = OrderedDict()
    for name, group in groups.items():
        row = {"num_questions": len(group),
               "accuracy": _percent(sum(is_correct(r["prediction"], r["answer"]) for r in group),
                                    len(group))}
        if majority is not None:
            row["majority_baseline"] = _percent(
                sum(is_correct(majority[0], r["answer"]) for r in group), len(group))
        per_type[name] = row

    metrics = OrderedDict()
    metrics["num_questions"] = len(records)
    metrics["accuracy"] = per_type["all"]["accuracy"]
    metrics["agg_metrics"] = metrics["accuracy"]
    if majority is not None:
        answer, count, total = majority
        metrics["majority_baseline"] = OrderedDict([
            ("answer", answer),
            ("accuracy", per_type["all"]["majority_baseline"]),
            ("source", "the most frequent answer of the train split (%d of %d questions)"
             % (count, total)),
        ])
    del per_type["all"]
    if per_type:
        metrics["per_question_type"] = per_type
    return metrics


def metrics_table(metrics, title):
    """The printed summary: one row for all questions, one per question type."""
    baseline = metrics.get("majority_baseline")
    header = ["question type", "questions", "accuracy %"]
    if baseline:
        header.append('majority "%s" %%' % baseline["answer"])
    rows = [["all", metrics["num_questions"], "%.2f" % metrics["accuracy"]]
            + (["%.2f" % baseline["accuracy"]] if baseline else [])]
    for name, row in metrics.get("per_question_type", {}).items():
        rows.append([name, row["num_questions"], "%.2f" % row["accuracy"]]
                    + (["%.2f" % row["majority_baseline"]] if baseline else []))
    return title + "\n" + format_table(header, rows)


def _as_list(value):
    if torch.is_tensor(value):
        return value.tolist()
    return [value] if isinstance(value, (str, int)) else list(value)


@registry.register_task("xformer_vqa")
class XFormerVQATask(VQATask):
    """LAVIS's ``vqa`` task with the paper's zero-shot protocol as defaults, runnable on a
    CPU, merging results across processes, scoring exact match against a majority baseline."""

    def __init__(self, num_beams=5, max_len=10, min_len=1, evaluate=True,
                 num_ans_candidates=128, inference_method="generate", prompt=VQA_PROMPT,
                 length_penalty=0, log_freq=10):
        super().__init__(num_beams=num_beams, max_len=max_len, min_len=min_len,
                         evaluate=evaluate, num_ans_candidates=num_ans_candidates,
                         inference_method=inference_method, prompt=prompt)
        self.length_penalty = length_penalty
        self.log_freq = max(1, int(log_freq))
        self._current_dataset = None

    @classmethod
    def setup_task(cls, cfg):
        run_cfg = cfg.run_cfg
        return cls(
            num_beams=int(run_cfg.get("num_beams", 5)),
            max_len=int(run_cfg.get("max_len", 10)),
            min_len=int(run_cfg.get("min_len", 1)),
            evaluate=run_cfg.get("evaluate", False),
            num_ans_candidates=run_cfg.get("num_ans_candidates", 128),
            inference_method=run_cfg.get("inference_method", "generate"),
            prompt=run_cfg.get("prompt", VQA_PROMPT),
            length_penalty=float(run_cfg.get("length_penalty", 0)),
            log_freq=run_cfg.get("log_freq", 10),
        )

    @property
    def protocol(self):
        return OrderedDict([
            ("inference_method", self.inference_method), ("prompt", self.prompt),
            ("num_beams", self.num_beams), ("max_len", self.max_len),
            ("min_len", self.min_len), ("length_penalty", self.length_penalty),
        ])

    # The runner calls before_evaluation(model, dataset) and then evaluation(model, loader)
    # once per split; the dataset is kept for its size and its train answer counts.
    def before_evaluation(self, model, dataset, **kwargs):
        super().before_evaluation(model, dataset, **kwargs)
        self._current_dataset = dataset

    def valid_step(self, model, samples):
        answers = model.predict_answers(
            samples=samples,
            answer_list=self.answer_list,
            inference_method=self.inference_method,
            num_beams=self.num_beams,
            max_len=self.max_len,
            min_len=self.min_len,
            num_ans_candidates=self.num_ans_candidates,
            prompt=self.prompt,
            length_penalty=self.length_penalty,
        )
        n = len(answers)
        question_ids = [int(q) for q in _as_list(samples["question_id"])]
        image_ids = _as_list(samples["image_id"]) if "image_id" in samples else None
        types = _as_list(samples["question_type"]) if "question_type" in samples else None
        questions = _as_list(samples["text_input"])
        truths = _as_list(samples["answer"]) if "answer" in samples else None
        records = []
        for i in range(n):
            record = OrderedDict(question_id=question_ids[i])
            if image_ids is not None:
                record["image_id"] = image_ids[i]
            if types is not None:
                record["question_type"] = types[i]
            record["question"] = questions[i]
            if truths is not None:
                record["answer"] = truths[i]
            record["prediction"] = answers[i]
            if truths is not None:
                record["correct"] = is_correct(answers[i], truths[i])
            records.append(record)
        return records

    # Defect worked around: BaseTask.evaluation, which RunnerBase.eval_epoch calls without
    # cuda_enabled, defaults to moving every batch to CUDA, so evaluation fails on a CPU.
    # Batches go to the model's device here; the progress line adds the running accuracy.
    @torch.no_grad()
    def evaluation(self, model, data_loader, cuda_enabled=None):
        if cuda_enabled is None:
            cuda_enabled = next(model.parameters()).is_cuda
        metric_logger = MetricLogger(delimiter="  ")
        metric_logger.add_meter("acc", SmoothedValue(window_size=1, fmt="{global_avg:.2f}"))
        header = "Evaluation"
        results = []
        for samples in metric_logger.log_every(data_loader, self.log_freq, header):
            samples = prepare_sample(samples, cuda_enabled=cuda_enabled)
            records = self.valid_step(model=model, samples=samples)
            results.extend(records)
            scored = [r["correct"] for r in records if "correct" in r]
            if scored:
                metric_logger.meters["acc"].update(_percent(sum(scored), len(scored)),
                                                   n=len(scored))
        compat.barrier()
        return results

    def after_evaluation(self, val_result, split_name, epoch=None, **kwargs):
        records = gather_results(val_result, key="question_id")
        dataset = self._current_dataset
        expected = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
        mismatch = expected is not None and len(records) != expected
        if mismatch:  # reported, not raised: the predictions that exist are still written
            logging.error(
                "evaluation of split %r: %d distinct question_ids merged from all processes, "
                "but the split has %d questions (duplicate question_ids in the data, or "
                "questions lost)", split_name, len(records), expected)

        result_dir = registry.get_path("result_dir")
        predictions_file = os.path.join(result_dir, "%s_vqa_predictions.json" % split_name)
        metrics = OrderedDict(split=split_name)
        if isinstance(epoch, int):  # evaluation-only runs pass "best"
            metrics["epoch"] = epoch
        if records and all("answer" in r for r in records):
            metrics.update(score(records, getattr(dataset, "train_answer_counts", None)))
        else:
            metrics["num_questions"] = len(records)
            logging.warning("split %r has no ground-truth answers: predictions only",
                            split_name)
        if mismatch:
            metrics["questions_in_split"] = expected
        metrics["protocol"] = self.protocol
        metrics["predictions_file"] = predictions_file

        if is_main_process():
            write_json(records, predictions_file)
            metrics_file = os.path.join(result_dir, "%s_vqa_metrics.json" % split_name)
            write_json(metrics, metrics_file)
            if "accuracy" in metrics:
                # one line per evaluation, as LAVIS's VQA task keeps
                with open(os.path.join(registry.get_path("output_dir"), "evaluate.txt"), "a") as f:
                    f.write(json.dumps({k: metrics[k] for k in ("split", "epoch", "agg_metrics")
                                        if k in metrics}) + "\n")
                title = "Zero-shot VQA, split %r: %d questions (%s, beams %d, length penalty %g)" % (
                    split_name, metrics["num_questions"], _prompt_label(self.prompt),
                    self.num_beams, self.length_penalty)
                print(metrics_table(metrics, title))
            print("predictions: %s\nmetrics: %s" % (predictions_file, metrics_file))
        compat.barrier()  # the files exist on every rank's return
        return dict(metrics)


def _prompt_label(prompt):
    return "prompt %r" % prompt if prompt else "no prompt"


__all__ = ["XFormerVQATask", "normalize_answer", "is_correct", "score", "metrics_table",
           "majority_answer"]
