// Exact top-k of every row of a float32 score matrix, as an XLA FFI custom call on CPU.
//
// Each row's k-th largest visible score is found by radix selection on order-preserving 32-bit
// keys: one counting pass over the row builds a histogram of the top 12 key bits, the bin that
// holds the k-th key is read off it, and a second pass collects that bin's keys (a handful) for
// std::nth_element. The result lists, in index order, every key above the k-th and as many keys
// equal to it as the row still needs (merging the keys of higher bins, listed by the second pass,
// with the bin's chosen keys), so the indices come out ascending and ties keep the lowest
// indices, as lax.top_k does. Hidden keys (-inf, NaN) are never selected; subnormal scores count
// as 0, as XLA's CPU comparisons see them. Rows are shared out over a few threads.
//
// Inputs: scores f32[..., S]. Results: indices s32[..., k] (0 in unused slots), valid pred[..., k].

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kTopBits = 12;
constexpr uint32_t kBins = 1u << kTopBits;
constexpr int kMaxThreads = 8;

// Ascending keys for visible scores; 0 marks a hidden one (every visible key is above it).
// Branch-free, so the loop over a row vectorises.
inline uint32_t SortableKey(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  uint32_t key = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  key = std::fabs(x) < 1.17549435e-38f ? 0x80000000u : key;  // subnormals and -0.0 are 0
  return x > -INFINITY ? key : 0u;                             // -inf and NaN are hidden
}

// Per-thread buffers, one row long.
struct Scratch {
  explicit Scratch(int64_t s) : keys(s), above(s), tied(s), tied_keys(s) {}
  std::vector<uint32_t> keys;
  std::vector<int32_t> above, tied;  // indices above the k-th key's bin, and in it
  std::vector<uint32_t> tied_keys;
};

// Writes the indices of the k largest visible keys of one row, ascending, and their validity.
void SelectRow(const float* scores, int64_t s, int64_t k, Scratch& w, int32_t* out, bool* valid) {
  uint32_t* keys = w.keys.data();
  for (int64_t j = 0; j < s; ++j) keys[j] = SortableKey(scores[j]);
  uint32_t histogram[kBins] = {0};
  for (int64_t j = 0; j < s; ++j) histogram[keys[j] >> (32 - kTopBits)] += keys[j] != 0;
  int64_t visible = 0;
  for (uint32_t bin = 0; bin < kBins; ++bin) visible += histogram[bin];
  int64_t slot = 0;
  if (visible <= k) {  // fewer than k visible keys: all of them
    for (int64_t j = 0; j < s; ++j) {
      if (keys[j]) out[slot++] = static_cast<int32_t>(j);
    }
  } else {
    // The bin holding the k-th largest key, and how many keys lie in higher bins.
    int64_t n_above = 0;
    uint32_t bin = kBins - 1;
    while (n_above + histogram[bin] < k) n_above += histogram[bin--];
    int64_t n_above_seen = 0, n_tied = 0;
    for (int64_t j = 0; j < s; ++j) {
      uint32_t key = keys[j], key_bin = key >> (32 - kTopBits);
      if (key_bin > bin) {
        w.above[n_above_seen++] = static_cast<int32_t>(j);
      } else if (key_bin == bin && key) {
        w.tied[n_tied] = static_cast<int32_t>(j);
        w.tied_keys[n_tied++] = key;
      }
    }
    // The (k - n_above)-th largest key of the bin is the row's k-th largest.
    std::vector<uint32_t> ranked(w.tied_keys.begin(), w.tied_keys.begin() + n_tied);
    int64_t rank = k - n_above - 1;
    std::nth_element(ranked.begin(), ranked.begin() + rank, ranked.end(),
                     std::greater<uint32_t>());
    uint32_t threshold = ranked[rank];
    int64_t greater = n_above;
    for (uint32_t key : ranked) greater += key > threshold;
    int64_t ties = k - greater;  // keys equal to the threshold still to take, lowest index first
    // Merge, in index order, the keys above the bin with the bin's chosen keys.
    int64_t a = 0;
    for (int64_t t = 0; t < n_tied; ++t) {
      uint32_t key = w.tied_keys[t];
      if (key > threshold || (key == threshold && ties-- > 0)) {
        while (a < n_above && w.above[a] < w.tied[t]) out[slot++] = w.above[a++];
        out[slot++] = w.tied[t];
      }
    }
    while (a < n_above) out[slot++] = w.above[a++];
  }
  for (int64_t i = 0; i < k; ++i) valid[i] = i < slot;
  for (int64_t i = slot; i < k; ++i) out[i] = 0;
}

ffi::Error TopKImpl(ffi::Buffer<ffi::F32> scores, ffi::ResultBuffer<ffi::S32> indices,
                    ffi::ResultBuffer<ffi::PRED> valid) {
  auto dims = scores.dimensions();
  if (dims.size() < 1) return ffi::Error::InvalidArgument("scores must have a key axis");
  const int64_t s = dims.back();
  const int64_t k = indices->dimensions().back();
  const int64_t rows = s ? static_cast<int64_t>(scores.element_count()) / s : 0;
  if (k < 1 || k > s) return ffi::Error::InvalidArgument("k must be in [1, number of keys]");
  const float* x = scores.typed_data();
  int32_t* out = indices->typed_data();
  bool* ok = valid->typed_data();

  const int64_t threads = std::max<int64_t>(
      1, std::min<int64_t>({static_cast<int64_t>(std::thread::hardware_concurrency()),
                            kMaxThreads, rows / 8}));
  auto work = [&](int64_t first, int64_t last) {
    Scratch scratch(s);
    for (int64_t r = first; r < last; ++r) SelectRow(x + r * s, s, k, scratch, out + r * k, ok + r * k);
  };
  std::vector<std::thread> pool;
  const int64_t chunk = (rows + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    pool.emplace_back(work, std::min(rows, t * chunk), std::min(rows, (t + 1) * chunk));
  }
  work(0, std::min(rows, chunk));
  for (auto& thread : pool) thread.join();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LongctxTopK, TopKImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::PRED>>());
