"""Query diversity (supplementary section 6): how differently a model's image queries relate to
the text, averaged over an image-caption set.

    python -m lavis_xformer.tools.query_diversity MODEL [MODEL2] --out DIR
        [--checkpoint CKPT [CKPT2]] [--options model.KEY=VALUE ...] [--labels A B]
        [--annotations captions.json --image-root DIR | --split test] [--max-images 64]

MODEL is ``ARCH:MODEL_TYPE`` (e.g. ``xformer:tiny``, with ``--checkpoint``) or a stage-1
training run (its output_dir, a job directory, or a checkpoint file); see ``loading``.

Definition (the paper's words: similarity between the output queries of the image and of the
text, "marginalised over the text to get scores for each image query", averaged "across
samples and image queries"). For image i with caption c_i, in the ITC space where the model
compares images and text:

    Z_i = normalize(vision_proj(Q'_i))   (Nq, E)   output image queries (X-Former: the
                                                   enhanced queries; other variants: the
                                                   Q-Former output), as ITC uses them
    W_i = normalize(text_proj(H_i))      (L_i, E)  output text queries: the unimodal text
                                                   encoder's tokens of c_i ([CLS] ... [SEP],
                                                   padding excluded)
    S_i = Z_i W_i^T                      (Nq, L_i) cosine similarities
    s_i(q) = 1/L_i * sum_t S_i[q, t]     (Nq,)     marginalised over the text
    D_i = sqrt(1/Nq * sum_q (s_i(q) - mean_q s_i)^2)   diversity of sample i: the spread of
                                                   the per-query scores (population std)
    D = 1/N * sum_i D_i                            reported diversity of the model

A model whose queries all look alike to the text has D near 0; diverse queries relate to the
text differently and give a larger D. The JSON also keeps every D_i, the mean score profile
mean_i s_i(q) per query and the mean similarity. With two models the command prints them side
by side and draws both in one figure.
"""
import argparse
import json
import math
import os
import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F

from lavis_xformer.tools import loading
from lavis_xformer.tools.loading import ToolError
from lavis_xformer.tools.results_io import ResultsError

FORMULA = ("D = mean_i std_q( mean_t cos(vision_proj(Q'_iq), text_proj(H_it)) ): cosine "
           "similarity of output image queries q and text tokens t in the ITC space, "
           "marginalised (averaged) over the caption's tokens, population std over queries, "
           "averaged over the images")


# ------------------------------------------------------------------ pure functions

def query_text_similarity(image_queries, text_tokens):
    """Cosine similarities of every image query with every text token.

    image_queries: (B, Nq, E); text_tokens: (B, L, E). Returns (B, Nq, L).
    """
    return torch.einsum("bqe,bte->bqt", F.normalize(image_queries.float(), dim=-1),
                        F.normalize(text_tokens.float(), dim=-1))


def marginal_scores(similarity, text_mask):
    """Marginalise over the text: the mean over the valid text tokens of each query's row.

    similarity: (B, Nq, L); text_mask: (B, L) with 1 = a token, 0 = padding. Returns (B, Nq).
    """
    mask = text_mask.to(similarity.dtype).unsqueeze(1)  # (B, 1, L)
    counts = mask.sum(-1)
    if (counts == 0).any():
        raise ValueError("a text without tokens (all of text_mask's row is 0)")
    return (similarity * mask).sum(-1) / counts


def query_diversity(scores):
    """Diversity of each sample: the population standard deviation of its per-query scores.

    scores: (B, Nq). Returns (B,).
    """
    return scores.std(dim=-1, unbiased=False)


def summarize(diversities, scores, similarity_means):
    """The JSON summary of per-sample diversities (N,), scores (N, Nq), mean similarities (N,)."""
    n = diversities.numel()
    return OrderedDict([
        ("num_samples", n),
        ("num_queries", scores.shape[-1]),
        ("diversity", float(diversities.mean())),
        ("diversity_std_over_samples", float(diversities.std(unbiased=False))),
        ("diversity_sem", float(diversities.std(unbiased=True) / math.sqrt(n)) if n > 1 else None),
        ("mean_similarity", float(similarity_means.mean())),
        ("per_query_mean_score", [float(v) for v in scores.mean(0)]),
        ("per_sample_diversity", [float(v) for v in diversities]),
    ])


# ------------------------------------------------------------------ model glue

def check_model(model, name):
    for part in ("vision_proj", "text_proj", "encode_image", "tokenize"):
        if not hasattr(model, part):
            raise ToolError(
                "%s: query diversity needs a stage-1 model (arch xformer, any fusion): the "
                "image-text similarity is taken in its ITC space (vision_proj, text_proj), which "
                "a stage-2 model (xformer_opt / xformer_t5) does not keep; give the stage-1 run "
                "or checkpoint instead" % name)


@torch.no_grad()
def model_queries(model, images, captions):
    """(image queries (B, Nq, E), text tokens (B, L, E), text mask (B, L)) in the ITC space:
    the enhanced queries through vision_proj, the unimodal text encoder through text_proj."""
    enhanced = model.encode_image(images, mask_ratio=0.0).queries
    tokens = model.tokenize(list(captions), images.device)
    hidden = model.Qformer.bert(tokens.input_ids, attention_mask=tokens.attention_mask,
                                return_dict=True).last_hidden_state
    return model.vision_proj(enhanced), model.text_proj(hidden), tokens.attention_mask


