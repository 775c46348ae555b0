"""Codec base classes and the error-feedback state.

Following GRACE/Horovod, a codec is a small stateless object (encode/decode);
error feedback is separate per-client state that the caller owns, passes to
``encode`` and can checkpoint.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from typing import ClassVar, NamedTuple
from collections.abc import Callable

import numpy as np

from fedhpc import kernels as K
from fedhpc.compress import wire
from fedhpc.errors import CorruptUpdateError

#: Default bound on the element count a decoder accepts (1 GiB of float32).
DEFAULT_MAX_N = 1 << 28


class Decoded(NamedTuple):
    """A decoded update of ``n`` values: ``vals`` at the ascending uint32 positions
    ``idx``, zeros elsewhere; ``idx`` None means ``vals`` is the dense vector."""

    n: int
    idx: np.ndarray | None
    vals: np.ndarray

    def norm(self) -> float:
        """The L2 norm of the update (NaN or Inf when a value is)."""
        return K.l2_norm(np.ascontiguousarray(self.vals))


class ErrorFeedback:
    """Per-client error-feedback residual: what compression has not sent yet.

    ``encode`` adds the residual to the delta before compressing and keeps what
    was lost, so over rounds every coordinate's mass is eventually transmitted.
    """

    def __init__(self, n: int, residual: np.ndarray | None = None):
        if residual is None:
            residual = np.zeros(n, dtype=np.float32)
        residual = K.as_f32(residual)
        if residual.size != n:
            raise ValueError(f"error-feedback residual has {residual.size} elements, expected {n}")
        self.residual = residual

    @property
    def n(self) -> int:
        return self.residual.size


class Codec(ABC):
    """Encode a float32 delta into self-describing bytes, and back.

    Subclasses set ``name``, ``codec_id`` and ``params`` (the struct of their
    parameter block in the frame) and implement :meth:`_encode` and
    :meth:`_decode_parts` (dense codecs: :meth:`DenseCodec._decode`).
    """

    name: ClassVar[str]
    codec_id: ClassVar[int]
    params: ClassVar[struct.Struct] = struct.Struct("<")
    lossless: ClassVar[bool] = False  # error feedback is pointless when True
    sparse: ClassVar[bool] = False  # a frame names the positions it sends (secure aggregation would reveal them)

    def __init__(self, max_n: int = DEFAULT_MAX_N):
        if not 0 < max_n < 1 << 32:
            raise ValueError(f"codec '{self.name}': max_n must be in [1, 2**32), got {max_n}")
        self.max_n = max_n

    def encode(self, delta, state: ErrorFeedback | None = None, *, seed: int = 0, headroom: int = 0,
               alloc: Callable[[int], np.ndarray] | None = None) -> np.ndarray:
        """Encode ``delta`` (float32 vector) into a frame, a uint8 array; with
        ``state``, apply error feedback.

        ``seed`` drives stochastic parts (stochastic rounding, random-k) and is
        recorded in the frame where the decoder needs it. ``headroom`` bytes
        are left free in front of the frame for the caller's own header;
        ``alloc(nbytes)`` supplies the output array (default: a new one).
        """
        x = K.as_f32(delta)
        if x.size > self.max_n:
            raise ValueError(f"codec '{self.name}': delta has {x.size} elements, more than max_n={self.max_n}")
        if not self._checks_finite(state) and not np.isfinite(K.l2_norm(x)):
            refuse_nonfinite(self)
        if state is not None and state.n != x.size:
            raise ValueError(f"codec '{self.name}': error-feedback state has {state.n} elements, delta has {x.size}")
        params, body = self._encode(x, state, seed & 0xFFFFFFFFFFFFFFFF)
        return wire.pack(self.codec_id, x.size, self.params.pack(*params), body, headroom, alloc)

    def decode(self, data, expected_n: int | None = None) -> np.ndarray:
        """Decode a frame made by :meth:`encode` into a dense float32 array (for the
        lossless ``none`` codec, a view of ``data``: nothing is copied).

        Raises :class:`~fedhpc.errors.CorruptUpdateError` for anything
        malformed, for a frame of another codec, for a length other than
        ``expected_n``, or for a decoded vector that holds NaN/Inf.
        """
        part = self.decode_parts(data, expected_n)
        return part.vals if part.idx is None else _scatter(part.n, part.idx, part.vals)

    def open(self, data, expected_n: int | None = None) -> Opened:
        """Verify a frame once and keep it as it came (compressed), to be decoded later
        range by range (:meth:`Opened.range`): what the rules that need every update of a
        round hold instead of dense copies. Raises like :meth:`decode`; its norm is
        computed here, from a decode that is let go at once."""
        frame, params = self._verified(data, expected_n)
        part = self._parts(frame, params)
        norm = self._finite_norm(part)
        if part.idx is not None:
            return Opened(self, part.n, norm, part)
        return Opened(self, part.n, norm, None, params, frame.body)

    def decode_parts(self, data, expected_n: int | None = None, check_finite: bool = True) -> Decoded:
        """Decode a frame into what it carries without densifying it: the values and,
        for a sparsifier, their ascending positions (see :class:`Decoded`).

        Raises like :meth:`decode`; ``check_finite=False`` leaves the NaN/Inf check to
        the caller (the ring fold does it in the same pass as the sum).
        """
        part = self._parts(*self._verified(data, expected_n))
        if check_finite:
            self._finite_norm(part)
        return part

    def _verified(self, data, expected_n: int | None) -> tuple[wire.Frame, tuple]:
        """The checksum-verified frame of this codec and ``expected_n`` values, and its parameters."""
        frame = wire.unpack(data, self.max_n)
        if frame.codec_id != self.codec_id:
            raise CorruptUpdateError(f"update was encoded with codec id {frame.codec_id}, expected '{self.name}' (id {self.codec_id})")
        if expected_n is not None and frame.n != expected_n:
            raise CorruptUpdateError(f"update has {frame.n} elements, the model has {expected_n}")
        if frame.params.nbytes != self.params.size:
            raise CorruptUpdateError(f"'{self.name}' parameter block is {frame.params.nbytes} bytes, expected {self.params.size}")
        return frame, self.params.unpack(frame.params)

    def _parts(self, frame: wire.Frame, params: tuple) -> Decoded:
        try:
            idx, vals = self._decode_parts(frame.n, params, frame.body)
        except CorruptUpdateError:
            raise
        except ValueError as exc:  # a kernel's argument check caught an inconsistency
            raise CorruptUpdateError(f"'{self.name}' update is malformed: {exc}") from exc
        return Decoded(frame.n, idx, vals)

    def _finite_norm(self, part: Decoded) -> float:
        """The decoded values' L2 norm; CorruptUpdateError if any is NaN or Inf."""
        norm = part.norm()
        if not np.isfinite(norm):
            raise CorruptUpdateError(f"'{self.name}' update decodes to NaN or Inf values")
        return norm

    @abstractmethod
    def _decode_parts(self, n: int, params: tuple, body: memoryview) -> tuple[np.ndarray | None, np.ndarray]:
        """(ascending positions or None for dense, values) of a verified frame body;
        raise CorruptUpdateError on inconsistency."""

    @abstractmethod
    def _encode(self, x: np.ndarray, state: ErrorFeedback | None, seed: int) -> tuple[tuple, list]:
        """Return (parameter tuple for ``params``, list of body buffers)."""

    def _checks_finite(self, state: ErrorFeedback | None) -> bool:
        """Whether :meth:`_encode` itself refuses a non-finite delta (with :func:`refuse_nonfinite`)
        before touching ``state``, in the pass it makes anyway: then :meth:`encode` makes no
        pass of its own for it."""
        return False

    def wire_size(self, n: int) -> int:
        """Bytes of the frame for an n-element delta (upper bound for variable-size coding)."""
        return wire.HEADER.size + self.params.size + self._body_size(n)

    @abstractmethod
    def _body_size(self, n: int) -> int: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def describe(self) -> str:
        """The codec's parameters as ``key=value`` text, for logs."""
        return f"max_n={self.max_n}"


