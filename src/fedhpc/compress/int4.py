"""``int4``: blockwise 4-bit quantization."""

from fedhpc.compress._blockwise import BlockwiseCodec


class Int4(BlockwiseCodec):
    """int4 codes, two per byte, one float32 scale per block: ceil(n/2) + 4*ceil(n/block) bytes (+ header)."""

    name = "int4"
    codec_id = 4
    bits = 4
