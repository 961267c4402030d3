"""X-Former's image path cut into its parts, each a callable timed alone.

Inputs are built once from a real forward pass, so every part sees the shapes and dtypes it
sees inside a training step: frozen encoders run forward only (under no_grad, as in the model),
trained parts forward + backward, under the same autocast as the training step.
"""
import torch

from bench.inputs import CAPTIONS, images, texts


def component_steps(stage1, stage2, batch, args):
    """{name: callable} for the stage-1 X-Former ``stage1`` and the stage-2 ``stage2``."""
    cuda = torch.device(args.device).type == "cuda"
    amp = cuda and not args.no_amp
    stage1.train()
    stage2.train()
    image = images(stage1, batch, args.device)
    query_tokens = stage1.query_tokens.expand(batch, -1, -1)

    def autocast():
        return torch.autocast("cuda", enabled=amp)

    def query_pass(context):
        return stage1.Qformer.bert(query_embeds=query_tokens, encoder_hidden_states=context,
                                   encoder_attention_mask=stage1.ones(context),
                                   return_dict=True).last_hidden_state

    with torch.no_grad(), autocast():
        clip = stage1.encode_clip(image)
        masked = stage1.encode_side(image, stage1.mask_ratio)
        side = masked.tokens.float()
        queries = query_pass(clip).float()
        enriched = stage1.fusion(queries, side)[1].float()

    def backward(*outputs):
        sum(o.float().mean() for o in outputs).backward()

    def clip_vit():
        stage1.encode_clip(image)  # the frozen ViT under inference mode, ln_vision after it

    def clip_vit_no_grad():
        with torch.no_grad(), stage1.maybe_autocast():
            stage1.ln_vision(stage1.visual_encoder(image))

    def mae_encoder(ratio):
        def run():
            with torch.no_grad():
                stage1.encode_side(image, ratio)
        return run

    def mae_decoder():
        z = enriched.detach().requires_grad_()
        with autocast():
            loss = stage1.mae_branch.reconstruction_loss(z, masked)
        backward(loss)

    def qformer():
        with autocast():
            out = query_pass(clip)
        backward(out)
        stage1.zero_grad(set_to_none=True)

    def xformer_block():
        q = queries.detach().requires_grad_()
        with autocast():
            out = stage1.fusion(q, side)
        backward(*out)
        stage1.zero_grad(set_to_none=True)

    prefix_shape = (batch, stage2.query_tokens.shape[1], stage2.llm_model.config.hidden_size)
    captions = texts(CAPTIONS, batch)

    def llm():
        prefix = torch.randn(prefix_shape, device=args.device, requires_grad=True)
        with stage2.llm_autocast():
            loss = stage2.lm_loss(prefix, {}, captions)
        backward(loss)

    return {
        "clip_vit (fwd)": clip_vit,
        "clip_vit (fwd, no_grad, not inference mode)": clip_vit_no_grad,
        "mae_encoder 50% masked (fwd)": mae_encoder(stage1.mask_ratio),
        "mae_encoder unmasked (fwd)": mae_encoder(0.0),
        "mae_decoder + loss (fwd+bwd)": mae_decoder,
        "qformer query pass (fwd+bwd)": qformer,
        "xformer_block (fwd+bwd)": xformer_block,
        "llm lm loss (fwd+bwd)": llm,
    }
