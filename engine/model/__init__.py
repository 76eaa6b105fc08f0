"""The model: the Llama-style transformer, its fused kernels, the attention kernels and generation."""
