"""Model configuration (ml_collections), shared by training, export and evaluation configs."""
from __future__ import annotations

import ml_collections

from terrafm_jax.models import variants


def get_model_config(variant: str = "B/16") -> ml_collections.ConfigDict:
  """Encoder + DINO head hyper-parameters for a variant string (METHOD.md 1, 2)."""
  variants.decode_variant(variant)  # fail early on a bad string
  cfg = ml_collections.ConfigDict()
  cfg.variant = variant
  cfg.img_size = 224                # pos-embed grid = img_size / patch (14x14 for /16)
  cfg.drop_path_rate = 0.0          # pretraining uses 0.1 (set by the training config)
  cfg.attn_dim_mult = 3             # A = 3 d ("from Panopticon design")
  cfg.fusion_heads = 16             # cross-attention fusion heads (not published; Panopticon)
  cfg.fusion_queries = 5            # N_q = 5 in the final model
  cfg.dtype = "float32"             # compute dtype: float32 | bfloat16
  cfg.param_dtype = "float32"
  cfg.remat = False                 # rematerialise each block in the backward pass
  cfg.remat_policy = "full"         # with remat: "full" (save nothing in a block) | "dots"
  # Run the blocks as one jax.lax.scan over their stacked parameters: the compiler sees one block
  # instead of `depth`, which cuts compile time on accelerators. The parameter tree keeps its
  # blocks_{i} layout (checkpoints and conversion are unchanged); drop-path draws differ from the
  # unrolled loop, the values are otherwise the same.
  cfg.scan_layers = False
  # ViT attention (models/attention.py): "auto" picks per platform when the step is lowered (CPU
  # the fused float32 kernel of terrafm_jax/ops, GPU cuDNN in bf16, TPU and others the XLA
  # core); "core" (that XLA core everywhere), "xla" / "cudnn" (jax.nn.dot_product_attention with
  # that implementation), "pallas" (the Pallas TPU splash kernel on TPU, the core elsewhere).
  cfg.attention_impl = "auto"
  cfg.out_indices = variants.DEFAULT_OUT_INDICES[variants.size_name(variant)]
  cfg.head = ml_collections.ConfigDict(dict(
      out_dim=65536, hidden_dim=2048, bottleneck_dim=256, nlayers=3))
  return cfg
