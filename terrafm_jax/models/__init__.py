"""Flax (linen) modules of the TerraFM encoder and its DINO head."""