class Opened:
    """A verified frame of ``n`` values, kept compressed; ``norm`` is its L2 norm.

    A sparsifier's values and positions are decoded at once (they are small);
    a dense codec's frame is decoded range by range on demand."""

    def __init__(self, codec: Codec, n: int, norm: float, part: Decoded | None, params: tuple = (),
                 body: memoryview | None = None):
        self.codec, self.n, self.norm, self.part, self.params, self.body = codec, n, norm, part, params, body

    def range(self, lo: int, hi: int) -> np.ndarray:
        """Values ``[lo, hi)`` as float32 (possibly a view of the frame)."""
        if self.part is None:
            assert isinstance(self.codec, DenseCodec) and self.body is not None
            return self.codec._decode_range(self.n, self.params, self.body, lo, hi)
        idx, vals = self.part.idx, self.part.vals
        assert idx is not None
        a, b = np.searchsorted(idx, [lo, hi])
        out = np.zeros(hi - lo, dtype=np.float32)
        out[idx[a:b] - lo] = vals[a:b]
        return out

    def dense(self) -> np.ndarray:
        """Every value, as a new (or, for ``none``, a view) float32 vector."""
        return self.range(0, self.n)


class DenseCodec(Codec):
    """A codec that transforms every element; error feedback keeps the rounding error."""

    def _encode(self, x, state, seed):
        if state is None:
            return self._encode_dense(x, seed)
        target = x + state.residual
        params, body = self._encode_dense(target, seed)  # refuses a non-finite target when _checks_finite
        # residual = what the receiver will not reconstruct
        np.subtract(target, self._decode(x.size, params, _join(body)), out=state.residual)
        return params, body

    @abstractmethod
    def _encode_dense(self, x: np.ndarray, seed: int) -> tuple[tuple, list]: ...

    def _decode_parts(self, n, params, body):
        return None, self._decode(n, params, body)

    @abstractmethod
    def _decode(self, n: int, params: tuple, body: memoryview) -> np.ndarray:
        """Decode a verified frame body; raise CorruptUpdateError on inconsistency."""

    @abstractmethod
    def _decode_range(self, n: int, params: tuple, body: memoryview, lo: int, hi: int) -> np.ndarray:
        """Values ``[lo, hi)`` of a body :meth:`_decode` has already accepted."""


