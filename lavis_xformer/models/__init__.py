"""LAVIS models of the plugin; importing this registers them."""
from lavis_xformer.models.xformer import XFormer  # noqa: F401
from lavis_xformer.models.xformer_llm import XFormerOPT, XFormerT5  # noqa: F401
from lavis_xformer.models.blip2_twin import Blip2OPTTwin  # noqa: F401
