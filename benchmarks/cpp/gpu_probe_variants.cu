// Where the GPU cache's all-hit lookup spends its time: variants of its probe kernel, all hits, against a
// plain gather of the same rows by index, in one run on one GPU. Not the product kernel (csrc/gpu_cache):
// a bench of design choices before changing it (issue 16). Each variant is the product's scheme
// (a group of WAYS lanes per key probes one set line of WAYS int64 keys, copies the row through L2,
// re-checks the slot's key after the copy through an address dependency, writes the LRU tick) with
// one thing changed:
//   ways     8-way sets (64-byte key lines, 8 lanes per key, 4 keys per warp at once) or 16-way
//   unroll   keys per lane group in flight per step
//   meta     the LRU tick write per hit: on, off, or only when the slot's tick is older (read first)
//   recheck  the seqlock re-check after the copy: on or off (off is unsafe beside inserts)
//   fast     set = high 64 bits of mix64(key) * sets (one multiply) instead of mix64(key) % sets
// Build: nvcc -O3 -std=c++17 -arch=sm_90 -o gpu_probe_variants gpu_probe_variants.cu
// Run:   ./gpu_probe_variants [rows=1048576] [repeats=20]   (prints a Markdown table)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "../../csrc/common/mix.hpp"

#define CHECK(x)                                                                        \
  do {                                                                                  \
    cudaError_t e = (x);                                                                \
    if (e != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

constexpr long long kEmpty = INT64_MIN;

using tritonrec::mix64;  // the product's mixer

template <bool FAST>
__host__ __device__ inline long long set_of(long long key, long long sets) {
  const unsigned long long h = mix64(static_cast<unsigned long long>(key));
  if constexpr (FAST) {
#ifdef __CUDA_ARCH__
    return static_cast<long long>(__umul64hi(h, static_cast<unsigned long long>(sets)));
#else
    return static_cast<long long>((static_cast<unsigned __int128>(h) * static_cast<unsigned long long>(sets)) >> 64);
#endif
  }
  return static_cast<long long>(h % static_cast<unsigned long long>(sets));
}

enum Meta { kNoMeta = 0, kWriteMeta = 1, kReadThenWrite = 2 };

struct Params {
  const long long* set_keys;
  unsigned* meta;
  long long sets;
  int dim4;  // float4s per row
  const float4* rows;
  const long long* keys;
  long long n;
  float4* out;
  int* misses;
  unsigned tick;
  unsigned zero;
};

template <int WAYS, int UNROLL, int META, bool RECHECK, bool FAST>
__global__ void probe(Params p) {
  constexpr int G = 32 / WAYS;  // lane groups per warp
  constexpr unsigned kMask = WAYS == 32 ? 0xFFFFFFFFu : (1u << WAYS) - 1u;
  const int lane = threadIdx.x & 31, g = lane / WAYS, l = lane % WAYS;
  const long long warps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
  for (long long w = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w * G * UNROLL < p.n; w += warps) {
    long long idx[UNROLL], set[UNROLL], key[UNROLL], held[UNROLL];
    bool valid[UNROLL];
    int way[UNROLL];
    unsigned token[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      idx[u] = w * G * UNROLL + u * G + g;
      valid[u] = idx[u] < p.n;
      key[u] = valid[u] ? p.keys[idx[u]] : kEmpty;
      token[u] = 0;
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      set[u] = set_of<FAST>(key[u], p.sets);
      held[u] = valid[u] ? p.set_keys[set[u] * WAYS + l] : kEmpty;
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const unsigned ballot = __ballot_sync(0xFFFFFFFFu, valid[u] && held[u] == key[u]);
      const unsigned match = (ballot >> (WAYS * g)) & kMask;
      way[u] = match ? __ffs(match) - 1 : -1;
      if (way[u] >= 0) {
        const float4* src = p.rows + (set[u] * WAYS + way[u]) * p.dim4;
        float4* dst = p.out + idx[u] * p.dim4;
        for (int k = l; k < p.dim4; k += WAYS) {
          const float4 v = __ldcg(src + k);
          token[u] |= __float_as_uint(v.x);
          dst[k] = v;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      bool torn = false;
      if constexpr (RECHECK) {
        const unsigned after = __reduce_or_sync(0xFFFFFFFFu, token[u] & p.zero);
        torn = way[u] >= 0 && l == way[u] && __ldcg(p.set_keys + set[u] * WAYS + way[u] + after) != key[u];
      }
      const unsigned torn_ballot = __ballot_sync(0xFFFFFFFFu, torn);
      const bool hit = way[u] >= 0 && ((torn_ballot >> (WAYS * g)) & kMask) == 0;
      if (!valid[u]) continue;
      if (hit) {
        if (META != kNoMeta && l == way[u]) {
          unsigned* m = p.meta + set[u] * WAYS + way[u];
          if (META == kWriteMeta || *m != p.tick) *m = p.tick;
        }
      } else if (l == 0) {
        atomicAdd(p.misses, 1);
      }
    }
  }
}

// Round 2: keys 8 or 16 ways probed by LANES lanes (WAYS / LANES keys per lane, one vector load), the row
// width known at compile time (every load of a row issued before its stores), and a register budget
// (__launch_bounds__ minimum blocks per SM: more resident warps, more keys in flight). Fast sets, LRU
// tick written, re-check on: the product's semantics.
template <int WAYS, int LANES>
struct KeyLoad;
template <int WAYS>
struct KeyLoad<WAYS, WAYS> {  // one key per lane
  static constexpr int kPer = 1;
  __device__ static void load(const long long* line, int l, long long* out) { out[0] = line[l]; }
};
template <>
struct KeyLoad<16, 8> {  // two keys per lane, one 16-byte load
  static constexpr int kPer = 2;
  __device__ static void load(const long long* line, int l, long long* out) {
    const longlong2 v = reinterpret_cast<const longlong2*>(line)[l];
    out[0] = v.x;
    out[1] = v.y;
  }
};

template <int WAYS, int LANES, int UNROLL, int DIM4, int MINB>
__global__ void __launch_bounds__(256, MINB) probe2(Params p) {
  using Load = KeyLoad<WAYS, LANES>;
  constexpr int kPer = Load::kPer;
  constexpr int G = 32 / LANES;
  constexpr unsigned kMask = (1u << LANES) - 1u;
  const int lane = threadIdx.x & 31, g = lane / LANES, l = lane % LANES;
  const long long warps = (static_cast<long long>(gridDim.x) * blockDim.x) >> 5;
  for (long long w = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w * G * UNROLL < p.n; w += warps) {
    long long idx[UNROLL], set[UNROLL], key[UNROLL], held[UNROLL][kPer];
    bool valid[UNROLL];
    int way[UNROLL];
    unsigned token[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      idx[u] = w * G * UNROLL + u * G + g;
      valid[u] = idx[u] < p.n;
      key[u] = valid[u] ? p.keys[idx[u]] : kEmpty;
      token[u] = 0;
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      set[u] = set_of<true>(key[u], p.sets);
      if (valid[u]) {
        Load::load(p.set_keys + set[u] * WAYS, l, held[u]);
      } else {
#pragma unroll
        for (int j = 0; j < kPer; ++j) held[u][j] = kEmpty;
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      int mine = -1;  // the way this lane matched, if any
#pragma unroll
      for (int j = 0; j < kPer; ++j)
        if (valid[u] && held[u][j] == key[u]) mine = l * kPer + j;
      const unsigned ballot = __ballot_sync(0xFFFFFFFFu, mine >= 0);
      const unsigned match = (ballot >> (LANES * g)) & kMask;
      const int owner = match ? __ffs(match) - 1 : -1;  // the lane holding the way
      way[u] = __shfl_sync(0xFFFFFFFFu, mine, owner >= 0 ? LANES * g + owner : lane);
      if (owner < 0) way[u] = -1;
      if (way[u] >= 0) {
        const float4* src = p.rows + (set[u] * WAYS + way[u]) * DIM4;
        float4* dst = p.out + idx[u] * DIM4;
        constexpr int kMoves = (DIM4 + LANES - 1) / LANES;
        float4 v[kMoves];
#pragma unroll
        for (int m = 0; m < kMoves; ++m)
          if (m * LANES + l < DIM4) v[m] = __ldcg(src + m * LANES + l);
#pragma unroll
        for (int m = 0; m < kMoves; ++m)
          if (m * LANES + l < DIM4) {
            token[u] |= __float_as_uint(v[m].x);
            dst[m * LANES + l] = v[m];
          }
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const unsigned after = __reduce_or_sync(0xFFFFFFFFu, token[u] & p.zero);
      const bool checker = way[u] >= 0 && l == way[u] / kPer;
      const bool torn = checker && __ldcg(p.set_keys + set[u] * WAYS + way[u] + after) != key[u];
      const unsigned torn_ballot = __ballot_sync(0xFFFFFFFFu, torn);
      const bool hit = way[u] >= 0 && ((torn_ballot >> (LANES * g)) & kMask) == 0;
      if (!valid[u]) continue;
      if (hit) {
        if (checker) p.meta[set[u] * WAYS + way[u]] = p.tick;
      } else if (l == 0) {
        atomicAdd(p.misses, 1);
      }
    }
  }
}

template <int WAYS, int LANES, int UNROLL, int MINB>
void launch2(int dim4, int blocks, Params p) {
  switch (dim4) {
    case 8: probe2<WAYS, LANES, UNROLL, 8, MINB><<<blocks, 256>>>(p); break;
    case 16: probe2<WAYS, LANES, UNROLL, 16, MINB><<<blocks, 256>>>(p); break;
    default: probe2<WAYS, LANES, UNROLL, 32, MINB><<<blocks, 256>>>(p); break;
  }
}

__global__ void gather(const float4* __restrict__ rows, const long long* __restrict__ index, float4* __restrict__ out, long long n, int q) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long t = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; t < n * q; t += stride) {
    const long long i = t / q, j = t - i * q;
    out[t] = rows[index[i] * q + j];
  }
}

struct Table {  // a filled cache of one geometry: keys (sets, ways), rows, and where each query key lives
  long long sets = 0;
  long long *d_keys = nullptr, *d_query = nullptr, *d_slot = nullptr;
  unsigned* d_meta = nullptr;
  std::vector<long long> query_slot;
};

template <bool FAST>
Table build(int ways, long long rows, const std::vector<long long>& cached, const std::vector<long long>& query_pick) {
  Table t;
  t.sets = 2 * rows / ways;  // load 0.5
  std::vector<long long> keys(t.sets * ways, kEmpty);
  std::vector<long long> slot_of(cached.size(), -1);
  for (size_t i = 0; i < cached.size(); ++i) {
    const long long s = set_of<FAST>(cached[i], t.sets);
    for (int w = 0; w < ways; ++w) {
      if (keys[s * ways + w] == kEmpty) {
        keys[s * ways + w] = cached[i];
        slot_of[i] = s * ways + w;
        break;
      }
    }
  }
  std::vector<long long> query;
  for (long long pick : query_pick) {
    if (slot_of[pick] < 0) continue;  // its set was full: left out (all hits)
    query.push_back(cached[pick]);
    t.query_slot.push_back(slot_of[pick]);
  }
  CHECK(cudaMalloc(&t.d_keys, keys.size() * 8));
  CHECK(cudaMemcpy(t.d_keys, keys.data(), keys.size() * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&t.d_meta, keys.size() * 4));
  CHECK(cudaMemset(t.d_meta, 0, keys.size() * 4));
  CHECK(cudaMalloc(&t.d_query, query.size() * 8));
  CHECK(cudaMemcpy(t.d_query, query.data(), query.size() * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&t.d_slot, query.size() * 8));
  CHECK(cudaMemcpy(t.d_slot, t.query_slot.data(), query.size() * 8, cudaMemcpyHostToDevice));
  return t;
}

template <typename F>
float median_ms(F&& launch, int repeats) {
  for (int i = 0; i < 3; ++i) launch();
  std::vector<float> ms;
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < repeats; ++i) {
    CHECK(cudaEventRecord(a));
    launch();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float t = 0;
    CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct Variant {
  const char* name;
  int ways;
  bool fast;
  void (*kernel)(Params);                 // round 1 (dim at run time)
  void (*launch)(int, int, Params) = nullptr;  // round 2 (dim4, blocks, params)
};

int main(int argc, char** argv) {
  const long long rows = argc > 1 ? std::atoll(argv[1]) : 1 << 20;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 20;
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const Variant variants[] = {
      {"16-way u2 meta recheck (product)", 16, false, probe<16, 2, kWriteMeta, true, false>},
      {"16-way u2 meta recheck fast", 16, true, probe<16, 2, kWriteMeta, true, true>},
      {"16-way u2 no-meta recheck fast", 16, true, probe<16, 2, kNoMeta, true, true>},
      {"16-way u2 read-meta recheck fast", 16, true, probe<16, 2, kReadThenWrite, true, true>},
      {"16-way u2 meta no-recheck fast", 16, true, probe<16, 2, kWriteMeta, false, true>},
      {"16-way u4 meta recheck fast", 16, true, probe<16, 4, kWriteMeta, true, true>},
      {"8-way u1 meta recheck fast", 8, true, probe<8, 1, kWriteMeta, true, true>},
      {"8-way u2 meta recheck fast", 8, true, probe<8, 2, kWriteMeta, true, true>},
      {"8-way u2 no-meta recheck fast", 8, true, probe<8, 2, kNoMeta, true, true>},
      {"8-way u2 read-meta recheck fast", 8, true, probe<8, 2, kReadThenWrite, true, true>},
      {"8-way u2 meta no-recheck fast", 8, true, probe<8, 2, kWriteMeta, false, true>},
      {"8-way u4 meta recheck fast", 8, true, probe<8, 4, kWriteMeta, true, true>},
      {"8-way u2 no-meta no-recheck fast", 8, true, probe<8, 2, kNoMeta, false, true>},
      {"R2 16-way 16 lanes u2 dimT", 16, true, nullptr, launch2<16, 16, 2, 1>},
      {"R2 16-way 16 lanes u2 dimT minB4", 16, true, nullptr, launch2<16, 16, 2, 4>},
      {"R2 16-way 16 lanes u2 dimT minB8", 16, true, nullptr, launch2<16, 16, 2, 8>},
      {"R2 16-way 8 lanes u1 dimT", 16, true, nullptr, launch2<16, 8, 1, 1>},
      {"R2 16-way 8 lanes u2 dimT", 16, true, nullptr, launch2<16, 8, 2, 1>},
      {"R2 16-way 8 lanes u2 dimT minB4", 16, true, nullptr, launch2<16, 8, 2, 4>},
      {"R2 16-way 8 lanes u2 dimT minB8", 16, true, nullptr, launch2<16, 8, 2, 8>},
      {"R2 16-way 8 lanes u1 dimT minB8", 16, true, nullptr, launch2<16, 8, 1, 8>},
      {"R2 8-way 8 lanes u1 dimT", 8, true, nullptr, launch2<8, 8, 1, 1>},
      {"R2 8-way 8 lanes u2 dimT", 8, true, nullptr, launch2<8, 8, 2, 1>},
      {"R2 8-way 8 lanes u2 dimT minB4", 8, true, nullptr, launch2<8, 8, 2, 4>},
      {"R2 8-way 8 lanes u2 dimT minB8", 8, true, nullptr, launch2<8, 8, 2, 8>},
      {"R2 8-way 8 lanes u1 dimT minB8", 8, true, nullptr, launch2<8, 8, 1, 8>},
  };
  std::printf("GPU %s, %d SMs; %lld cached rows at load 0.5, %lld all-hit keys per call, fp32 rows, median of %d calls\n\n",
              prop.name, sms, rows, rows, repeats);
  std::printf("| keys | dim | variant | blocks/SM | G keys/s | / gather | checked |\n|---|---:|---|---:|---:|---:|---|\n");
  std::mt19937_64 rng(7);
  for (const char* pattern : {"random", "strided"}) {
    std::vector<long long> cached(rows);
    for (long long i = 0; i < rows; ++i) cached[i] = pattern[0] == 'r' ? static_cast<long long>(rng() >> 1) : i << 20;  // strided: multiples of 2^20
    std::vector<long long> pick(rows);
    for (auto& v : pick) v = static_cast<long long>(rng() % rows);
    Table slow16 = build<false>(16, rows, cached, pick), fast16 = build<true>(16, rows, cached, pick), fast8 = build<true>(8, rows, cached, pick);
    for (int dim : {32, 64, 128}) {
      const int dim4 = dim / 4;
      const long long slots = 2 * rows;
      std::vector<float4> host_rows(slots * dim4);
      for (long long s = 0; s < slots; ++s)
        for (int k = 0; k < dim4; ++k) host_rows[s * dim4 + k] = make_float4(s, k, 0.5f * s, -1.f * k);
      float4 *d_rows, *d_out;
      int* d_misses;
      CHECK(cudaMalloc(&d_rows, host_rows.size() * 16));
      CHECK(cudaMemcpy(d_rows, host_rows.data(), host_rows.size() * 16, cudaMemcpyHostToDevice));
      CHECK(cudaMalloc(&d_out, rows * dim4 * 16));
      CHECK(cudaMalloc(&d_misses, 4));
      // the plain gather of the rows of fast16's query keys by their slots
      const long long n16 = static_cast<long long>(fast16.query_slot.size());
      const int gather_blocks = static_cast<int>(std::min<long long>((n16 * dim4 + 255) / 256, sms * 32LL));
      const float gather_ms = median_ms([&] { gather<<<gather_blocks, 256>>>(d_rows, fast16.d_slot, d_out, n16, dim4); }, repeats);
      const double gather_rate = n16 / (gather_ms * 1e-3) / 1e9;
      std::printf("| %s | %d | plain gather (by slot) | - | %.2f | 1.00 | - |\n", pattern, dim, gather_rate);
      for (const Variant& v : variants) {
        const Table& t = v.ways == 8 ? fast8 : (v.fast ? fast16 : slow16);
        const long long n = static_cast<long long>(t.query_slot.size());
        for (int per_sm : {8, 16, 32}) {
          Params p{t.d_keys, t.d_meta, t.sets, dim4, d_rows, t.d_query, n, d_out, d_misses, 1u, 0u};
          const int blocks = sms * per_sm;
          CHECK(cudaMemset(d_misses, 0, 4));
          const float ms = median_ms([&] {
            p.tick++;
            if (v.launch) v.launch(dim4, blocks, p); else v.kernel<<<blocks, 256>>>(p);
          }, repeats);
          CHECK(cudaGetLastError());
          int misses = 0;
          CHECK(cudaMemcpy(&misses, d_misses, 4, cudaMemcpyDeviceToHost));
          // the output holds each query key's row: check the first 4096 and the last rows
          std::vector<float4> got(static_cast<size_t>(std::min<long long>(n, 4096)) * dim4);
          CHECK(cudaMemcpy(got.data(), d_out, got.size() * 16, cudaMemcpyDeviceToHost));
          bool ok = misses == 0;
          for (size_t i = 0; ok && i < got.size() / dim4; ++i)
            for (int k = 0; k < dim4; ++k)
              ok = ok && got[i * dim4 + k].x == static_cast<float>(t.query_slot[i]) && got[i * dim4 + k].y == static_cast<float>(k);
          const double rate = n / (ms * 1e-3) / 1e9;
          std::printf("| %s | %d | %s | %d | %.2f | %.2f | %s |\n", pattern, dim, v.name, per_sm, rate, rate / gather_rate, ok ? "yes" : "NO");
        }
      }
      CHECK(cudaFree(d_rows));
      CHECK(cudaFree(d_out));
      CHECK(cudaFree(d_misses));
    }
  }
  return 0;
}
