"""Codecs: round trips, wire sizes, error feedback, and rejection of bad frames."""

import struct

import numpy as np
import pytest

from fedhpc import kernels as K
from fedhpc.compress import CODECS, ErrorFeedback, get_codec, wire
from fedhpc.errors import CorruptUpdateError

pytestmark = pytest.mark.unit

ALL = sorted(CODECS)


def vec(n, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def refresh_crc(buf: bytearray) -> bytes:
    """Recompute the checksum after a deliberate edit, so deeper checks are reached."""
    struct.pack_into("<I", buf, wire.HEADER.size - 4, 0)
    struct.pack_into("<I", buf, wire.HEADER.size - 4, K.crc32c(bytes(buf)))
    return bytes(buf)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("n", [0, 1, 7, 1000, 4097])
def test_round_trip_shape_and_dtype(name, n):
    codec = get_codec(name)
    x = vec(n)
    out = codec.decode(codec.encode(x), expected_n=n)
    assert out.dtype == np.float32 and out.shape == (n,)
    assert len(codec.encode(x)) <= codec.wire_size(n)


def test_lossless_and_cast_codecs_match_numpy():
    x = vec(5000)
    assert np.array_equal(get_codec("none").decode(get_codec("none").encode(x)), x)
    fp16 = get_codec("fp16")
    assert np.array_equal(fp16.decode(fp16.encode(x)), x.astype(np.float16).astype(np.float32))
    bf = get_codec("bf16").decode(get_codec("bf16").encode(x))
    assert np.all(np.abs(bf - x) <= np.abs(x) * 2.0**-8)


@pytest.mark.parametrize("name,qmax", [("int8", 127), ("int4", 7)])
@pytest.mark.parametrize("block", [1, 64, 100])
def test_blockwise_error_bound(name, qmax, block):
    x = vec(1000)
    out = get_codec(name, block=block).decode(get_codec(name, block=block).encode(x))
    for b in range(0, x.size, block):
        scale = np.abs(x[b : b + block]).max() / qmax
        assert np.abs(out[b : b + block] - x[b : b + block]).max() <= scale * 0.5 * (1 + 1e-5)


@pytest.mark.parametrize("name", ["topk", "topk-int8"])
def test_topk_keeps_the_largest(name):
    x = vec(10000)
    codec = get_codec(name, ratio=0.05)
    out = codec.decode(codec.encode(x))
    kept = np.flatnonzero(out)
    expect = np.sort(np.argsort(-np.abs(x), kind="stable")[:500])
    assert np.array_equal(kept, expect)
    tol = 0 if name == "topk" else np.abs(x).max() / 127
    assert np.abs(out[kept] - x[kept]).max() <= tol


def test_randk_is_seeded_and_exact():
    x = vec(10000)
    codec = get_codec("randk", k=100)
    a, b, c = (codec.encode(x, seed=s).tobytes() for s in (1, 1, 2))
    assert a == b and a != c
    out = codec.decode(a)
    kept = np.flatnonzero(out)
    assert kept.size == 100 and np.array_equal(out[kept], x[kept])


def test_stochastic_rounding_depends_only_on_seed():
    x = vec(4096)
    codec = get_codec("int8", stochastic=True)
    assert np.array_equal(codec.encode(x, seed=3), codec.encode(x.copy(), seed=3))
    assert not np.array_equal(codec.encode(x, seed=3), codec.encode(x, seed=4))


@pytest.mark.parametrize("name", ["none", "int8", "topk-int8"])
def test_headroom_leaves_untouched_room_in_front_of_the_same_frame(name):
    x = vec(1000)
    codec = get_codec(name)
    plain, roomy = codec.encode(x, seed=5), codec.encode(x, seed=5, headroom=64)
    assert plain.dtype == np.uint8 and roomy.nbytes == plain.nbytes + 64
    assert np.array_equal(roomy[64:], plain)
    assert np.array_equal(codec.decode(roomy[64:]), codec.decode(plain))


def test_none_decodes_to_a_view_of_the_received_buffer():
    """The lossless path must not copy the update a second time on the server."""
    x = vec(1000)
    frame = get_codec("none").encode(x)
    out = get_codec("none").decode(frame)
    assert np.array_equal(out, x) and np.shares_memory(out, frame)


def test_wire_size_targets_for_one_million_values():
    n = 1 << 20
    x = vec(n)
    dense = 4 * n
    assert len(get_codec("topk", ratio=0.01).encode(x)) <= 0.013 * dense
    assert len(get_codec("topk-int8", ratio=0.01).encode(x)) <= 0.007 * dense
    assert len(get_codec("int8").encode(x)) <= 0.26 * dense
    assert len(get_codec("int4").encode(x)) <= 0.135 * dense


@pytest.mark.parametrize("name", ALL)
def test_error_feedback_conserves_mass(name):
    """Over rounds, what was sent plus what is still owed equals what was given."""
    codec = get_codec(name)
    n = 3000
    state = ErrorFeedback(n)
    given = np.zeros(n, np.float64)
    sent = np.zeros(n, np.float64)
    for r in range(6):
        d = vec(n, seed=r)
        given += d
        sent += codec.decode(codec.encode(d, state, seed=r))
    assert np.allclose(sent + state.residual, given, atol=1e-4)


def test_encode_rejects_bad_input():
    codec = get_codec("topk")
    with pytest.raises(ValueError, match="NaN or Inf"):
        codec.encode(np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="error-feedback state"):
        codec.encode(vec(10), ErrorFeedback(11))
    with pytest.raises(ValueError, match="fp16 range"):
        get_codec("fp16").encode(np.array([1e6], np.float32))


def test_encode_accepts_torch_and_strided_input():
    import torch

    x = vec(200)
    codec = get_codec("none")
    assert np.array_equal(codec.decode(codec.encode(torch.from_numpy(x))), x)
    assert np.array_equal(codec.decode(codec.encode(x[::2])), x[::2])


def test_get_codec_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown codec 'zip'.*topk"):
        get_codec("zip")
    with pytest.raises(ValueError, match="unknown parameter.*bits.*allowed"):
        get_codec("int8", bits=3)
    with pytest.raises(ValueError, match="ratio must be in"):
        get_codec("topk", ratio=1.5)
    with pytest.raises(ValueError, match="either ratio or k"):
        get_codec("topk", ratio=0.1, k=3)
    with pytest.raises(ValueError, match="block"):
        get_codec("int4", block=0)


def test_decode_rejects_with_a_reason():
    x = vec(1000)
    frame = get_codec("topk").encode(x).tobytes()
    topk = get_codec("topk")
    with pytest.raises(CorruptUpdateError, match="truncated"):
        topk.decode(frame[:10])
    with pytest.raises(CorruptUpdateError, match="length mismatch"):
        topk.decode(frame[:-1])
    with pytest.raises(CorruptUpdateError, match="checksum"):
        topk.decode(frame[:-1] + bytes([frame[-1] ^ 1]))
    with pytest.raises(CorruptUpdateError, match="magic"):
        topk.decode(b"XXXX" + frame[4:])
    with pytest.raises(CorruptUpdateError, match="expected 'int8'"):
        get_codec("int8").decode(frame)
    with pytest.raises(CorruptUpdateError, match="the model has 999"):
        topk.decode(frame, expected_n=999)
    with pytest.raises(CorruptUpdateError, match="more than the allowed"):
        get_codec("topk", max_n=500).decode(frame)
    with pytest.raises(CorruptUpdateError, match="bytes-like"):
        topk.decode(12345)


def test_decode_rejects_non_finite_payload_even_with_valid_checksum():
    x = vec(16)
    buf = bytearray(get_codec("none").encode(x))
    struct.pack_into("<f", buf, wire.HEADER.size + 8, float("nan"))
    with pytest.raises(CorruptUpdateError, match="NaN or Inf"):
        get_codec("none").decode(refresh_crc(buf))


def test_decode_rejects_hostile_sizes_before_allocating():
    """A frame that claims a huge k with a tiny body is refused, not allocated."""
    x = vec(1000)
    buf = bytearray(get_codec("topk").encode(x))
    struct.pack_into("<I", buf, wire.HEADER.size, 1000)  # k = n, body is far too short
    with pytest.raises(CorruptUpdateError, match="truncated"):
        get_codec("topk").decode(refresh_crc(buf))
    buf = bytearray(get_codec("int8").encode(x))
    struct.pack_into("<I", buf, wire.HEADER.size, 0)  # block = 0
    with pytest.raises(CorruptUpdateError, match="block"):
        get_codec("int8").decode(refresh_crc(buf))


@pytest.mark.parametrize("name, params", [("none", {}), ("fp16", {}), ("bf16", {}), ("int8", {"block": 256}),
                                          ("int8", {"block": 7}), ("int4", {"block": 5}), ("int4", {"block": 256}),
                                          ("topk", {"ratio": 0.1}), ("topk-int8", {"ratio": 0.1}),
                                          ("randk", {"ratio": 0.1})])
def test_an_opened_frame_decodes_any_range_to_the_bits_of_the_whole_decode(name, params):
    """What the robust strategies read block by block instead of holding dense copies."""
    codec = get_codec(name, **params)
    rng = np.random.default_rng(0)
    for n in (1, 13, 70001):
        frame = codec.encode(rng.normal(0, 1, n).astype(np.float32), seed=1)
        whole, opened = codec.decode(frame), codec.open(frame, expected_n=n)
        for lo, hi in ((0, n), (0, min(n, 3)), (n // 3, n), (n // 5, n // 2 + 1), (n - 1, n)):
            if lo < hi:
                assert opened.range(lo, hi).tobytes() == whole[lo:hi].tobytes(), (n, lo, hi)
        assert opened.norm == K.l2_norm(whole) or opened.norm == pytest.approx(K.l2_norm(whole), rel=1e-12)
    with pytest.raises(CorruptUpdateError):
        codec.open(frame, expected_n=n + 1)


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_every_codec_refuses_a_non_finite_delta_and_leaves_its_error_feedback_as_it_was(name, bad):
    """Some codecs find NaN/Inf in the pass their kernel makes anyway (the quantizer's block
    scales, the top-k's largest magnitudes): the refusal must be the same, state untouched."""
    codec = get_codec(name, **({"ratio": 0.01} if name in ("topk", "randk", "topk-int8") else {}))
    for n, at in ((1, 0), (1000, 999), (70001, 31337)):
        x = vec(n, seed=n)
        x[at] = bad
        for state in (None, ErrorFeedback(n, vec(n, seed=1) * np.float32(0.01))):
            before = None if state is None else state.residual.copy()
            with pytest.raises(ValueError, match="NaN or Inf"):
                codec.encode(x, state)
            if state is not None:
                assert state.residual.tobytes() == before.tobytes()
