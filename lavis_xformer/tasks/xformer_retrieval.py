"""``xformer_retrieval``: zero-shot image-text retrieval (Flickr30K 1K test) with a stage-1
model: ITC top-``k_test`` (run key, default 128 as LAVIS's BLIP-2 retrieval configs) then ITM
re-ranking, by the model's ``compute_sim_matrix`` (models/retrieval.py for ``xformer``).

Recall@K as LAVIS's retrieval task computes it: for image-to-text (text retrieval) an image
counts as found at K when any of its captions is among the K best texts; for text-to-image
(image retrieval) a caption's one image must be among the K best images.

Per split, in the run's ``result/`` folder: ``<split>_retrieval_predictions.json``
(per image: its captions' ids, the top-10 text ids, the rank of the first correct one; per
text: its image, the top-10 image ids, the rank) and ``<split>_retrieval_metrics.json``
(txt_r1/5/10, img_r1/5/10, their means, r_mean; agg_metrics = txt_r_mean as in LAVIS). The data loader must give
every process all images (``run.use_dist_eval_sampler: False``); under torchrun the
re-ranking is split between processes.
"""
from collections import OrderedDict

import numpy as np
from lavis.common.registry import registry

from lavis_xformer.scoring import format_table
from lavis_xformer.tasks.evaluation import EvalOutput, XFormerEvalTask, loader_dataset

TOP = 10


def ranks_of_truth(scores, truth):
    """For each row of ``scores`` (N, M), the 0-based rank of the best-ranked correct column
    (``truth[row]``: an int or a list of ints). Ties rank by column order (stable sort)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty(scores.shape[0], dtype=np.int64)
    for row in range(scores.shape[0]):
        correct = truth[row]
        correct = [correct] if isinstance(correct, (int, np.integer)) else list(correct)
        ranks[row] = np.where(np.isin(order[row], correct))[0].min()
    return ranks, order


def recall_metrics(score_i2t, score_t2i, img2txt, txt2img):
    """LAVIS's retrieval metrics (in %) from the two score matrices, with its formulas and
    at full precision; ``agg_metrics`` is ``txt_r_mean``, as in LAVIS's RetrievalTask (it
    picks the best checkpoint by text retrieval alone)."""
    i2t_ranks, _ = ranks_of_truth(score_i2t, [img2txt[i] for i in range(score_i2t.shape[0])])
    t2i_ranks, _ = ranks_of_truth(score_t2i, [txt2img[t] for t in range(score_t2i.shape[0])])
    m = OrderedDict()
    for name, ranks in (("txt", i2t_ranks), ("img", t2i_ranks)):
        for k in (1, 5, 10):
            m["%s_r%d" % (name, k)] = 100.0 * int(np.sum(ranks < k)) / len(ranks)
        m["%s_r_mean" % name] = (m[name + "_r1"] + m[name + "_r5"] + m[name + "_r10"]) / 3
    m["r_mean"] = (m["txt_r_mean"] + m["img_r_mean"]) / 2
    m["agg_metrics"] = (m["txt_r1"] + m["txt_r5"] + m["txt_r10"]) / 3
    return m, i2t_ranks, t2i_ranks


@registry.register_task("xformer_retrieval")
class XFormerRetrievalTask(XFormerEvalTask):
    """Zero-shot retrieval: the model's ``compute_sim_matrix`` in place of the batch loop; the
    metrics, the files and the table follow XFormerEvalTask (tasks/evaluation.py)."""

    KIND = "retrieval"

    def __init__(self, k_test=128, log_freq=10, benchmark=None, model_info=None):
        super().__init__(log_freq=log_freq, benchmark=benchmark, model_info=model_info)
        self.k_test = int(k_test)

    @classmethod
    def setup_task(cls, cfg):
        return cls(k_test=cfg.run_cfg.get("k_test", 128), **cls.common_args(cfg))

    @property
    def protocol(self):
        return OrderedDict(k_test=self.k_test, rerank="ITM score + ITC similarity")

    def evaluation(self, model, data_loader, **kwargs):
        inner = getattr(data_loader, "loader", data_loader)  # PrefetchLoader on CUDA
        dataset = loader_dataset(data_loader)
        for attr in ("text", "img2txt", "txt2img"):
            if not hasattr(dataset, attr):
                raise TypeError("xformer_retrieval needs a LAVIS retrieval eval dataset (with "
                                "text, img2txt, txt2img), e.g. flickr30k_eval; got %s"
                                % type(dataset).__name__)
        if not hasattr(model, "compute_sim_matrix"):
            raise TypeError("model %s has no compute_sim_matrix; retrieval needs a stage-1 model "
                            "(arch xformer)" % type(model).__name__)
        if len(dataset) != len(getattr(inner, "sampler", None) or dataset):
            raise ValueError("every process must see all images: set run.use_dist_eval_sampler: False")
        score_i2t, score_t2i = model.compute_sim_matrix(data_loader, task_cfg={"k_test": self.k_test})
        return EvalOutput([score_i2t, score_t2i], [], dataset)

    def merge(self, records):
        return records  # every process computed the whole score matrices

    def split_metrics(self, records, skipped, dataset, split_name, epoch):
        score_i2t, score_t2i = records
        metrics_core, _, _ = recall_metrics(score_i2t, score_t2i, dataset.img2txt, dataset.txt2img)
        metrics = self.metrics_head(split_name, epoch, "recall@k",
                                    num_images=int(score_i2t.shape[0]),
                                    num_texts=int(score_t2i.shape[0]))
        metrics.update(metrics_core)
        return metrics

    def predictions(self, records, dataset):
        """Per image: its captions' ids, the top-10 text ids, the rank of the first correct
        one; per text: its image, the top-10 image ids, the rank."""
        score_i2t, score_t2i = records
        _, i2t_ranks, t2i_ranks = recall_metrics(score_i2t, score_t2i, dataset.img2txt,
                                                 dataset.txt2img)
        i2t_order = np.argsort(-score_i2t, axis=1, kind="stable")[:, :TOP]
        t2i_order = np.argsort(-score_t2i, axis=1, kind="stable")[:, :TOP]
        return OrderedDict(
            image_to_text=[OrderedDict(image_index=i, image=dataset.image[i],
                                       texts=list(dataset.img2txt[i]),
                                       top10_texts=i2t_order[i].tolist(),
                                       rank=int(i2t_ranks[i]) + 1)
                           for i in range(score_i2t.shape[0])],
            text_to_image=[OrderedDict(text_index=t, text=dataset.text[t],
                                       image_index=int(dataset.txt2img[t]),
                                       top10_images=t2i_order[t].tolist(),
                                       rank=int(t2i_ranks[t]) + 1)
                           for t in range(score_t2i.shape[0])])

    def table(self, metrics, split_name):
        return retrieval_table(metrics, "[%s] Zero-shot retrieval, split %r: %d images, %d "
                               "texts (ITC top-%d, ITM re-ranking)" % (
                                   self.benchmark, split_name, metrics["num_images"],
                                   metrics["num_texts"], self.k_test))


def retrieval_table(metrics, title):
    rows = [["text retrieval (image->text)"] + ["%.2f" % metrics["txt_r%d" % k] for k in (1, 5, 10)],
            ["image retrieval (text->image)"] + ["%.2f" % metrics["img_r%d" % k] for k in (1, 5, 10)]]
    return title + "\n" + format_table(["", "R@1", "R@5", "R@10"], rows)


__all__ = ["XFormerRetrievalTask", "recall_metrics", "ranks_of_truth"]