def _scatter(n: int, idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    K.sparse_axpy(out, idx, vals, 1.0)
    return out


def _join(body: list) -> memoryview:
    return memoryview(b"".join(memoryview(b).cast("B") for b in body))


def refuse_nonfinite(codec: Codec) -> None:
    """Raise the ValueError of a delta with NaN or Inf."""
    raise ValueError(f"codec '{codec.name}': delta contains NaN or Inf; refusing to encode a diverged update")


def expect_body(codec: Codec, body: memoryview, expected: int) -> None:
    """Raise unless the body has exactly ``expected`` bytes."""
    if body.nbytes != expected:
        raise CorruptUpdateError(f"'{codec.name}' body is {body.nbytes} bytes, expected {expected}")


def check_ratio_k(name: str, ratio: float | None, k: int | None) -> tuple[float | None, int | None]:
    """Validate a sparsifier's parameters: exactly one of ``ratio`` in (0, 1] or ``k`` >= 0."""
    if k is not None and ratio is not None:
        raise ValueError(f"codec '{name}': give either ratio or k, not both")
    if k is None and ratio is None:
        ratio = 0.01
    if k is not None and (not isinstance(k, int) or k < 0):
        raise ValueError(f"codec '{name}': k must be an integer >= 0, got {k!r}")
    if ratio is not None and not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"codec '{name}': ratio must be in (0, 1], got {ratio!r}")
    return (None if ratio is None else float(ratio)), k
