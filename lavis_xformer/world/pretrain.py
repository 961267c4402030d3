"""Pretrain the three frozen parts in the miniature world, each in the format that the plugin's
existing weight-source keys load (so the real loading code runs), each cached.

    python -m lavis_xformer.world.pretrain clip --config mini
    python -m lavis_xformer.world.pretrain mae  --config mini
    python -m lavis_xformer.world.pretrain lm   --config mini
    python -m lavis_xformer.world.pretrain all  --config mini

clip  LAVIS's EVA ``VisionTransformer`` (sizes from the ``mini`` model type's yaml) and a small
      text transformer, trained contrastively (symmetric InfoNCE, learned temperature) on the
      world's ALT TEXT only. Saved: ``vit.pth``, the ViT's state dict (tensors only, loadable
      with ``torch.load(weights_only=True)``) for ``model.clip_vit_weights``. Quality printed:
      zero-shot image<->alt-text retrieval on the val split.
mae   transformers' ``ViTMAEForPreTraining`` on the images alone with MAE's own objective
      (mask 75 %, MSE on the masked patches, ImageNet-normalised pixels as the plugin's MAE
      branch feeds it). Saved with ``save_pretrained`` for ``model.mae_weights``. Quality
      printed: val reconstruction loss, and ``reconstruction.png`` (original, masked,
      reconstructed rows).
lm    transformers' ``OPTForCausalLM`` (small config) and a byte-level BPE tokenizer trained on
      the world's text only (captions and question/answer text of the train split, as stage 2
      will feed them; never images). Saved with ``save_pretrained`` (model and tokenizer in one
      folder) for ``model.llm_weights`` and ``model.llm_tokenizer``. Quality printed: val
      perplexity.

Each is cached under a key from its settings, the architecture it is saved for and the world
(cache.py), reused next time and rebuilt when any of those changes; each links its folder as
output/<config name>/assets/<part>.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lavis_xformer.world import build as world_build
from lavis_xformer.world import cache, config as world_config
from lavis_xformer.world.text import qa_text

PARTS = ("clip", "mae", "lm")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def asset_model_keys(assets, stage):
    """The model keys that point a ``mini`` model of ``stage`` ("stage1": ``xformer``, else
    ``xformer_opt``) at the frozen parts in ``assets`` (part name -> its folder)."""
    keys = {"clip_vit_weights": os.path.join(assets["clip"], "vit.pth"), "mae_weights": assets["mae"]}
    if stage == "stage1":
        keys["tokenizer"] = os.path.join(assets["world"], "tokenizer")
    else:
        keys.update(llm_weights=assets["lm"], llm_tokenizer=assets["lm"])
    return keys


def _log(part, message):
    print("[%s] %s" % (part, message), flush=True)


def _lr(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _train(part, model, opt, steps, peak_lr, warmup, batch_loss, digits=3):
    """The one training loop of the frozen parts: warm-up + cosine lr, ``batch_loss()`` (which
    draws its own batch) per step, progress ten times; leaves ``model`` in eval mode and
    returns the last step's loss."""
    start = time.time()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, peak_lr, warmup)
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            _log(part, "step %d/%d  loss %.*f  (%.0f s)" % (step + 1, steps, digits, loss.item(),
                                                         time.time() - start))
    model.eval()
    return loss.item()


def load_images(world, split):
    """(N, 3, H, W) uint8 tensor of a split's images, in index order, and the caption records."""
    from PIL import Image

    with open(os.path.join(world, split, "captions.json")) as f:
        records = json.load(f)
    images = np.stack([np.asarray(Image.open(os.path.join(world, split, r["image"])).convert("RGB"))
                       for r in records])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), records


def normalise(images_uint8, mean, std):
    x = images_uint8.float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def flip(x, generator):
    """Random horizontal flip per image (LAVIS's train processor flips too)."""
    keep = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(keep.view(-1, 1, 1, 1), x, x.flip(-1))


# ----------------------------------------------------------------------------- CLIP side

class TextTower(nn.Module):
    """A small transformer text encoder for the contrastive objective.

    input_ids (B, T) long, attention_mask (B, T) -> (B, dim) mean of the valid token outputs."""

    def __init__(self, vocab_size, dim=128, depth=2, heads=4, max_len=48):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, depth)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids, attention_mask):
        x = self.embed(input_ids) + self.pos[:, : input_ids.shape[1]]
        x = self.blocks(x, src_key_padding_mask=attention_mask == 0)
        x = self.norm(x)
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp(min=1)


