"""Logical axis names carried by every parameter and constrained activation.

Models only name axes; the mapping to mesh axes ("rules") lives in the training config, so the same
model shards as pure data parallel, FSDP or FSDP + tensor parallel without code changes.
"""
from __future__ import annotations

BATCH = "batch"            # examples
SEQ = "seq"                # tokens (CLS + patches)
EMBED = "embed"            # ViT width d
MLP = "mlp"                # ViT MLP hidden
QKV = "qkv"                # fused q|k|v outputs (3 d)
HEADS = "heads"            # concatenated head outputs entering the attention projection (d)
ATTN_IN = "attn_in"        # input side of the A x A token-projection matrices
ATTN_DIM = "attn_dim"      # A = 3 d, the patch-embedding space
PATCH_IN = "patch_in"      # conv kernel input channels (never sharded; kernel h/w are unnamed)
POS = "pos"                # position-embedding rows
QUERIES = "queries"        # fusion queries
HEAD_IN = "head_in"        # DINO head input (= d)
HEAD_HIDDEN = "head_hidden"
BOTTLENECK = "bottleneck"
PROTOTYPES = "prototypes"  # DINO head output K

# Activations at block boundaries.
ACTIVATION = (BATCH, SEQ, EMBED)

# Rules a config may start from: FSDP over "fsdp", tensor parallel over "model", batch over both
# data axes. Every logical name appears, so a mesh without an axis simply leaves it replicated.
DEFAULT_RULES: tuple[tuple[str, object], ...] = (
    (BATCH, ("data", "fsdp")),
    (SEQ, None),
    (EMBED, "fsdp"),
    (MLP, "model"),
    (QKV, "model"),
    (HEADS, "model"),
    (ATTN_IN, "fsdp"),
    (ATTN_DIM, "model"),
    (PATCH_IN, None),
    (POS, None),
    (QUERIES, None),
    (HEAD_IN, "fsdp"),
    (HEAD_HIDDEN, "model"),
    (BOTTLENECK, None),
    (PROTOTYPES, "model"),
)