def measure(model, samples, batch_size=16):
    """Query diversity of ``model`` over [(image, caption, id)] samples: the summary dict."""
    device = next(model.parameters()).device
    divs, scores, sims = [], [], []
    for images, captions, _ in loading.batches(samples, batch_size, device):
        image_q, text_t, mask = model_queries(model, images, captions)
        sim = query_text_similarity(image_q, text_t)
        s = marginal_scores(sim, mask)
        divs.append(query_diversity(s).cpu())
        scores.append(s.cpu())
        sims.append(s.mean(-1).cpu())
    return summarize(torch.cat(divs), torch.cat(scores), torch.cat(sims))


# ------------------------------------------------------------------ report

def side_by_side(results):
    """A plain-text table of the models' numbers."""
    from lavis_xformer.scoring import format_table

    header = ["model"] + [r["label"] for r in results]
    rows = [
        ["diversity D"] + ["%.4f" % r["diversity"] for r in results],
        ["std of D_i over samples"] + ["%.4f" % r["diversity_std_over_samples"] for r in results],
        ["mean similarity"] + ["%.4f" % r["mean_similarity"] for r in results],
        ["samples"] + [str(r["num_samples"]) for r in results],
        ["queries"] + [str(r["num_queries"]) for r in results],
    ]
    return format_table(header, rows)


def plot(results, path):
    """Left: the mean marginal score of each query (one line per model); right: the
    distribution of the per-sample diversities D_i."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.histogram_bin_edges([d for r in results for d in r["per_sample_diversity"]], bins=20)
    for r in results:
        profile = r["per_query_mean_score"]
        left.plot(range(len(profile)), profile, marker="o", label="%s (D=%.4f)" % (r["label"], r["diversity"]))
        right.hist(r["per_sample_diversity"], bins=bins, alpha=0.5, label=r["label"])
    left.set_xlabel("image query")
    left.set_ylabel("mean over images of s_i(q)")
    left.set_title("per-query score, marginalised over the text")
    left.legend(fontsize=8)
    right.set_xlabel("D_i (std over queries)")
    right.set_ylabel("images")
    right.set_title("query diversity per image")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(models, out_dir, checkpoints=None, options=(), labels=None, annotations=None,
        image_root=None, split="test", max_images=64, batch_size=16):
    """Measure each model, write query_diversity.json and .png into out_dir; returns the results."""
    if not 1 <= len(models) <= 2:
        raise ToolError("give one or two models, got %d" % len(models))
    checkpoints = list(checkpoints or [])
    if len(checkpoints) > len(models):
        raise ToolError("%d --checkpoint values for %d models" % (len(checkpoints), len(models)))
    if labels and len(labels) != len(models):
        raise ToolError("--labels gives %d labels for %d models" % (len(labels), len(models)))
    if max_images < 1:
        raise ToolError("--max-images must be at least 1")
    results = []
    for i, spec in enumerate(models):
        ckpt = checkpoints[i] if i < len(checkpoints) else None
        cfg, ckpt, name = loading.model_config(spec, options, ckpt)
        model = loading.build_model(cfg)
        check_model(model, name)
        samples = loading.load_samples(cfg, annotations, image_root, split, max_images)
        summary = measure(model, samples, batch_size)
        label = labels[i] if labels else (spec if ckpt is None or ":" not in spec else "%s@%s" % (spec, os.path.basename(ckpt)))
        if labels is None and len(models) == 2 and models[0] == models[1]:
            label = "%s #%d" % (label, i + 1)
        entry = OrderedDict([("label", label), ("model", name), ("arch", cfg.arch),
                             ("model_type", cfg.get("model_type")), ("fusion", cfg.get("fusion", "xformer")),
                             ("checkpoint", ckpt),
                             ("data", annotations or "easy-VQA %s split (captions)" % split),
                             ("formula", FORMULA)])
        entry.update(summary)
        if ckpt is None:
            entry["warning"] = "no checkpoint: the trainable parts have their initial weights"
        results.append(entry)
        del model
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "query_diversity.json"), "w") as f:
        json.dump(results if len(results) > 1 else results[0], f, indent=1)
    plot(results, os.path.join(out_dir, "query_diversity.png"))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m lavis_xformer.tools.query_diversity",
        description="Query diversity of one or two stage-1 models over an image-caption set "
                    "(X-Former supplementary section 6). " + FORMULA + ".")
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="ARCH:MODEL_TYPE (e.g. xformer:tiny) or a stage-1 run folder / checkpoint")
    parser.add_argument("--out", required=True, help="folder for query_diversity.json/.png")
    parser.add_argument("--checkpoint", nargs="+", default=[], help="checkpoint per ARCH:MODEL_TYPE model, in order")
    parser.add_argument("--options", nargs="+", default=[], help="model.KEY=VALUE overrides for every model")
    parser.add_argument("--labels", nargs="+", help="one label per model")
    parser.add_argument("--annotations", help="caption annotation JSON [{image, caption}] (default: easy-VQA)")
    parser.add_argument("--image-root", help="folder the annotation image paths are relative to")
    parser.add_argument("--split", default="test", help="easy-VQA split (default test)")
    parser.add_argument("--max-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    try:
        results = run(args.models, args.out, args.checkpoint, args.options, args.labels,
                      args.annotations, args.image_root, args.split, args.max_images, args.batch_size)
    except ResultsError as e:
        print("error: %s" % e, file=sys.stderr)
        raise SystemExit(2)
    print("Query diversity (%s)" % FORMULA)
    print(side_by_side(results))
    print("wrote %s" % ", ".join(os.path.join(args.out, "query_diversity.%s" % e) for e in ("json", "png")))
    return results


if __name__ == "__main__":
    main()
