"""``xformer_caption``: zero-shot captioning (COCO Karpathy test, NoCaps val), scored with
BLEU-4 and CIDEr by pycocoevalcap (captions and references tokenised by its PTB tokenizer,
which runs Java offline).

SPICE is skipped and the run says so: pycocoevalcap's SPICE downloads Stanford CoreNLP
models on first use, which needs a network (``run.spice: True`` tries it anyway).

Decoding (run-config keys): ``prompt`` (default "a photo of", as LAVIS's BLIP-2 OPT
captioning configs), ``num_beams`` 5, ``max_len`` 30, ``min_len`` 8, ``length_penalty`` 1.0;
the model's ``generate`` is called with ``samples["prompt"]`` set, so ``xformer_opt`` and the
BLIP-2 twin decode alike. The caption is what follows the prompt. A stage-1 ``xformer`` model
captions too (its Q-Former decodes; it takes no prompt and no length penalty).

Per split, in the run's ``result/`` folder: ``<split>_caption_predictions.json`` (one record per
image: image_id, prediction, references, domain where given) and ``<split>_caption_metrics.json``
(BLEU-4 and CIDEr in %, per NoCaps domain where the data gives domains, the protocol;
``agg_metrics`` = CIDEr + BLEU-4 as fractions, as LAVIS's CaptionTask). A short
table is printed at the end and a progress line every ``log_freq`` batches; under torchrun
each process captions its share and the results are merged (results.py).
"""
import inspect
import logging
from collections import OrderedDict

from lavis.common.dist_utils import is_main_process
from lavis.common.registry import registry

from lavis_xformer.scoring import format_table
from lavis_xformer.tasks.evaluation import XFormerEvalTask

SPICE_NOTE = ("SPICE skipped: pycocoevalcap's SPICE downloads Stanford CoreNLP models on first "
              "use (network needed); BLEU-4 and CIDEr only")


