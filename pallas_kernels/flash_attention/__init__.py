"""Flash attention kernels (TPU Mosaic, GPU Triton) with on-device block sparsity; see driver.py."""

from pallas_kernels.flash_attention.reference import reference_flash_attention

__all__ = ["reference_flash_attention"]
