"""Update codecs: compress a float32 delta into self-describing, checksummed bytes.

>>> from fedhpc.compress import get_codec, ErrorFeedback
>>> codec = get_codec("topk-int8", ratio=0.01)
>>> state = ErrorFeedback(delta.size)            # one per client, kept by the caller
>>> payload = codec.encode(delta, state, seed=7)
>>> restored = codec.decode(payload, expected_n=delta.size)

The registry is explicit: one codec per module, listed here by name.
"""

from __future__ import annotations

from fedhpc.compress.base import DEFAULT_MAX_N, Codec, ErrorFeedback
from fedhpc.compress.bf16 import BF16
from fedhpc.compress.fp16 import FP16
from fedhpc.compress.int4 import Int4
from fedhpc.compress.int8 import Int8
from fedhpc.compress.none import NoCompression
from fedhpc.compress.randk import RandK
from fedhpc.compress.topk import TopK
from fedhpc.compress.topk_int8 import TopKInt8
from fedhpc.registry import build

CODECS: dict[str, type[Codec]] = {
    cls.name: cls for cls in (NoCompression, FP16, BF16, Int8, Int4, TopK, RandK, TopKInt8)
}
assert len({cls.codec_id for cls in CODECS.values()}) == len(CODECS), "codec ids must be unique"


def get_codec(name: str, **params) -> Codec:
    """Build the codec registered as ``name`` with its parameters.

    Raises ``ValueError`` naming the codec and the allowed names or parameters.
    """
    return build("codec", CODECS, name, params)


__all__ = ["CODECS", "Codec", "DEFAULT_MAX_N", "ErrorFeedback", "get_codec"]
