"""``none``: the raw float32 vector."""

import numpy as np

from fedhpc.compress.base import DenseCodec, expect_body


class NoCompression(DenseCodec):
    """No compression: 4 bytes per element (+ 32-byte header)."""

    name = "none"
    codec_id = 0
    lossless = True

    def _encode_dense(self, x, seed):
        return (), [x]

    def _decode(self, n, params, body):
        expect_body(self, body, 4 * n)
        return np.frombuffer(body, dtype=np.float32)

    def _decode_range(self, n, params, body, lo, hi):
        return np.frombuffer(body, dtype=np.float32, count=hi - lo, offset=4 * lo)

    def _body_size(self, n):
        return 4 * n