class ContrastiveModel(nn.Module):
    """EVA ViT (CLS token, LayerNorm, projection) and TextTower (projection), CLIP's loss."""

    def __init__(self, vit, vocab_size, embed_dim, text_dim, text_depth):
        super().__init__()
        self.vit = vit
        self.image_norm = nn.LayerNorm(vit.num_features)
        self.image_proj = nn.Linear(vit.num_features, embed_dim, bias=False)
        self.text = TextTower(vocab_size, text_dim, text_depth)
        self.text_proj = nn.Linear(text_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, pixels):
        return F.normalize(self.image_proj(self.image_norm(self.vit(pixels)[:, 0])), dim=-1)

    def encode_text(self, tokens):
        return F.normalize(self.text_proj(self.text(tokens["input_ids"], tokens["attention_mask"])), dim=-1)

    def forward(self, pixels, tokens):
        img, txt = self.encode_image(pixels), self.encode_text(tokens)
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * img @ txt.t()
        target = torch.arange(len(img), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def _retrieval(model, images, tokens, device, batch=256):
    """Recall@1/5 (%) of image->text and text->image over the whole set."""
    with torch.no_grad():
        img = torch.cat([model.encode_image(images[i:i + batch].to(device)).cpu()
                         for i in range(0, len(images), batch)])
        txt = torch.cat([model.encode_text({k: v[i:i + batch].to(device) for k, v in tokens.items()}).cpu()
                         for i in range(0, len(images), batch)])
    sim = img @ txt.t()

    def recall(s, k):
        top = s.topk(k, dim=1).indices
        return 100.0 * (top == torch.arange(len(s)).unsqueeze(1)).any(1).float().mean().item()

    return {"i2t_r1": recall(sim, 1), "i2t_r5": recall(sim, 5),
            "t2i_r1": recall(sim.t(), 1), "t2i_r5": recall(sim.t(), 5), "n": len(images)}


def train_clip(world, settings, arch, out, seed, device):
    from transformers import BertTokenizer

    from lavis_xformer.models.config import ModelConfig
    from lavis_xformer.models.encoders import build_eva_vit

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tokenizer = BertTokenizer(os.path.join(world, "tokenizer", "vocab.txt"))
    vit = build_eva_vit(ModelConfig.from_cfg({"image_size": arch["image_size"], "vit": arch["vit"],
                                              "random_init": True}))
    model = ContrastiveModel(vit, tokenizer.vocab_size, settings.get("embed_dim", 64),
                             settings.get("text_dim", 128), settings.get("text_depth", 2)).to(device)
    images, records = load_images(world, "train")
    val_images, val_records = load_images(world, "val")
    alt = [r["alt_text"] for r in records]

    def tok(texts):
        return {k: v.to(device) for k, v in tokenizer(texts, padding="longest", truncation=True,
                                                      max_length=48, return_tensors="pt").items()}

    val_tokens = {k: v.cpu() for k, v in tok([r["alt_text"] for r in val_records]).items()}
    val_x = normalise(val_images, CLIP_MEAN, CLIP_STD)
    batch, steps = int(settings.get("batch_size", 128)), int(settings.get("steps", 300))
    opt = torch.optim.AdamW(model.parameters(), lr=settings.get("lr", 1e-3),
                            weight_decay=settings.get("weight_decay", 0.05))

    def batch_loss():
        idx = torch.randint(len(images), (batch,), generator=gen)
        x = flip(normalise(images[idx], CLIP_MEAN, CLIP_STD), gen).to(device)
        return model(x, tok([alt[i] for i in idx.tolist()]))

    final_loss = _train("clip", model, opt, steps, settings.get("lr", 1e-3),
                        settings.get("warmup", 20), batch_loss)
    quality = _retrieval(model, val_x, val_tokens, device)
    model.cpu()
    _log("clip", "zero-shot retrieval on val (%d images vs their alt text): image->text R@1 %.1f "
         "R@5 %.1f, text->image R@1 %.1f R@5 %.1f (chance R@1 %.1f)" % (
             quality["n"], quality["i2t_r1"], quality["i2t_r5"], quality["t2i_r1"],
             quality["t2i_r5"], 100.0 / quality["n"]))
    state = {k: v.detach().clone().contiguous() for k, v in model.vit.state_dict().items()}
    torch.save(state, os.path.join(out, "vit.pth"))
    tokenizer.save_pretrained(os.path.join(out, "text_tokenizer"))
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("vit.")},
               os.path.join(out, "text_tower_and_heads.pth"))
    return {"quality": quality, "final_loss": final_loss}


# ----------------------------------------------------------------------------- MAE

