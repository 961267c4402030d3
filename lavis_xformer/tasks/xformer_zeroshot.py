"""Zero-shot fine-grained evaluations with a stage-1 model (``xformer``, any fusion; with
``fusion: blip2`` and LAVIS's BLIP-2 checkpoint it is stock BLIP-2), as in the paper's
supplementary Tables 6 and 14. The paper does not say how it scores them; the rules here are
those of the benchmarks' own code, with BLIP-2's ITC and ITM in place of CLIP's similarity:

``xformer_classification`` (Flowers-102, Food-101): each class c gets a text feature
    t_c = normalize(mean over templates of normalize(text_proj(Q-Former [CLS] of the prompt)))
(CLIP's prompt ensembling; one template by default), each image its ITC query features
    z_iq = normalize(vision_proj(output query q of image i))     (Nq of them)
and the class score is BLIP-2's ITC similarity, the best query's:
    s(i, c) = max_q <z_iq, t_c>.
The prediction is argmax_c s(i, c). Reported: top-1 accuracy (``agg_metrics``), top-5
accuracy and mean per-class accuracy (the metric CLIP reports for Flowers-102), in %.

``xformer_sugarcrepe``: for each image, its positive caption against its hard negative, as
SugarCrepe's ``main_eval.py`` does (correct when the positive scores strictly higher), with
three scores: ``itc`` (the similarity above, SugarCrepe's own protocol for contrastive
models; ``agg_metrics``), ``itm`` (the ITM head's "match" logit, averaged over the query
outputs as in BLIP-2) and ``itm_itc`` (their sum, the score BLIP-2's retrieval re-ranks
with). Accuracy (%) per category and averaged over the categories.

Per split, in the run's ``result/`` folder: ``<split>_<benchmark>_predictions.json`` (one
record per image) and ``<split>_<benchmark>_metrics.json``. Under torchrun each process
scores its share and the records are merged (results.py).
"""
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from lavis.common.registry import registry

from lavis_xformer.models.retrieval import itc_similarity, itm_scores, text_features
from lavis_xformer.scoring import format_table
from lavis_xformer.tasks.evaluation import XFormerEvalTask

SUGARCREPE_SCORES = ("itc", "itm", "itm_itc")


# ----------------------------------------------------------------- scores

def class_text_features(model, classnames, templates, text_processor=None):
    """(C, E): per class the normalised mean of its prompts' normalised ITC text features."""
    process = text_processor or (lambda t: t)
    prompts = [process(t.format(c)) for c in classnames for t in templates]
    feats, _, _ = text_features(model, prompts)
    feats = feats.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(feats, dim=-1)


@torch.no_grad()
def image_itc(model, image):
    """Normalised ITC features (B, Nq, E) of the images, with the ITM query prefix and the
    Q-Former's cross-attention context."""
    feats = model.encode_image(image, mask_ratio=0.0)
    queries = feats.queries
    return F.normalize(model.vision_proj(queries), dim=-1), model.text_prefix(queries), feats.context


def classification_metrics(scores, labels, num_classes):
    """Top-1 / top-5 / mean per-class accuracy (%) of a score matrix (N, C) against labels (N,)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    order = np.argsort(-scores, axis=1, kind="stable")
    top1 = order[:, 0] == labels
    top5 = (order[:, :5] == labels[:, None]).any(axis=1)
    present = [c for c in range(num_classes) if (labels == c).any()]
    per_class = [float(top1[labels == c].mean()) for c in present]
    metrics = OrderedDict([
        ("num_images", int(len(labels))),
        ("accuracy", round(100.0 * float(top1.mean()), 2)),
        ("top5_accuracy", round(100.0 * float(top5.mean()), 2)),
        ("mean_per_class_accuracy", round(100.0 * float(np.mean(per_class)), 2)),
    ])
    metrics["agg_metrics"] = metrics["accuracy"]
    return metrics


def sugarcrepe_metrics(records):
    """Per score kind: accuracy (%) per category (positive strictly above negative) and the
    mean over categories; records carry ``category`` and ``<kind>_pos`` / ``<kind>_neg``."""
    categories = sorted({r["category"] for r in records})
    per_category = OrderedDict()
    for category in categories:
        group = [r for r in records if r["category"] == category]
        row = OrderedDict(num_images=len(group))
        for kind in SUGARCREPE_SCORES:
            row[kind] = round(100.0 * float(np.mean([r[kind + "_pos"] > r[kind + "_neg"] for r in group])), 2)
        row["accuracy"] = row["itc"]  # the reported score (agg_metrics), as comparison reports read it
        per_category[category] = row
    metrics = OrderedDict(num_images=len(records))
    for kind in SUGARCREPE_SCORES:
        metrics[kind] = round(float(np.mean([row[kind] for row in per_category.values()])), 2)
    metrics["agg_metrics"] = metrics["itc"]
    metrics["per_category"] = per_category
    return metrics


# ----------------------------------------------------------------- tasks

class _ZeroShotTask(XFormerEvalTask):
    """Shared: a stage-1 model; the loop, the merge and the files are XFormerEvalTask's."""

    def before_evaluation(self, model, dataset, **kwargs):
        for attr in ("vision_proj", "text_proj", "itm_head"):
            if not hasattr(model, attr):
                raise TypeError("%s needs a stage-1 model (arch xformer, with ITC and ITM heads); "
                                "got %s" % (self.KIND, type(model).__name__))

    def metrics_of(self, records, dataset):
        raise NotImplementedError

    def split_metrics(self, records, skipped, dataset, split_name, epoch):
        metrics = self.metrics_head(split_name, epoch, self.KIND)
        metrics.update(self.metrics_of(records, dataset))
        return metrics


