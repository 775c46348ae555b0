// Python bindings of the fedhpc kernels: the module fedhpc._kernels (its
// contract is src/fedhpc/_kernels.pyi).
//
// Every function validates all of its arguments before touching memory and
// raises ValueError naming the argument. Arrays are taken as py::array and
// never converted, so a float64 array or a strided view is rejected instead
// of being silently copied. Outputs are allocated while the GIL is held; the
// computation runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <initializer_list>
#include <string>

#include "fedhpc.hpp"

namespace py = pybind11;

namespace {

using fedhpc::Half;

// Exclusive bound on lengths whose positions are stored as uint32 indices.
constexpr uint64_t kIndexLimit = uint64_t{1} << 32;

[[noreturn]] void fail(const std::string& message) { throw py::value_error(message); }

struct DType {
  char kind;
  py::ssize_t itemsize;
  const char* name;
};
constexpr DType kFloat32{'f', 4, "float32"};
constexpr DType kFloat16{'f', 2, "float16"};
constexpr DType kUint8{'u', 1, "uint8"};
constexpr DType kUint16{'u', 2, "uint16"};
constexpr DType kUint32{'u', 4, "uint32"};
constexpr DType kInt64{'i', 8, "int64"};

bool has_dtype(const py::array& a, const DType& t) {
  const py::dtype d = a.dtype();
  constexpr char kNativeOrder = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? '<' : '>';
  const char order = d.byteorder();
  return d.kind() == t.kind && d.itemsize() == t.itemsize && (order == '=' || order == '|' || order == kNativeOrder);
}

// Raises ValueError unless `a` has one of `dtypes`, `ndim` dimensions, is
// C-contiguous and aligned (and writeable when asked).
void check_array(const py::array& a, const char* name, std::initializer_list<DType> dtypes, int ndim = 1,
                 bool writeable = false) {
  bool dtype_ok = false;
  std::string expected;
  for (const DType& t : dtypes) {
    dtype_ok = dtype_ok || has_dtype(a, t);
    expected += (expected.empty() ? "" : " or ") + std::string(t.name);
  }
  if (!dtype_ok) fail(std::string(name) + " must have dtype " + expected + ", got " + py::str(a.dtype()).cast<std::string>());
  if (a.ndim() != ndim) {
    fail(std::string(name) + " must be " + std::to_string(ndim) + "-D, got " + std::to_string(a.ndim()) + "-D");
  }
  if (!(a.flags() & py::array::c_style)) fail(std::string(name) + " must be C-contiguous");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) fail(std::string(name) + " must be aligned");
  if (writeable && !a.writeable()) fail(std::string(name) + " must be writeable");
}

size_t length(const py::array& a) { return static_cast<size_t>(a.size()); }

template <class T>
const T* data_of(const py::array& a) {
  return static_cast<const T*>(a.data());
}

template <class T>
T* mutable_data_of(py::array& a) {
  return static_cast<T*>(a.mutable_data());
}

void check_index_length(size_t n, const char* name) {
  if (n >= kIndexLimit) fail(std::string(name) + " must be shorter than 2**32 (indices are uint32)");
}

void check_range(int64_t v, int64_t lo, int64_t hi, const char* name) {
  if (v < lo || v > hi) {
    fail(std::string(name) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
         std::to_string(v));
  }
}

// For in-place kernels: `out` may be the very same buffer as `in` when
// `identical_ok` (element i only reads element i), never a partial overlap.
void check_no_overlap(const py::array& out, const char* out_name, const py::array& in, const char* in_name,
                      bool identical_ok) {
  const auto* o = static_cast<const char*>(out.data());
  const auto* i = static_cast<const char*>(in.data());
  const bool disjoint = o + out.nbytes() <= i || i + in.nbytes() <= o || out.nbytes() == 0 || in.nbytes() == 0;
  const bool identical = o == i && out.nbytes() == in.nbytes();
  if (!disjoint && !(identical_ok && identical)) {
    fail(std::string(out_name) + " must not overlap " + in_name + (identical_ok ? " (except being the same array)" : ""));
  }
}