def train_mae(world, settings, arch, out, seed, device):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    config = ViTMAEConfig(image_size=arch["image_size"], mask_ratio=settings.get("mask_ratio", 0.75),
                          **arch["mae"])
    model = ViTMAEForPreTraining(config).to(device)
    images, _ = load_images(world, "train")
    val_images, _ = load_images(world, "val")
    batch, steps = int(settings.get("batch_size", 128)), int(settings.get("steps", 300))
    opt = torch.optim.AdamW(model.parameters(), lr=settings.get("lr", 1.5e-3), betas=(0.9, 0.95),
                            weight_decay=settings.get("weight_decay", 0.05))

    def batch_loss():
        idx = torch.randint(len(images), (batch,), generator=gen)
        x = flip(normalise(images[idx], IMAGENET_MEAN, IMAGENET_STD), gen).to(device)
        return model(pixel_values=x).loss  # MAE's own objective: MSE on the masked patches

    _train("mae", model, opt, steps, settings.get("lr", 1.5e-3), settings.get("warmup", 20),
           batch_loss, digits=4)
    val_x = normalise(val_images, IMAGENET_MEAN, IMAGENET_STD).to(device)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        losses = [model(pixel_values=val_x[i:i + 256]).loss.item() * len(val_x[i:i + 256])
                  for i in range(0, len(val_x), 256)]
        # the trivial predictor: every masked pixel predicted as the image's mean colour
        patches = model.patchify(val_x)
        baseline = (patches - patches.mean(dim=1, keepdim=True)).pow(2).mean().item()
    val_loss = sum(losses) / len(val_x)
    _log("mae", "val reconstruction loss (masked patches, 75%% masked) %.4f; predicting each "
         "image's mean colour instead: %.4f" % (val_loss, baseline))
    picture = os.path.join(out, "reconstruction.png")
    _reconstruction_png(model, val_x[:8], picture, seed)
    _log("mae", "reconstructions: %s" % picture)
    model.cpu()
    model.config.mask_ratio = 0.75
    model.save_pretrained(out)
    return {"val_loss": val_loss, "mean_colour_baseline": baseline}


def _reconstruction_png(model, x, path, seed):
    """Rows: original, masked input, reconstruction (visible patches pasted back)."""
    from PIL import Image

    torch.manual_seed(seed)
    with torch.no_grad():
        outputs = model(pixel_values=x)
    pred = model.unpatchify(outputs.logits).cpu()
    mask = outputs.mask.unsqueeze(-1).repeat(1, 1, model.config.patch_size ** 2 * 3)
    mask = model.unpatchify(mask).cpu()
    x = x.cpu()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def to_uint8(t):
        return (t * std + mean).clamp(0, 1).mul(255).byte().permute(0, 2, 3, 1).numpy()

    rows = [to_uint8(x), to_uint8(x * (1 - mask) + 0.5 * mask), to_uint8(x * (1 - mask) + pred * mask)]
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


# ----------------------------------------------------------------------------- LM

def lm_texts(world, split):
    """The text stage 2 feeds the LLM, from one split: each caption as LAVIS's
    ``blip_caption`` processor gives it, each question/answer pair in the zero-shot prompt's
    format (question as ``blip_question`` gives it), and caption + question/answer, from which
    the model learns to read an answer off a description."""
    from lavis.processors.blip_processors import BlipCaptionProcessor, BlipQuestionProcessor

    cap, que = BlipCaptionProcessor(), BlipQuestionProcessor()
    with open(os.path.join(world, split, "captions.json")) as f:
        captions = {r["image_id"]: cap(r["caption"]) for r in json.load(f)}
    texts = list(captions.values())
    for name in world_build.QUESTION_FILES:
        with open(os.path.join(world, split, "%s.json" % name)) as f:
            for q in json.load(f):
                qa = qa_text(que(q["text_in"]), q["text_out"])
                texts.append(qa)
                texts.append(captions[int(q["image_id"].split("/")[-1][:-4])] + " " + qa)
    return texts