@registry.register_task("xformer_classification")
class XFormerClassificationTask(_ZeroShotTask):
    """Zero-shot classification by ITC against class-name prompts (Flowers-102, Food-101)."""

    KIND = "classification"
    LOG_HEADER = "Evaluation (classification)"

    def before_evaluation(self, model, dataset, **kwargs):
        super().before_evaluation(model, dataset, **kwargs)
        for attr in ("classnames", "templates"):
            if not hasattr(dataset, attr):
                raise TypeError("xformer_classification needs a classification dataset with "
                                "classnames and templates (flowers102_eval, food101_eval); got %s"
                                % type(dataset).__name__)

    def split_state(self, model, dataset):
        """The class text features (C, E), computed once per split."""
        return class_text_features(model, dataset.classnames, dataset.templates,
                                   getattr(dataset, "text_processor", None))

    def valid_step(self, model, samples, state=None):
        feats, _, _ = image_itc(model, samples["image"])
        scores = itc_similarity(feats, state.to(feats.device)).float().cpu()
        top = scores.topk(min(5, scores.shape[1]), dim=1)
        records = []
        for i, (image_id, label) in enumerate(zip(samples["image_id"].tolist(), samples["label"].tolist())):
            records.append(OrderedDict(
                image_id=image_id, label=label, prediction=int(top.indices[i, 0]),
                correct=bool(int(top.indices[i, 0]) == label), top5=top.indices[i].tolist(),
                top5_scores=[round(float(s), 5) for s in top.values[i]],
                label_score=round(float(scores[i, label]), 5)))
        return records

    def metrics_of(self, records, dataset):
        n = len(dataset.classnames)
        scores = np.full((len(records), n), -np.inf)
        for row, r in enumerate(records):  # only the ranks matter: the top 5 in order
            for rank, c in enumerate(r["top5"]):
                scores[row, c] = -rank
        return classification_metrics(scores, [r["label"] for r in records], n)

    def protocol_of(self, dataset):
        return OrderedDict(score="ITC: max over queries of cosine(query, class text feature)",
                           templates=list(getattr(dataset, "templates", [])),
                           num_classes=len(getattr(dataset, "classnames", [])))

    def table(self, metrics, split_name):
        title = "[%s] Zero-shot classification, split %r: %d images, %d classes (ITC)" % (
            self.benchmark, split_name, metrics["num_images"], metrics["protocol"]["num_classes"])
        return title + "\n" + format_table(
            ["images", "top-1 %", "top-5 %", "mean per class %"],
            [[metrics["num_images"], "%.2f" % metrics["accuracy"], "%.2f" % metrics["top5_accuracy"],
              "%.2f" % metrics["mean_per_class_accuracy"]]])


@registry.register_task("xformer_sugarcrepe")
class XFormerSugarCrepeTask(_ZeroShotTask):
    """SugarCrepe: the positive caption against the hard negative, by ITC, ITM and both."""

    KIND = "sugarcrepe"
    LOG_HEADER = "Evaluation (sugarcrepe)"

    def split_state(self, model, dataset):
        return dataset  # the captions are looked up in its annotation by image id

    def valid_step(self, model, samples, state=None):
        dataset = state
        feats, prefix, context = image_itc(model, samples["image"])
        process = getattr(dataset, "text_processor", None) or (lambda t: t)
        image_ids = samples["image_id"].tolist()
        anns = [dataset.annotation[i] for i in image_ids]
        out = {}
        for side, key in (("pos", "caption"), ("neg", "negative_caption")):
            text_feats, ids, masks = text_features(model, [process(a[key]) for a in anns])
            out["itc_" + side] = (feats * text_feats[:, None, :]).sum(-1).max(-1).values.float()
            out["itm_" + side] = itm_scores(model, prefix, context, ids, masks)
        records = []
        for i, (image_id, ann) in enumerate(zip(image_ids, anns)):
            r = OrderedDict(image_id=image_id, category=ann["category"], image=ann["image"],
                            caption=ann["caption"], negative_caption=ann["negative_caption"])
            for side in ("pos", "neg"):
                r["itc_" + side] = round(float(out["itc_" + side][i]), 6)
                r["itm_" + side] = round(float(out["itm_" + side][i]), 6)
                r["itm_itc_" + side] = r["itm_" + side] + r["itc_" + side]
            r["correct_itc"] = r["itc_pos"] > r["itc_neg"]
            records.append(r)
        return records

    def metrics_of(self, records, dataset):
        return sugarcrepe_metrics(records)

    @property
    def protocol(self):
        return OrderedDict(rule="correct when the positive caption scores strictly above the negative",
                           scores=dict(itc="max over queries of cosine(query, caption)",
                                       itm="ITM match logit, mean over query outputs",
                                       itm_itc="itm + itc"), agg_metrics="itc")

    def table(self, metrics, split_name):
        rows = [[name, row["num_images"]] + ["%.2f" % row[k] for k in SUGARCREPE_SCORES]
                for name, row in metrics["per_category"].items()]
        rows.append(["mean of categories", metrics["num_images"]] +
                    ["%.2f" % metrics[k] for k in SUGARCREPE_SCORES])
        title = "[%s] SugarCrepe, split %r: positive vs negative caption, accuracy %%" % (
            self.benchmark, split_name)
        return title + "\n" + format_table(["category", "images", "ITC", "ITM", "ITM+ITC"], rows)


__all__ = ["XFormerClassificationTask", "XFormerSugarCrepeTask", "classification_metrics",
           "sugarcrepe_metrics", "class_text_features"]