// A Python int in [0, max] (seed, crc); pybind11 would raise TypeError or
// OverflowError for a negative or too large value.
uint64_t unsigned_arg(const py::object& v, uint64_t max, const char* name) {
  const py::int_ as_int = py::reinterpret_steal<py::int_>(PyNumber_Index(v.ptr()));
  if (!as_int) {
    PyErr_Clear();
    fail(std::string(name) + " must be an integer");
  }
  const unsigned long long u = PyLong_AsUnsignedLongLong(as_int.ptr());
  if (PyErr_Occurred() || u > max) {
    PyErr_Clear();
    fail(std::string(name) + " must be in [0, " + std::to_string(max) + "]");
  }
  return u;
}

// A 1-D contiguous buffer of bytes: bytes, bytearray, a memoryview of bytes
// or a uint8 array (checked like every other array argument).
class ByteView {
 public:
  ByteView(const py::object& obj, const char* name) {
    if (py::isinstance<py::array>(obj)) check_array(py::reinterpret_borrow<py::array>(obj), name, {kUint8});
    if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_RECORDS_RO) != 0) {
      PyErr_Clear();
      fail(std::string(name) + " must be bytes-like (bytes, bytearray, memoryview or a uint8 array)");
    }
    const std::string format = view_.format ? view_.format : "B";
    std::string problem;
    if (view_.itemsize != 1 || format != "B") {
      problem = " must hold unsigned bytes, got item format '" + format + "'";
    } else if (view_.ndim > 1) {
      problem = " must be 1-D";
    } else if (!PyBuffer_IsContiguous(&view_, 'C')) {
      problem = " must be C-contiguous";
    }
    if (!problem.empty()) {
      PyBuffer_Release(&view_);
      fail(std::string(name) + problem);
    }
  }
  ~ByteView() { PyBuffer_Release(&view_); }
  ByteView(const ByteView&) = delete;
  ByteView& operator=(const ByteView&) = delete;

  const uint8_t* data() const { return static_cast<const uint8_t*>(view_.buf); }
  size_t size() const { return static_cast<size_t>(view_.len); }

 private:
  Py_buffer view_{};
};

// ---- casts --------------------------------------------------------------------

template <class In, class Out, void (*Kernel)(const In*, Out*, size_t)>
py::array cast_array(const py::array& x, const char* name, const DType& in_dtype) {
  check_array(x, name, {in_dtype});
  py::array_t<Out> out(x.size());
  {
    py::gil_scoped_release nogil;
    Kernel(data_of<In>(x), out.mutable_data(), length(x));
  }
  return out;
}

// ---- quantization -------------------------------------------------------------

void check_bits_block(int64_t bits, int64_t block) {
  if (bits != 8 && bits != 4) fail("bits must be 8 or 4, got " + std::to_string(bits));
  if (block <= 0) fail("block must be > 0, got " + std::to_string(block));
}

py::tuple quantize(const py::array& x, int64_t bits, int64_t block, bool stochastic, const py::object& seed_obj) {
  check_array(x, "x", {kFloat32, kFloat16});
  check_bits_block(bits, block);
  const uint64_t seed = unsigned_arg(seed_obj, ~uint64_t{0}, "seed");
  const size_t n = length(x);
  const size_t nblocks = (n + static_cast<size_t>(block) - 1) / static_cast<size_t>(block);
  py::array_t<uint8_t> codes(static_cast<py::ssize_t>(fedhpc::quantized_bytes(n, static_cast<int>(bits))));
  py::array_t<float> scales(static_cast<py::ssize_t>(nblocks));
  const bool half = has_dtype(x, kFloat16);
  {
    py::gil_scoped_release nogil;
    if (half) {
      fedhpc::quantize(data_of<Half>(x), n, static_cast<int>(bits), static_cast<size_t>(block), stochastic, seed,
                       codes.mutable_data(), scales.mutable_data());
    } else {
      fedhpc::quantize(data_of<float>(x), n, static_cast<int>(bits), static_cast<size_t>(block), stochastic, seed,
                       codes.mutable_data(), scales.mutable_data());
    }
  }
  return py::make_tuple(codes, scales);
}