def caption_scores(references, predictions):
    """BLEU-4 and CIDEr (in %, full precision) of ``predictions`` {image_id: caption} against
    ``references`` {image_id: [captions]}, both PTB-tokenised, as the COCO caption evaluation
    computes them (CIDEr's document frequencies come from the references given), and
    ``agg_metrics``: CIDEr + BLEU-4 as fractions, as LAVIS's CaptionTask picks checkpoints."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    missing = set(predictions) - set(references)
    if missing:
        raise KeyError("no reference captions for image ids %s" % sorted(missing)[:5])
    ids = sorted(predictions)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in references[i]] for i in ids})
    res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in ids})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return OrderedDict([("num_images", len(ids)), ("bleu4", 100 * bleu[3]), ("cider", 100 * cider),
                        ("agg_metrics", cider + bleu[3])])


def spice_score(references, predictions):
    """SPICE (in %), when pycocoevalcap can run it (it fetches CoreNLP on first use)."""
    from pycocoevalcap.spice.spice import Spice
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ids = sorted(predictions)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in references[i]] for i in ids})
    res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in ids})
    score, _ = Spice().compute_score(gts, res)
    return 100 * score


@registry.register_task("xformer_caption")
class XFormerCaptionTask(XFormerEvalTask):
    """Zero-shot captioning scored by BLEU-4 and CIDEr; the loop, the merge and the files are
    XFormerEvalTask's (tasks/evaluation.py)."""

    KIND = "caption"
    LOG_HEADER = "Captioning"
    # as xformer_vqa: unreadable images skipped and recorded, captions appended to a
    # per-process JSONL as they are made, run.resume_predictions continues an evaluation
    skips_unreadable_images = True
    streams_predictions = True

    def __init__(self, num_beams=5, max_len=30, min_len=8, prompt="a photo of",
                 length_penalty=1.0, log_freq=10, spice=False, benchmark=None, model_info=None):
        super().__init__(log_freq=log_freq, benchmark=benchmark, model_info=model_info)
        self.num_beams, self.max_len, self.min_len = num_beams, max_len, min_len
        self.prompt, self.length_penalty = prompt, length_penalty
        self.spice = spice

    @classmethod
    def setup_task(cls, cfg):
        run_cfg = cfg.run_cfg
        task = cls(
            num_beams=int(run_cfg.get("num_beams", 5)),
            max_len=int(run_cfg.get("max_len", 30)),
            min_len=int(run_cfg.get("min_len", 8)),
            prompt=run_cfg.get("prompt", "a photo of"),
            length_penalty=float(run_cfg.get("length_penalty", 1.0)),
            spice=bool(run_cfg.get("spice", False)),
            **cls.common_args(cfg),
        )
        task.setup_resume(cfg)  # run.resume_predictions, checked before anything is built
        return task

    @property
    def protocol(self):
        return OrderedDict([("prompt", self.prompt), ("num_beams", self.num_beams),
                            ("max_len", self.max_len), ("min_len", self.min_len),
                            ("length_penalty", self.length_penalty)])

    def valid_step(self, model, samples, state=None):
        image = samples["image"]
        samples = dict(samples, prompt=[self.prompt or ""] * image.shape[0])
        options = dict(use_nucleus_sampling=False, num_beams=self.num_beams,
                       max_length=self.max_len, min_length=self.min_len)
        # stage-1 models (the Q-Former decodes; no prompt, no length penalty) caption too
        if "length_penalty" in inspect.signature(model.generate).parameters:
            options["length_penalty"] = self.length_penalty
        captions = model.generate(samples, **options)
        return [OrderedDict(image_id=i, prediction=c)
                for i, c in zip(self.sample_ids(samples), captions)]

    def split_metrics(self, records, skipped, dataset, split_name, epoch):
        annotation = {a["image_id"]: a for a in getattr(dataset, "annotation", [])}
        for record in records:
            ann = annotation.get(record["image_id"], {})
            if "captions" in ann:
                record["references"] = list(ann["captions"])
            if "domain" in ann:
                record["domain"] = ann["domain"]
        metrics = self.metrics_head(split_name, epoch, "bleu4_cider")
        notes = []
        if records and all("references" in r for r in records) and is_main_process():
            references = {r["image_id"]: r["references"] for r in records}
            predictions = {r["image_id"]: r["prediction"] for r in records}
            overall = caption_scores(references, predictions)
            metrics.update(overall)
            if self.spice:
                try:
                    metrics["spice"] = spice_score(references, predictions)
                except Exception as e:  # noqa: BLE001 - reported, the other scores stand
                    notes.append("SPICE failed (%s: %s); BLEU-4 and CIDEr only" % (
                        type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else ""))
            else:
                notes.append(SPICE_NOTE)
            domains = sorted({r["domain"] for r in records if "domain" in r})
            if domains:
                metrics["per_question_type"] = OrderedDict(
                    (d, caption_scores({i: references[i] for i in predictions
                                        if annotation[i].get("domain") == d},
                                       {i: p for i, p in predictions.items()
                                        if annotation[i].get("domain") == d}))
                    for d in domains)
        elif not (records and all("references" in r for r in records)):
            metrics["num_images"] = len(records)
            logging.warning("split %r has no reference captions: predictions only", split_name)
        if notes:
            metrics["notes"] = notes  # printed before the table (XFormerEvalTask)
        if dataset is not None and hasattr(dataset, "__len__"):
            metrics["images_in_split"] = len(dataset)
        return metrics

    def scored(self, metrics):
        return "cider" in metrics

    def table(self, metrics, split_name):
        return caption_table(metrics, "[%s] Zero-shot captioning, split %r: %d images "
                             "(prompt %r, beams %d)" % (self.benchmark, split_name,
                                                        metrics["num_images"], self.prompt,
                                                        self.num_beams))


def caption_table(metrics, title):
    header = ["subset", "images", "BLEU-4", "CIDEr"] + (["SPICE"] if "spice" in metrics else [])
    rows = [["all", metrics["num_images"], "%.2f" % metrics["bleu4"], "%.2f" % metrics["cider"]]
            + (["%.2f" % metrics["spice"]] if "spice" in metrics else [])]
    for name, row in metrics.get("per_question_type", {}).items():
        rows.append([name, row["num_images"], "%.2f" % row["bleu4"], "%.2f" % row["cider"]]
                    + ([""] if "spice" in metrics else []))
    return title + "\n" + format_table(header, rows)
