"""Zero-shot image-text retrieval with a stage-1 model (``xformer``, any fusion; with
``fusion: blip2`` and LAVIS's BLIP-2 checkpoint it is stock BLIP-2), as BLIP-2 does it: ITC
similarities of every image with every text, then for each image (text) its ``k_test`` most
similar texts (images) re-ranked by ITM score + ITC similarity.

    images --encode_image--> output queries (I, Nq, D) --vision_proj, norm--> (I, Nq, E)
    texts  --Q-Former text pass, [CLS]--> (T, D) --text_proj, norm--> (T, E)
    sim[i, t] = max_q <image_q, text>                                   (I, T)
    score_i2t[i, t] = ITM(i, t) + sim[i, t] for t in top-k of sim[i]; -100 elsewhere
    score_t2i[t, i] likewise over images.

Under torchrun each process re-ranks its share of rows; the matrices are merged with an
all-reduce (max), so every process ends with the whole matrices.
"""
import logging

import torch
import torch.nn.functional as F
from lavis.common.logger import MetricLogger

from lavis_xformer.lavis_patches import distributed

UNRANKED = -100.0  # LAVIS's fill value for pairs outside the top k


@torch.no_grad()
def text_features(model, texts, batch_size=256):
    """(T, E) normalised ITC text features, and the tokens (ids, mask) for ITM."""
    device = model.query_tokens.device
    feats, ids, masks = [], [], []
    for start in range(0, len(texts), batch_size):
        tokens = model.tokenize(list(texts[start:start + batch_size]), device)
        cls = model.Qformer.bert(tokens.input_ids, attention_mask=tokens.attention_mask,
                                 return_dict=True).last_hidden_state[:, 0, :]
        feats.append(F.normalize(model.text_proj(cls), dim=-1))
        ids.append(tokens.input_ids)
        masks.append(tokens.attention_mask)
    return torch.cat(feats), torch.cat(ids), torch.cat(masks)


@torch.no_grad()
def image_features(model, data_loader, log_freq=10):
    """Per image (in loader order): normalised ITC features (I, Nq, E), the ITM query prefix
    (I, Nq, D) and the CLIP context (I, Nc, Dc) on the CPU."""
    feats, prefixes, contexts = [], [], []
    device = model.query_tokens.device
    logger = MetricLogger(delimiter="  ")
    for samples in logger.log_every(data_loader, log_freq, "Retrieval: image features"):
        image = samples["image"].to(device)
        image_feats = model.encode_image(image, mask_ratio=0.0)
        feats.append(F.normalize(model.vision_proj(image_feats.queries), dim=-1))
        prefixes.append(model.text_prefix(image_feats.queries))
        contexts.append(image_feats.context)
    return torch.cat(feats), torch.cat(prefixes), torch.cat(contexts)


@torch.no_grad()
def itm_scores(model, prefix, context, input_ids, attention_mask):
    """ITM logit of "match" for pairs: prefix (P, Nq, D), context (P, Nc, Dc), tokens (P, L)."""
    hidden = model.text_pass(input_ids, attention_mask, prefix, context)
    return model.itm_head(hidden[:, : prefix.shape[1], :]).mean(dim=1)[:, 1].float()


def itc_similarity(image_feats, text_feats):
    """(I, Nq, E) x (T, E) -> (I, T): the best query's cosine similarity."""
    return torch.einsum("iqe,te->itq", image_feats, text_feats).max(-1).values


def _my_rows(n):
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    step = (n + world_size - 1) // world_size
    return range(rank * step, min(n, (rank + 1) * step))


@torch.no_grad()
def compute_sim_matrix(model, data_loader, k_test=128, itm_batch=128, log_freq=10):
    """(score_i2t (I, T), score_t2i (T, I)) as numpy arrays, for a LAVIS retrieval eval
    dataset behind ``data_loader`` (``dataset.text``: the processed captions)."""
    texts = getattr(data_loader, "loader", data_loader).dataset.text  # PrefetchLoader on CUDA
    text_feats, ids, masks = text_features(model, texts)
    image_feats, prefixes, contexts = image_features(model, data_loader, log_freq)
    sim = itc_similarity(image_feats, text_feats)  # (I, T)
    n_images, n_texts = sim.shape
    k_i2t, k_t2i = min(k_test, n_texts), min(k_test, n_images)

    def rerank(sim_rows, n_rows, k, pair):
        scores = torch.full(sim_rows.shape, UNRANKED, device=sim_rows.device)
        logger = MetricLogger(delimiter="  ")
        for row in logger.log_every(list(_my_rows(n_rows)), max(1, log_freq * 10), "Retrieval: ITM re-ranking"):
            top_sim, top_idx = sim_rows[row].topk(k)
            itm = torch.cat([itm_scores(model, *pair(row, top_idx[s:s + itm_batch]))
                             for s in range(0, k, itm_batch)])
            scores[row, top_idx] = itm + top_sim
        if distributed.dist_ready():
            torch.distributed.all_reduce(scores, op=torch.distributed.ReduceOp.MAX)
        return scores

    def i2t_pair(i, text_idx):
        n = len(text_idx)
        return (prefixes[i:i + 1].expand(n, -1, -1), contexts[i:i + 1].expand(n, -1, -1),
                ids[text_idx], masks[text_idx])

    def t2i_pair(t, image_idx):
        n = len(image_idx)
        return (prefixes[image_idx], contexts[image_idx], ids[t:t + 1].expand(n, -1),
                masks[t:t + 1].expand(n, -1))

    logging.info("retrieval: %d images, %d texts, ITM re-ranking of the top %d / %d",
                 n_images, n_texts, k_i2t, k_t2i)
    score_i2t = rerank(sim, n_images, k_i2t, i2t_pair)
    score_t2i = rerank(sim.t().contiguous(), n_texts, k_t2i, t2i_pair)
    return score_i2t.cpu().numpy(), score_t2i.cpu().numpy()