py::array dequantize(const py::array& codes, const py::array& scales, int64_t n, int64_t bits, int64_t block) {
  check_array(codes, "codes", {kUint8});
  check_array(scales, "scales", {kFloat32});
  check_bits_block(bits, block);
  if (n < 0) fail("n must be >= 0, got " + std::to_string(n));
  const size_t count = static_cast<size_t>(n);
  const size_t want_codes = fedhpc::quantized_bytes(count, static_cast<int>(bits));
  if (length(codes) != want_codes) {
    fail("codes must hold " + std::to_string(want_codes) + " bytes for n=" + std::to_string(n) + " and bits=" +
         std::to_string(bits) + ", got " + std::to_string(length(codes)));
  }
  const size_t want_scales = (count + static_cast<size_t>(block) - 1) / static_cast<size_t>(block);
  if (length(scales) != want_scales) {
    fail("scales must hold " + std::to_string(want_scales) + " values for n=" + std::to_string(n) +
         " and block=" + std::to_string(block) + ", got " + std::to_string(length(scales)));
  }
  py::array_t<float> out(n);
  {
    py::gil_scoped_release nogil;
    fedhpc::dequantize(data_of<uint8_t>(codes), data_of<float>(scales), count, static_cast<int>(bits),
                       static_cast<size_t>(block), out.mutable_data());
  }
  return out;
}

py::array uniform(const py::object& seed_obj, int64_t n) {
  const uint64_t seed = unsigned_arg(seed_obj, ~uint64_t{0}, "seed");
  if (n < 0) fail("n must be >= 0, got " + std::to_string(n));
  py::array_t<float> out(n);
  {
    py::gil_scoped_release nogil;
    fedhpc::uniform(seed, static_cast<size_t>(n), out.mutable_data());
  }
  return out;
}

// ---- sparsification -------------------------------------------------------------

void check_k(int64_t k, size_t n) {
  if (k < 0 || static_cast<uint64_t>(k) > n) {
    fail("k must be in [0, n] with n = " + std::to_string(n) + ", got " + std::to_string(k));
  }
}

py::tuple topk(const py::array& x, int64_t k) {
  check_array(x, "x", {kFloat32});
  const size_t n = length(x);
  check_index_length(n, "x");
  check_k(k, n);
  py::array_t<uint32_t> idx(k);
  py::array_t<float> vals(k);
  {
    py::gil_scoped_release nogil;
    fedhpc::topk(data_of<float>(x), n, static_cast<size_t>(k), idx.mutable_data(), vals.mutable_data());
  }
  return py::make_tuple(idx, vals);
}

py::tuple topk_ef(const py::array& update, py::array residual, int64_t k) {
  check_array(update, "update", {kFloat32});
  check_array(residual, "residual", {kFloat32}, 1, true);
  const size_t n = length(residual);
  if (length(update) != n) {
    fail("update and residual must have the same length, got " + std::to_string(length(update)) + " and " +
         std::to_string(n));
  }
  check_index_length(n, "residual");
  check_no_overlap(residual, "residual", update, "update", true);
  check_k(k, n);
  py::array_t<uint32_t> idx(k);
  py::array_t<float> vals(k);
  {
    py::gil_scoped_release nogil;
    fedhpc::topk_ef(data_of<float>(update), mutable_data_of<float>(residual), n, static_cast<size_t>(k),
                    idx.mutable_data(), vals.mutable_data());
  }
  return py::make_tuple(idx, vals);
}

py::array randk_indices(int64_t n, int64_t k, const py::object& seed_obj) {
  if (n < 0 || static_cast<uint64_t>(n) >= kIndexLimit) fail("n must be in [0, 2**32), got " + std::to_string(n));
  check_k(k, static_cast<size_t>(n));
  const uint64_t seed = unsigned_arg(seed_obj, ~uint64_t{0}, "seed");
  py::array_t<uint32_t> out(k);
  {
    py::gil_scoped_release nogil;
    fedhpc::randk_indices(static_cast<uint64_t>(n), static_cast<uint64_t>(k), seed, out.mutable_data());
  }
  return out;
}

