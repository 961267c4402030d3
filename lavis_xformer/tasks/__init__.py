"""Tasks of the plugin; importing this registers them into LAVIS's registry."""
from lavis_xformer.tasks.xformer_pretrain import XFormerPretrainTask  # noqa: F401
from lavis_xformer.tasks.xformer_vqa import XFormerVQATask  # noqa: F401
from lavis_xformer.tasks.xformer_caption import XFormerCaptionTask  # noqa: F401
from lavis_xformer.tasks.xformer_retrieval import XFormerRetrievalTask  # noqa: F401
from lavis_xformer.tasks.xformer_zeroshot import XFormerClassificationTask, XFormerSugarCrepeTask  # noqa: F401
