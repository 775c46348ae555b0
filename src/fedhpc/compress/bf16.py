"""``bf16``: bfloat16."""

from fedhpc import kernels as K
from fedhpc.compress._half import HalfCodec


class BF16(HalfCodec):
    """bfloat16 (float32 range, 8-bit mantissa), round to nearest even: 2 bytes per element (+ header)."""

    name = "bf16"
    codec_id = 2
    _to = staticmethod(K.to_bf16)
    _from = staticmethod(K.from_bf16)