// Raises ValueError for the first index >= n (and, when asked, the first one
// not above its predecessor).
void check_indices(const py::array& idx, const char* name, uint64_t n, bool strictly_ascending) {
  size_t bad;
  {
    py::gil_scoped_release nogil;
    bad = fedhpc::first_invalid_index(data_of<uint32_t>(idx), length(idx), n, strictly_ascending);
  }
  if (bad == length(idx)) return;
  const uint32_t* v = data_of<uint32_t>(idx);
  const std::string at = std::string(name) + "[" + std::to_string(bad) + "] = " + std::to_string(v[bad]);
  if (v[bad] >= n) fail(at + " is out of range for length " + std::to_string(n));
  fail(at + " is not greater than " + name + "[" + std::to_string(bad - 1) + "] = " + std::to_string(v[bad - 1]) +
       " (indices must be strictly ascending)");
}

py::array gather(const py::array& x, const py::array& idx) {
  check_array(x, "x", {kFloat32});
  check_array(idx, "idx", {kUint32});
  check_indices(idx, "idx", length(x), false);
  py::array_t<float> out(idx.size());
  {
    py::gil_scoped_release nogil;
    fedhpc::gather(data_of<float>(x), data_of<uint32_t>(idx), length(idx), out.mutable_data());
  }
  return out;
}

// ---- index coding --------------------------------------------------------------

int64_t rice_param(int64_t n, int64_t k) {
  if (n < 0 || static_cast<uint64_t>(n) > kIndexLimit) fail("n must be in [0, 2**32], got " + std::to_string(n));
  check_k(k, static_cast<size_t>(n));
  return fedhpc::rice_param(static_cast<uint64_t>(n), static_cast<uint64_t>(k));
}

py::array rice_encode(const py::array& idx, int64_t b) {
  check_array(idx, "idx", {kUint32});
  check_range(b, 0, 31, "b");
  check_indices(idx, "idx", kIndexLimit, true);
  const size_t k = length(idx);
  uint64_t bits;
  {
    py::gil_scoped_release nogil;
    bits = fedhpc::rice_encoded_bits(data_of<uint32_t>(idx), k, static_cast<unsigned>(b));
  }
  py::array_t<uint8_t> out(static_cast<py::ssize_t>((bits + 7) / 8));
  {
    py::gil_scoped_release nogil;
    fedhpc::rice_encode(data_of<uint32_t>(idx), k, static_cast<unsigned>(b), out.mutable_data());
  }
  return out;
}

py::array rice_decode(const py::object& buf, int64_t k, int64_t n, int64_t b) {
  const ByteView bytes(buf, "buf");
  if (n < 0 || static_cast<uint64_t>(n) > kIndexLimit) fail("n must be in [0, 2**32], got " + std::to_string(n));
  check_k(k, static_cast<size_t>(n));
  check_range(b, 0, 31, "b");
  // Every code takes at least 1 + b bits: reject an impossible k before allocating.
  if (static_cast<uint64_t>(k) * static_cast<uint64_t>(1 + b) > uint64_t{8} * bytes.size()) {
    fail("rice_decode: stream truncated (" + std::to_string(bytes.size()) + " bytes cannot hold " +
         std::to_string(k) + " codes with b=" + std::to_string(b) + ")");
  }
  py::array_t<uint32_t> out(k);
  std::string error;
  {
    py::gil_scoped_release nogil;
    error = fedhpc::rice_decode(bytes.data(), bytes.size(), static_cast<size_t>(k), static_cast<uint64_t>(n),
                                static_cast<unsigned>(b), out.mutable_data());
  }
  if (!error.empty()) fail("rice_decode: " + error);
  return out;
}

// ---- aggregation ----------------------------------------------------------------

