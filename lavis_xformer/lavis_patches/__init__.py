"""Every work-around of a Salesforce LAVIS 1.0.2 defect, listed in one place.

LAVIS itself is never edited. Each module below fixes one defect; its docstring names the
LAVIS file/function, says what the patch does, and how to remove it once LAVIS is fixed.
Nothing here is applied at import time: the plugin calls these functions and classes in place
of LAVIS's defective code.

Modules (one defect each)
    distributed         ``Blip2Qformer.forward``, ``RunnerBase.train``, ``BaseTask.evaluation``
                        need a process group (rank, world size, gathers, barriers);
                        single-process fallbacks.
    init_distributed    ``dist_utils.init_distributed_mode`` always uses nccl and CUDA;
                        torchrun on CPUs gets gloo.
    metric_sync         ``SmoothedValue.synchronize_between_processes`` reduces on "cuda";
                        end-of-epoch statistics under gloo.
    eva_vit_meta        ``eva_vit.VisionTransformer.__init__`` calls ``.item()`` on a linspace;
                        the EVA ViT can be built on the meta device.
    generation_cache    ``BertLMHeadModel``/``OPTForCausalLM``/``T5ForConditionalGeneration``
                        drop transformers 4.26's ``past_key_values``; subclasses pass it on.
    load_logging        ``Blip2Base.load_from_pretrained`` loads without saying what was
                        missing or unexpected.
    model_type_option   ``Config.build_model_config`` ignores ``--options model.model_type``.

Overrides that stay with the class they override (by design: they are methods of the
plugin's subclass, each with a ``# Defect:`` comment where it is defined)
    training/runner.py  ``RunnerXFormer``:
        ``model``             RunnerBase.model returns None when the model already sits on the
                              run device; DDP always given device_ids (rejected under gloo).
        ``scaler``            a CUDA GradScaler even on a CPU run.
        ``setup_output_dir``  a relative run.output_dir is put inside LAVIS's package dir.
        ``create_loaders``    PrefetchLoader (a torch.cuda.Stream) and pinned memory always.
        ``train``             unconditional dist.barrier(); the loop variable read after an
                              empty loop (a resumed run with no epoch left).
        ``train_epoch``       the loop (LAVIS's ``BaseTask._train_inner_loop``) uses
                              ``torch.cuda.amp.autocast`` even on a CPU run (here
                              ``torch.autocast`` on the run's device type) and reduces its
                              statistics on "cuda" (here ``metric_sync``).
        ``_load_checkpoint``  strict resume fails because checkpoints omit frozen weights
                              (LAVIS issue #153).
    tasks/evaluation.py  ``XFormerEvalTask.evaluation``: ``BaseTask.evaluation`` (called by
        ``RunnerBase.eval_epoch`` without ``cuda_enabled``) moves every batch to CUDA; batches
        go to the model's device. All evaluation tasks inherit it.
    models/base.py  ``PluginModel.load_checkpoint`` / ``load_from_pretrained``:
        ``BaseModel.load_checkpoint`` and ``Blip2Base.load_from_pretrained`` call ``torch.load``
        directly (and cache URLs by file name); here ``sources.load_pretrained`` (the safe
        reader, its refusal message, the fit checks, downloads cached by the whole URL);
        ``init_vision_encoder`` (a fixed EVA URL read with a bare ``torch.load``) is refused.
    models/blip2_twin.py  ``Blip2OPT`` has no ``predict_answers``, so LAVIS's VQA task cannot
        run it; the twin adds one.

Not a defect, so not here: ``models/fused_attention.py`` (a speed feature) and
``training/run_files.py`` (the ``includes:`` of run files, a feature LAVIS lacks).
"""