def build_lm_tokenizer(texts, vocab_size, out):
    """A byte-level BPE (GPT-2's scheme, trained on the world's text) saved as an OPT-style
    ``GPT2Tokenizer``: ``</s>`` as BOS/EOS prepended to every sequence, ``<pad>``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Tokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([t + "\n" for t in texts], vocab_size=vocab_size, min_frequency=2,
                            special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False)
    raw = os.path.join(out, "bpe")
    os.makedirs(raw, exist_ok=True)
    bpe.save_model(raw)
    tokenizer = GPT2Tokenizer(os.path.join(raw, "vocab.json"), os.path.join(raw, "merges.txt"),
                              bos_token="</s>", eos_token="</s>", unk_token="<unk>",
                              pad_token="<pad>", add_bos_token=True)
    return tokenizer


def train_lm(world, settings, arch, out, seed, device):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    texts = lm_texts(world, "train")
    val_texts = lm_texts(world, "val")
    tokenizer = build_lm_tokenizer(texts, arch["llm"]["vocab_size"], out)
    llm = dict(arch["llm"])
    llm.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = OPTForCausalLM(OPTConfig(**llm)).to(device)
    batch, steps = int(settings.get("batch_size", 64)), int(settings.get("steps", 300))
    opt = torch.optim.AdamW(model.parameters(), lr=settings.get("lr", 1e-3),
                            weight_decay=settings.get("weight_decay", 0.01))

    def encode(chunk):
        enc = tokenizer([t + "\n" for t in chunk], padding="longest", return_tensors="pt")
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        return enc.to(device), labels.to(device)

    def batch_loss():
        idx = torch.randint(len(texts), (batch,), generator=gen).tolist()
        enc, labels = encode([texts[i] for i in idx])
        return model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels).loss

    _train("lm", model, opt, steps, settings.get("lr", 1e-3), settings.get("warmup", 20), batch_loss)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val_texts), 128):
            enc, labels = encode(val_texts[i:i + 128])
            n = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                           labels=labels).loss.item() * n
            count += n
    ppl = math.exp(total / count)
    _log("lm", "val perplexity %.2f per token (%d tokens of held-out captions and question/answer "
         "text; vocabulary %d)" % (ppl, count, len(tokenizer)))
    model.cpu().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"val_perplexity": ppl, "vocab_size": len(tokenizer)}


TRAINERS = {"clip": train_clip, "mae": train_mae, "lm": train_lm}


def check_device(device):
    """``device`` as given ("cpu", "cuda", "cuda:1"), or a one-line error if it cannot be used."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError("--device %r: not a torch device; use cpu or cuda" % device) from None
    if kind not in ("cpu", "cuda"):
        raise ValueError("--device %r: the miniature world runs on cpu or cuda" % device)
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device %r: CUDA is not available here; use --device cpu" % device)
    return device


def ensure_part(cfg, part, cache_dir=None, link=True, device="cpu"):
    """The folder of one pretrained part (trained now unless cached), linked as
    output/<name>/assets/<part>. Builds the world first if needed. ``device`` is where it
    trains; it is recorded in the cache entry but is not part of its key (a part trained on
    a GPU is the same configuration, drawn with other random numbers)."""
    world = world_build.ensure_world(cfg, cache_dir, link=link)
    settings = dict(cfg.get(part, {}))
    arch = world_config.architecture()
    seed = int(settings.pop("seed", 0))
    threads = settings.pop("threads", None)
    k = cache.key(part, dict(cfg.get(part, {})), arch, world_config.world_key(cfg))
    path = cache.entry(cache.cache_root(cache_dir), part, k)
    if cache.is_done(path):
        _log(part, "reusing %s (%s)" % (path, json.dumps(cache.read_done(path).get("result", {}))))
    else:
        if threads:
            torch.set_num_threads(int(threads))
        _log(part, "training on %s -> %s" % (device, path))
        cache.build(path, lambda tmp: {"result": TRAINERS[part](world, settings, arch, tmp, seed, device)},
                    {"kind": part, "settings": cfg.get(part, {}), "architecture": arch,
                     "world": world, "device": device})
        _log(part, "done in %.0f s" % cache.read_done(path)["seconds"])
    if link:
        cache.publish(path, os.path.join(world_config.assets_dir(cfg), part))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description="Pretrain a frozen part in the miniature world (cached).")
    parser.add_argument("part", choices=PARTS + ("all",))
    parser.add_argument("--config", default="mini", help="world config: a path or a packaged name (mini, ci, finding)")
    parser.add_argument("--cache-dir", default=None, help="cache root (default: $%s or ~/.cache/lavis_xformer/mini)" % cache.ENV_CACHE)
    parser.add_argument("--device", default="cpu", help="where the parts train: cpu (default) or cuda")
    args = parser.parse_args(argv)
    try:
        check_device(args.device)
    except ValueError as e:
        parser.error(str(e))
    try:
        cfg = world_config.load(args.config)
    except (ValueError, FileNotFoundError) as e:  # a bad world config: one line, exit status 2
        parser.error(str(e))
    for part in (PARTS if args.part == "all" else (args.part,)):
        print(ensure_part(cfg, part, args.cache_dir, device=args.device))


if __name__ == "__main__":
    sys.exit(main())