void axpy(py::array acc, const py::array& x, double w) {
  check_array(acc, "acc", {kFloat32}, 1, true);
  check_array(x, "x", {kFloat32, kFloat16});
  if (length(x) != length(acc)) {
    fail("acc and x must have the same length, got " + std::to_string(length(acc)) + " and " +
         std::to_string(length(x)));
  }
  check_no_overlap(acc, "acc", x, "x", true);
  const bool half = has_dtype(x, kFloat16);
  const float wf = static_cast<float>(w);
  py::gil_scoped_release nogil;
  if (half) {
    fedhpc::axpy(mutable_data_of<float>(acc), data_of<Half>(x), length(acc), wf);
  } else {
    fedhpc::axpy(mutable_data_of<float>(acc), data_of<float>(x), length(acc), wf);
  }
}

void sparse_axpy(py::array acc, const py::array& idx, const py::array& vals, double w) {
  check_array(acc, "acc", {kFloat32}, 1, true);
  check_array(idx, "idx", {kUint32});
  check_array(vals, "vals", {kFloat32});
  if (length(idx) != length(vals)) {
    fail("idx and vals must have the same length, got " + std::to_string(length(idx)) + " and " +
         std::to_string(length(vals)));
  }
  check_no_overlap(acc, "acc", idx, "idx", false);
  check_no_overlap(acc, "acc", vals, "vals", false);
  check_indices(idx, "idx", length(acc), true);
  py::gil_scoped_release nogil;
  fedhpc::sparse_axpy(mutable_data_of<float>(acc), data_of<uint32_t>(idx), data_of<float>(vals), length(idx),
                      static_cast<float>(w));
}

// (rows, n) of a validated 2-D stack.
std::pair<size_t, size_t> stack_shape(const py::array& stack) {
  check_array(stack, "stack", {kFloat32}, 2);
  return {static_cast<size_t>(stack.shape(0)), static_cast<size_t>(stack.shape(1))};
}

py::array median(const py::array& stack) {
  const auto [rows, n] = stack_shape(stack);
  if (rows == 0) fail("stack must have at least one row");
  py::array_t<float> out(static_cast<py::ssize_t>(n));
  {
    py::gil_scoped_release nogil;
    fedhpc::median(data_of<float>(stack), rows, n, out.mutable_data());
  }
  return out;
}

py::array trimmed_mean(const py::array& stack, int64_t trim) {
  const auto [rows, n] = stack_shape(stack);
  if (trim < 0 || 2 * static_cast<uint64_t>(trim) >= rows) {
    fail("trim must satisfy 0 <= 2*trim < K with K = " + std::to_string(rows) + ", got " + std::to_string(trim));
  }
  py::array_t<float> out(static_cast<py::ssize_t>(n));
  {
    py::gil_scoped_release nogil;
    fedhpc::trimmed_mean(data_of<float>(stack), rows, n, static_cast<size_t>(trim), out.mutable_data());
  }
  return out;
}

double l2_norm(const py::array& x) {
  check_array(x, "x", {kFloat32});
  py::gil_scoped_release nogil;
  return fedhpc::l2_norm(data_of<float>(x), length(x));
}

py::array sq_dists(const py::array& stack) {
  const auto [rows, n] = stack_shape(stack);
  py::array_t<double> out({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(rows)});
  {
    py::gil_scoped_release nogil;
    fedhpc::sq_dists(data_of<float>(stack), rows, n, out.mutable_data());
  }
  return out;
}

py::array closest_mean(const py::array& stack, int64_t beta) {
  const auto [rows, n] = stack_shape(stack);
  if (beta < 1 || static_cast<uint64_t>(beta) > rows) {
    fail("beta must satisfy 1 <= beta <= K with K = " + std::to_string(rows) + ", got " + std::to_string(beta));
  }
  py::array_t<float> out(static_cast<py::ssize_t>(n));
  {
    py::gil_scoped_release nogil;
    fedhpc::closest_mean(data_of<float>(stack), rows, n, static_cast<size_t>(beta), out.mutable_data());
  }
  return out;
}

