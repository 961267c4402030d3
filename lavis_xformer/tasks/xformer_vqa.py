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

``run.metric`` says how answers are scored (see metrics.py): ``exact_match`` (default; GQA,
easy-VQA; LAVIS 1.0.2's GQATask), ``vqa_accuracy`` (VQAv2, OK-VQA; LAVIS 1.0.2's VQAEval),
``oc`` and ``mci`` (GVTBench's count.py and multiclass.py). The metrics JSON
also names the benchmark (``run.benchmark``, default: the dataset's name) and the model
(arch, model_type, fusion), for comparison reports.
"""
import logging
import os
from collections import Counter, OrderedDict

import torch
from lavis.common.dist_utils import is_main_process
from lavis.common.logger import MetricLogger, SmoothedValue
from lavis.common.registry import registry
from lavis.datasets.data_utils import prepare_sample
from lavis.tasks.vqa import VQATask

from lavis_xformer import compat
from lavis_xformer.models.generation import VQA_PROMPT
from lavis_xformer.tasks import metrics as bench_metrics
from lavis_xformer.tasks.metrics import normalize_answer  # noqa: F401  (re-exported)
from lavis_xformer.datasets.skipping import pop_skipped
from lavis_xformer.tasks.results import (
    PredictionLog, append_evaluate_line, format_table, gather_results, gather_skipped,
    select_samples, write_json)


def is_correct(prediction, answer):
    return normalize_answer(prediction) == normalize_answer(answer)


def _percent(hits, total):
    return hits / total * 100 if total else 0.0


def majority_answer(answer_counts):
    """(most frequent answer, its count, total) of a Counter; None when empty or None."""
    if not answer_counts:
        return None
    answer, count = Counter(answer_counts).most_common(1)[0]
    return answer, count, sum(answer_counts.values())


def _types_of(record, metric=None):
    if metric == "oc":  # GVTBench's count.py bins by the true count, in steps of 3
        return [bench_metrics.count_bin(record["true_count"])]
    qtype = record.get("question_type")
    if qtype is None:
        return []
    return [qtype] if isinstance(qtype, str) else list(qtype)


def _baseline_score(answer, record, metric):
    if metric == "vqa_accuracy":
        return bench_metrics.vqa_accuracy(answer, record["answers"])
    return bench_metrics.lavis_gqa_correct(answer, record["answer"])


def score(records, answer_counts=None, metric="exact_match"):
    """Metrics of records carrying ``prediction`` and the ground truth (``answer``, or
    ``answers`` for vqa_accuracy; maybe ``question_type``, a string or a list): accuracy (%)
    and the metric's extra columns (metrics.py), per question type (OC: per bin of the true
    count), and, for exact_match and vqa_accuracy given the train split's answer counts, the
    majority-answer baseline. Full precision; ``agg_metrics`` is the headline accuracy, as
    LAVIS's VQATask and GQATask set it."""
    lavis_vqa = None
    if metric == "vqa_accuracy":  # one run of LAVIS's VQAEval gives the headline numbers
        lavis_vqa = bench_metrics.score_vqa_records(records)
    for record in records:
        if "score" not in record:
            bench_metrics.score_record(record, metric)
    majority = majority_answer(answer_counts) if metric in ("exact_match", "vqa_accuracy") else None
    groups = OrderedDict([("all", records)])
    for qtype in sorted({t for r in records for t in _types_of(r, metric)},
                        key=lambda t: (len(t), t) if metric == "oc" else (0, t)):
        groups[qtype] = [r for r in records if qtype in _types_of(r, metric)]

    per_type = OrderedDict()
    for name, group in groups.items():
        row = bench_metrics.summarize(group, metric)
        if lavis_vqa is not None:  # VQAEval's own overall and per-answer-type accuracy
            row["accuracy"] = lavis_vqa[0] if name == "all" else lavis_vqa[1].get(name, row["accuracy"])
        if majority is not None:
            row["majority_baseline"] = _percent(
                sum(_baseline_score(majority[0], r, metric) for r in group), len(group))
        per_type[name] = row

    metrics = OrderedDict()
    overall = per_type.pop("all")
    metrics["num_questions"] = overall.pop("num_questions")
    metrics["accuracy"] = overall.pop("accuracy")
    metrics["agg_metrics"] = metrics["accuracy"]
    baseline_accuracy = overall.pop("majority_baseline", None)
    metrics.update(overall)  # the metric's other columns (metrics.summarize)
    if majority is not None:
        answer, count, total = majority
        metrics["majority_baseline"] = OrderedDict([
            ("answer", answer),
            ("accuracy", baseline_accuracy),
            ("source", "the most frequent answer of the train split (%d of %d questions)"
             % (count, total)),
        ])
    if per_type:
        metrics["per_question_type"] = per_type
    return metrics


_EXTRA_COLUMNS = (("mae", "MAE"), ("rmse", "RMSE"), ("accuracy_strict", "strict yes/no %"),
                  ("accuracy_normalised", "both normalised %"), ("accuracy_official", "official VQA %"),
                  ("accuracy_parsed", "parsed %"), ("mae_parsed", "parsed MAE"),
                  ("rmse_parsed", "parsed RMSE"), ("num_unparsed", "no number"))


def metrics_table(metrics, title):
    """The printed summary: one row for all questions, one per question type."""
    baseline = metrics.get("majority_baseline")
    extras = [(k, label) for k, label in _EXTRA_COLUMNS if k in metrics]
    header = ["question type", "questions", "accuracy %"] + [label for _, label in extras]
    if baseline:
        header.append('majority "%s" %%' % baseline["answer"])

    def cells(row, base):
        out = ["%.2f" % row["accuracy"]]
        out += [("%.2f" % row[k]) if isinstance(row[k], float) else str(row[k]) for k, _ in extras]
        return out + (["%.2f" % base] if baseline else [])

    rows = [["all", metrics["num_questions"]] + cells(metrics, baseline["accuracy"] if baseline else None)]
    for name, row in metrics.get("per_question_type", {}).items():
        rows.append([name, row["num_questions"]] + cells(row, row.get("majority_baseline")))
    return title + "\n" + format_table(header, rows)


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


@registry.register_task("xformer_vqa")
class XFormerVQATask(VQATask):
    """LAVIS's ``vqa`` task with the paper's zero-shot protocol as defaults, runnable on a
    CPU, merging results across processes, scoring exact match against a majority baseline."""

    def __init__(self, num_beams=5, max_len=10, min_len=1, evaluate=True,
                 num_ans_candidates=128, inference_method="generate", prompt=VQA_PROMPT,
                 length_penalty=0, log_freq=10, metric="exact_match", benchmark=None,
                 model_info=None):
        if metric not in bench_metrics.METRICS:
            raise ValueError("run.metric=%r is not known; available: %s" % (
                metric, ", ".join(bench_metrics.METRICS)))
        super().__init__(num_beams=num_beams, max_len=max_len, min_len=min_len,
                         evaluate=evaluate, num_ans_candidates=num_ans_candidates,
                         inference_method=inference_method, prompt=prompt)
        self.length_penalty = length_penalty
        self.log_freq = max(1, int(log_freq))
        self.metric = metric
        self.benchmark = benchmark
        self.model_info = model_info or OrderedDict()
        self._current_dataset = None
        self._truth = {}
        self.resume_predictions = None  # run.resume_predictions (setup_task)

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
            log_freq=run_cfg.get("log_freq", 10),
            metric=run_cfg.get("metric", "exact_match"),
            benchmark=run_cfg.get("benchmark", None) or "+".join(cfg.datasets_cfg.keys()),
            model_info=model_info(cfg.model_cfg),
        )
        task.resume_predictions = run_cfg.get("resume_predictions", None)
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

    # The runner calls before_evaluation(model, dataset) and then evaluation(model, loader)
    # once per split; the dataset is kept for its size and its train answer counts.
    def before_evaluation(self, model, dataset, **kwargs):
        super().before_evaluation(model, dataset, **kwargs)
        self._current_dataset = dataset
        self._truth = {_question_id(a["question_id"]): a
                       for a in getattr(dataset, "annotation", None) or []
                       if isinstance(a, dict) and "question_id" in a}

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
        question_ids = [_question_id(q) for q in _as_list(samples["question_id"])]
        image_ids = _as_list(samples["image_id"]) if "image_id" in samples else None
        types = _as_list(samples["question_type"]) if "question_type" in samples else None
        questions = _as_list(samples["text_input"])
        truths = _as_list(samples["answer"]) if "answer" in samples else None
        records = []
        for i in range(n):
            ann = self._truth.get(question_ids[i], {})
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
                record["answer"] = bench_metrics.majority(record["answers"])
            if truths is not None and truths[i] is not None:
                record["answer"] = truths[i]
            elif "answer" in ann:
                record["answer"] = ann["answer"]
            record["prediction"] = answers[i]
            if self._has_truth(record):
                bench_metrics.score_record(record, self.metric)
            records.append(record)
        return records

    # Defect worked around: BaseTask.evaluation, which RunnerBase.eval_epoch calls without
    # cuda_enabled, defaults to moving every batch to CUDA, so evaluation fails on a CPU.
    # Batches go to the model's device here; the progress line adds the running accuracy.
    # Addition: unreadable images are skipped and recorded (runner_xformer wraps the
    # dataset in SkipUnreadable for tasks with skips_unreadable_images); every batch's
    # records are appended to a per-process JSONL file at once (results.PredictionLog), and
    # questions an interrupted evaluation already answered (run.resume_predictions) are not
    # asked again.
    skips_unreadable_images = True

    @torch.no_grad()
    def evaluation(self, model, data_loader, cuda_enabled=None):
        if cuda_enabled is None:
            cuda_enabled = next(model.parameters()).is_cuda
        metric_logger = MetricLogger(delimiter="  ")
        header = "Evaluation"
        log = PredictionLog(registry.get_path("result_dir"),
                            "%s_vqa_predictions" % getattr(self, "current_split", "eval"),
                            "question_id", self.resume_predictions)
        results = list(log.carried) if compat.get_rank() == 0 else []
        self._skipped = []
        for samples in metric_logger.log_every(data_loader, self.log_freq, header):
            samples, skipped = pop_skipped(samples)
            self._skipped.extend(skipped)
            if samples is None:
                continue
            if log.done:
                keep = [_question_id(q) not in log.done for q in _as_list(samples["question_id"])]
                if not any(keep):
                    continue
                samples = select_samples(samples, keep)
            samples = prepare_sample(samples, cuda_enabled=cuda_enabled)
            records = self.valid_step(model=model, samples=samples)
            log.append(records)
            results.extend(records)
            scored = [r["score"] for r in records if "score" in r]
            if scored:
                if "acc" not in metric_logger.meters:  # made at the first score: an empty
                    # meter cannot be printed (batches skipped or resumed come first)
                    metric_logger.add_meter("acc", SmoothedValue(window_size=1, fmt="{global_avg:.2f}"))
                metric_logger.meters["acc"].update(_percent(sum(scored), len(scored)),
                                                   n=len(scored))
        log.close()
        compat.barrier()
        return results

    def after_evaluation(self, val_result, split_name, epoch=None, **kwargs):
        records = gather_results(val_result, key="question_id")
        skipped = gather_skipped(getattr(self, "_skipped", []))
        dataset = self._current_dataset
        expected = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
        mismatch = expected is not None and len(records) + len(skipped) != expected
        if mismatch:  # reported, not raised: the predictions that exist are still written
            logging.error(
                "evaluation of split %r: %d distinct question_ids merged from all processes, "
                "but the split has %d questions (duplicate question_ids in the data, or "
                "questions lost)", split_name, len(records), expected)

        result_dir = registry.get_path("result_dir")
        predictions_file = os.path.join(result_dir, "%s_vqa_predictions.json" % split_name)
        metrics = OrderedDict(benchmark=self.benchmark, split=split_name, metric=self.metric,
                              model=self.model_info)
        if isinstance(epoch, int):  # evaluation-only runs pass "best"
            metrics["epoch"] = epoch
        if records and all(self._has_truth(r) for r in records):
            metrics.update(score(records, getattr(dataset, "train_answer_counts", None),
                                 self.metric))
        else:
            metrics["num_questions"] = len(records)
            logging.warning("split %r has no ground-truth answers: predictions only",
                            split_name)
        if expected is not None:
            metrics["questions_in_split"] = expected
        if skipped:  # the scores above are over the questions whose image could be read
            metrics["num_skipped_unreadable"] = len(skipped)
            metrics["skipped_unreadable"] = skipped
        metrics["protocol"] = self.protocol
        metrics["predictions_file"] = predictions_file

        if is_main_process():
            write_json(records, predictions_file)
            metrics_file = os.path.join(result_dir, "%s_vqa_metrics.json" % split_name)
            write_json(metrics, metrics_file)
            if "accuracy" in metrics:
                append_evaluate_line(metrics, registry.get_path("output_dir"))
                title = "[%s, %s] Zero-shot VQA, split %r: %d questions (%s, beams %d, length penalty %g)" % (
                    self.benchmark, self.metric,
                    split_name, metrics["num_questions"], _prompt_label(self.prompt),
                    self.num_beams, self.length_penalty)
                print(metrics_table(metrics, title))
            if skipped:
                print("skipped %d questions whose image could not be read (listed in %s under "
                      "skipped_unreadable): %s" % (len(skipped), metrics_file,
                                                   ", ".join(r["path"] for r in skipped[:5])
                                                   + (", ..." if len(skipped) > 5 else "")))
            print("predictions: %s\nmetrics: %s" % (predictions_file, metrics_file))
        compat.barrier()  # the files exist on every rank's return
        return dict(metrics)


def model_info(model_cfg):
    """What a comparison report needs to tell runs apart: arch, model_type, fusion (X-Former
    models; "blip2" for the stock BLIP-2 twin), the checkpoint."""
    arch = model_cfg.get("arch", None)
    fusion = model_cfg.get("fusion", None)
    if fusion is None and arch is not None and arch.startswith("blip2"):
        fusion = "blip2"
    pretrained = model_cfg.get("pretrained", None)
    if pretrained is not None and not isinstance(pretrained, str):
        pretrained = [str(p) for p in pretrained]  # a list of checkpoints loaded in order
    return OrderedDict([("arch", arch), ("model_type", model_cfg.get("model_type", None)),
                        ("fusion", fusion), ("pretrained", pretrained)])


def _prompt_label(prompt):
    return "prompt %r" % prompt if prompt else "no prompt"


__all__ = ["XFormerVQATask", "normalize_answer", "is_correct", "score", "metrics_table",
           "majority_answer"]
