"""``fp16``: IEEE half precision."""

from fedhpc import kernels as K
from fedhpc.compress._half import HalfCodec


class FP16(HalfCodec):
    """IEEE binary16, round to nearest even: 2 bytes per element (+ header).
    Values above 65504 in magnitude overflow, so encode refuses them."""

    name = "fp16"
    codec_id = 1
    _to = staticmethod(K.to_fp16)
    _from = staticmethod(K.from_fp16)

    def _encode_dense(self, x, seed):
        if x.size and max(float(x.max()), -float(x.min())) > 65504.0:
            raise ValueError("codec 'fp16': delta has values beyond the fp16 range (|x| > 65504); use bf16")
        return super()._encode_dense(x, seed)