py::array sq_dists_to(const py::array& stack, const py::array& point) {
  const auto [rows, n] = stack_shape(stack);
  check_array(point, "point", {kFloat32});
  if (length(point) != n) {
    fail("point has " + std::to_string(length(point)) + " values, the stack's rows " + std::to_string(n));
  }
  py::array_t<double> out(static_cast<py::ssize_t>(rows));
  {
    py::gil_scoped_release nogil;
    fedhpc::sq_dists_to(data_of<float>(stack), rows, n, data_of<float>(point), out.mutable_data());
  }
  return out;
}

// ---- the fixed-point ring -------------------------------------------------------

py::tuple ring_fold(py::array acc, const py::array& vals, double factor, double limit, const py::object& idx_obj,
                    bool subtract, bool assign) {
  check_array(acc, "acc", {kInt64}, 1, true);
  check_array(vals, "vals", {kFloat32});
  check_no_overlap(acc, "acc", vals, "vals", false);
  if (!(std::isfinite(factor) && factor > 0)) fail("factor must be finite and > 0, got " + std::to_string(factor));
  if (!(limit > 0 && limit <= 9.2e18)) fail("limit must be in (0, 9.2e18], got " + std::to_string(limit));
  const uint32_t* idx = nullptr;
  py::array idx_arr;
  if (idx_obj.is_none()) {
    if (length(vals) != length(acc)) {
      fail("without idx, acc and vals must have the same length, got " + std::to_string(length(acc)) + " and " +
           std::to_string(length(vals)));
    }
  } else {
    idx_arr = py::reinterpret_borrow<py::array>(idx_obj);
    check_array(idx_arr, "idx", {kUint32});
    if (length(idx_arr) != length(vals)) {
      fail("idx and vals must have the same length, got " + std::to_string(length(idx_arr)) + " and " +
           std::to_string(length(vals)));
    }
    check_no_overlap(acc, "acc", idx_arr, "idx", false);
    check_indices(idx_arr, "idx", length(acc), true);
    idx = data_of<uint32_t>(idx_arr);
    if (assign) fail("assign is for a dense fold (idx None)");
  }
  fedhpc::RingFold r;
  {
    py::gil_scoped_release nogil;
    r = fedhpc::ring_fold(mutable_data_of<int64_t>(acc), data_of<float>(vals), length(vals), idx, factor, limit,
                          subtract, assign);
  }
  return py::make_tuple(r.kind, r.index, r.sumsq);
}

void ring_mean(const py::array& acc, py::array out, double inv, const py::object& cov_obj) {
  check_array(acc, "acc", {kInt64});
  check_array(out, "out", {kFloat32}, 1, true);
  if (length(out) != length(acc)) {
    fail("acc and out must have the same length, got " + std::to_string(length(acc)) + " and " +
         std::to_string(length(out)));
  }
  check_no_overlap(out, "out", acc, "acc", false);
  const int64_t* cov = nullptr;
  py::array cov_arr;
  if (!cov_obj.is_none()) {
    cov_arr = py::reinterpret_borrow<py::array>(cov_obj);
    check_array(cov_arr, "coverage", {kInt64});
    if (length(cov_arr) != length(acc)) fail("coverage and acc must have the same length");
    check_no_overlap(out, "out", cov_arr, "coverage", false);
    cov = data_of<int64_t>(cov_arr);
  } else if (!std::isfinite(inv)) {
    fail("inv must be finite, got " + std::to_string(inv));
  }
  py::gil_scoped_release nogil;
  fedhpc::ring_mean(data_of<int64_t>(acc), cov, length(acc), inv, mutable_data_of<float>(out));
}

// ---- seeds ---------------------------------------------------------------------

uint64_t seed_sequence(const py::sequence& parts) {
  std::vector<uint64_t> values;
  values.reserve(parts.size());
  for (const py::handle p : parts) values.push_back(unsigned_arg(py::reinterpret_borrow<py::object>(p), ~uint64_t{0}, "part"));
  return fedhpc::seed_sequence_u64(values.data(), values.size());
}

// ---- integrity ------------------------------------------------------------------

int64_t crc32c(const py::object& data, const py::object& crc_obj) {
  const ByteView bytes(data, "data");
  const auto crc = static_cast<uint32_t>(unsigned_arg(crc_obj, 0xffffffffu, "crc"));
  py::gil_scoped_release nogil;
  return fedhpc::crc32c(bytes.data(), bytes.size(), crc);
}

}  // namespace

