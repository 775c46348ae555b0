"""Fuzz every codec's decoder with mutated frames (run in a subprocess by test_fuzz.py).

Exit status 0 means every mutated frame either decoded to a finite float32
vector of the declared length or raised CorruptUpdateError; any other
exception exits 1, and a crash of the interpreter shows as a signal.
"""

import argparse
import struct
import sys
import traceback

import numpy as np

from fedhpc import kernels as K
from fedhpc.compress import CODECS, get_codec, wire
from fedhpc.errors import CorruptUpdateError

PARAMS = {"topk": {"ratio": 0.05}, "randk": {"ratio": 0.05}, "topk-int8": {"ratio": 0.05, "block": 16},
          "int8": {"block": 16}, "int4": {"block": 16}}


def mutate(frame: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(frame)
    kind = rng.integers(6)
    if kind == 0:  # truncate
        return bytes(buf[: rng.integers(len(buf))])
    if kind == 1:  # extend
        return bytes(buf) + rng.bytes(int(rng.integers(1, 64)))
    if kind == 2:  # flip bits anywhere
        for _ in range(rng.integers(1, 4)):
            pos = rng.integers(len(buf))
            buf[pos] ^= 1 << int(rng.integers(8))
    elif kind == 3:  # overwrite a header/param field with an extreme value
        pos = int(rng.integers(4, min(len(buf), wire.HEADER.size + 16) - 3))
        struct.pack_into("<I", buf, pos, int(rng.choice([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, len(buf), 1 << 20])))
    elif kind == 4:  # random bytes in the body
        if len(buf) > wire.HEADER.size:
            pos = int(rng.integers(wire.HEADER.size, len(buf)))
            buf[pos:] = rng.bytes(len(buf) - pos)
    else:  # pure garbage of a plausible length
        return rng.bytes(int(rng.integers(0, 2 * len(buf))))
    if rng.random() < 0.7:  # re-sign the frame, so the checks behind the checksum are exercised
        if len(buf) >= wire.HEADER.size:
            struct.pack_into("<I", buf, wire.HEADER.size - 4, 0)
            struct.pack_into("<I", buf, wire.HEADER.size - 4, K.crc32c(bytes(buf)))
    return bytes(buf)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=2000, help="mutations per codec")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    stats = {}
    for name in CODECS:
        codec = get_codec(name, **PARAMS.get(name, {}))
        frames = [codec.encode(rng.standard_normal(n).astype(np.float32), seed=n) for n in (0, 1, 33, 257)]
        ok = rejected = 0
        for i in range(args.iterations):
            bad = mutate(frames[i % len(frames)], rng)
            try:
                out = codec.decode(bad)
            except CorruptUpdateError:
                rejected += 1
                continue
            except Exception:
                print(f"codec {name}: unexpected exception for frame {bad.hex()}", file=sys.stderr)
                traceback.print_exc()
                return 1
            n = wire.HEADER.unpack_from(bad)[5]
            if out.dtype != np.float32 or out.shape != (n,) or not np.isfinite(out).all():
                print(f"codec {name}: decode returned a bad array for frame {bad.hex()}", file=sys.stderr)
                return 1
            ok += 1
        stats[name] = (ok, rejected)
    print(" ".join(f"{k}:{v[0]}ok/{v[1]}rejected" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
