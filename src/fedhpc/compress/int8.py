"""``int8``: blockwise 8-bit quantization."""

from fedhpc.compress._blockwise import BlockwiseCodec


class Int8(BlockwiseCodec):
    """int8 codes with one float32 absmax scale per block: n + 4*ceil(n/block) bytes (+ header)."""

    name = "int8"
    codec_id = 3
    bits = 8