#ifndef FEDHPC_WITH_CUDA
int fedhpc::cuda_device_count() noexcept { return 0; }
#endif

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "fedhpc compute kernels (C++/OpenMP); see fedhpc/_kernels.pyi for the contract.";

  m.def(
      "set_num_threads",
      [](int64_t n) {
        if (n < 1 || n > 4096) fail("n must be in [1, 4096], got " + std::to_string(n));
        fedhpc::set_num_threads(static_cast<int>(n));
      },
      py::arg("n"));
  m.def("get_num_threads", &fedhpc::num_threads);
  m.def("cuda_device_count", &fedhpc::cuda_device_count);
#ifdef FEDHPC_WITH_CUDA
  m.def("built_with_cuda", [] { return true; });
#else
  m.def("built_with_cuda", [] { return false; });
#endif

  m.def(
      "to_fp16", [](const py::array& x) { return cast_array<float, uint16_t, fedhpc::to_fp16>(x, "x", kFloat32); },
      py::arg("x"));
  m.def(
      "from_fp16",
      [](const py::array& h) { return cast_array<uint16_t, float, fedhpc::from_fp16>(h, "h", kUint16); },
      py::arg("h"));
  m.def(
      "to_bf16", [](const py::array& x) { return cast_array<float, uint16_t, fedhpc::to_bf16>(x, "x", kFloat32); },
      py::arg("x"));
  m.def(
      "from_bf16",
      [](const py::array& h) { return cast_array<uint16_t, float, fedhpc::from_bf16>(h, "h", kUint16); },
      py::arg("h"));

  m.def("quantize", &quantize, py::arg("x"), py::arg("bits"), py::arg("block"), py::arg("stochastic") = false,
        py::arg("seed") = 0);
  m.def("dequantize", &dequantize, py::arg("codes"), py::arg("scales"), py::arg("n"), py::arg("bits"),
        py::arg("block"));
  m.def("uniform", &uniform, py::arg("seed"), py::arg("n"));

  m.def("topk", &topk, py::arg("x"), py::arg("k"));
  m.def("topk_ef", &topk_ef, py::arg("update"), py::arg("residual"), py::arg("k"));
  m.def("randk_indices", &randk_indices, py::arg("n"), py::arg("k"), py::arg("seed"));
  m.def("gather", &gather, py::arg("x"), py::arg("idx"));

  m.def("rice_param", &rice_param, py::arg("n"), py::arg("k"));
  m.def("rice_encode", &rice_encode, py::arg("idx"), py::arg("b"));
  m.def("rice_decode", &rice_decode, py::arg("buf"), py::arg("k"), py::arg("n"), py::arg("b"));

  m.def("axpy", &axpy, py::arg("acc"), py::arg("x"), py::arg("w"));
  m.def("sparse_axpy", &sparse_axpy, py::arg("acc"), py::arg("idx"), py::arg("vals"), py::arg("w"));
  m.def("median", &median, py::arg("stack"));
  m.def("trimmed_mean", &trimmed_mean, py::arg("stack"), py::arg("trim"));
  m.def("l2_norm", &l2_norm, py::arg("x"));
  m.def("sq_dists", &sq_dists, py::arg("stack"));
  m.def("closest_mean", &closest_mean, py::arg("stack"), py::arg("beta"));
  m.def("sq_dists_to", &sq_dists_to, py::arg("stack"), py::arg("point"));

  m.def("ring_fold", &ring_fold, py::arg("acc"), py::arg("vals"), py::arg("factor"), py::arg("limit"),
        py::arg("idx") = py::none(), py::arg("subtract") = false, py::arg("assign") = false);
  m.def("ring_mean", &ring_mean, py::arg("acc"), py::arg("out"), py::arg("inv"), py::arg("coverage") = py::none());

  m.def("crc32c", &crc32c, py::arg("data"), py::arg("crc") = 0);
  m.def("seed_sequence", &seed_sequence, py::arg("parts"));
}
