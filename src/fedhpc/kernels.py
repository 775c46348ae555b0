"""Public face of the compiled kernels in :mod:`fedhpc._kernels`.

The compiled module is private; this module re-exports it so that user code and
the codecs import one stable name, and adds the small helpers the Python side
needs to feed the kernels (they accept only C-contiguous arrays of the exact
dtype and raise ``ValueError`` otherwise, by design: a silent conversion would
hide an extra copy on the hot path).
"""

from __future__ import annotations

import numpy as np

from fedhpc._kernels import (  # noqa: F401  (re-exported API)
    axpy,
    built_with_cuda,
    closest_mean,
    crc32c,
    cuda_device_count,
    dequantize,
    from_bf16,
    from_fp16,
    gather,
    get_num_threads,
    l2_norm,
    median,
    quantize,
    randk_indices,
    rice_decode,
    rice_encode,
    rice_param,
    ring_fold,
    seed_sequence,
    ring_mean,
    set_num_threads,
    sparse_axpy,
    sq_dists,
    sq_dists_to,
    to_bf16,
    to_fp16,
    topk,
    topk_ef,
    trimmed_mean,
    uniform,
)


def as_f32(x) -> np.ndarray:
    """Return ``x`` as a flat C-contiguous float32 array, copying only if needed.

    Accepts NumPy arrays and CPU torch tensors (anything ``np.asarray`` takes).
    """
    if hasattr(x, "detach"):  # torch.Tensor: share memory instead of copying
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1))
