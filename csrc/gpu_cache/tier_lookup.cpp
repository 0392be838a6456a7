#include "gpu_cache/tier_lookup.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "gpu_cache/detail/cuda_check.hpp"
#include "gpu_cache/miss_plan.hpp"
#include "host_store/tables_read.hpp"

namespace tritonrec {
namespace {

using detail::check;
using detail::DeviceGuard;

size_t align256(size_t bytes) { return (bytes + 255) & ~size_t{255}; }

/// A growable pinned host buffer, mapped into the devices' address space (the same address there).
class Pinned {
 public:
  Pinned() = default;
  ~Pinned() {
    if (ptr_ != nullptr) (void)cudaFreeHost(ptr_);
  }
  Pinned(const Pinned&) = delete;
  Pinned& operator=(const Pinned&) = delete;

  /// The buffer, grown to at least `bytes` when smaller (to a power of two of at least 1 MiB, so that
  /// calls of about one size do not pin memory again and again: pinning tens of MB takes
  /// milliseconds); its contents are lost when it grows. Nothing may be copying out of it then.
  char* reserve(size_t bytes) {
    if (bytes > bytes_) {
      size_t size = std::max<size_t>(size_t{1} << 20, 2 * bytes_);
      while (size < bytes) size *= 2;
      void* fresh = nullptr;
      check(cudaHostAlloc(&fresh, size, cudaHostAllocMapped | cudaHostAllocPortable), "cudaHostAlloc");
      if (ptr_ != nullptr) (void)cudaFreeHost(ptr_);
      ptr_ = fresh;
      bytes_ = size;
    }
    return static_cast<char*>(ptr_);
  }
  /// The buffer as it is (null before the first reserve).
  char* data() const noexcept { return static_cast<char*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

cudaEvent_t new_event(unsigned flags = 0) {
  cudaEvent_t event = nullptr;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming | flags), "cudaEventCreateWithFlags");
  return event;
}

/// True when the event has completed; a pending one is not an error (and leaves none behind).
bool event_done(cudaEvent_t event) {
  const cudaError_t status = cudaEventQuery(event);
  if (status == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  check(status, "cudaEventQuery");
  return true;
}

/// Waits for `event` (made with cudaEventBlockingSync): polls it for up to 50 us, as a chunk's lookup
/// kernels take about that long, then sleeps in cudaEventSynchronize, so that a caller waiting on its
/// GPU work leaves the cores to another caller's host reads (16 pool threads on 16 cores: one
/// spinning waiter more stalls every read on the thread it displaces).
void wait_event(cudaEvent_t event, const char* what) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
  do {
    if (event_done(event)) return;
  } while (std::chrono::steady_clock::now() < until);
  check(cudaEventSynchronize(event), what);
}

}  // namespace

/// One caller's host buffers and events, reused across its calls (held under `mutex` for a call).
struct GpuTierLookup::Staging {
  bool busy = false;               // taken by a call (under GpuTierLookup::stagings_mutex_)
  Pinned listed;                   // mapped: counts int32 (chunks, columns) | missed keys int64 (n * columns), by the gathers
  std::vector<Pinned> rows;        // per chunk: the missed keys' rows fp32, read from the host, copied to the device
  std::vector<Pinned> packed;      // per chunk: the keys and rows that exist, when some keys of the chunk do not
  std::vector<uint8_t> found;      // (n * columns): where a missed key exists
  std::vector<cudaEvent_t> ready;  // per chunk: its misses are listed in `listed`
  std::vector<cudaEvent_t> sent;   // per chunk: its rows are on the device and scattered (the insert stream waits)
  std::vector<cudaEvent_t> landed;  // per chunk, with a copy stream: its rows are on the device
  cudaStream_t copy_stream = nullptr;  // with TierLookupOptions::copy_stream: the copies of its calls
  cudaEvent_t copied = nullptr;    // after the last copy out of rows / packed
  cudaEvent_t ended = nullptr;     // after a call's last work on its stream (the insert stream waits before freeing)
  bool copies_queued = false;      // `copied` has been recorded
};

/// A traced call's steps (set_trace): host steps timed at once, GPU steps by timing events resolved
/// when the call ends.
struct GpuTierLookup::Trace {
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  cudaEvent_t start = nullptr;  // on the call's stream as it began
  double start_us = 0;          // host time at which `start` was recorded
  std::vector<TraceMark> marks;
  std::vector<std::pair<size_t, cudaEvent_t>> gpu;  // marks[i].us is the event's time

  Trace() = default;
  Trace(const Trace&) = delete;
  Trace& operator=(const Trace&) = delete;
  ~Trace() {
    if (start != nullptr) (void)cudaEventDestroy(start);
    for (auto& mark : gpu) (void)cudaEventDestroy(mark.second);
  }

  double now_us() const { return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count(); }
  void host(const char* what, int chunk) { marks.push_back({what, chunk, now_us()}); }
  /// A GPU step: when `stream` reaches this point.
  void device(const char* what, int chunk, cudaStream_t stream) {
    cudaEvent_t event = nullptr;
    check(cudaEventCreate(&event), "cudaEventCreate(trace)");
    gpu.emplace_back(marks.size(), event);
    marks.push_back({what, chunk, 0});
    check(cudaEventRecord(event, stream), "cudaEventRecord(trace)");
  }
};

/// The state of one lookup call.
struct GpuTierLookup::Call {
  Staging& staging;
  const std::vector<TierColumn>& columns;
  cudaStream_t stream;
  const int64_t* keys;  // device (n, k)
  char* out;            // device (n, k, dim) of out_dtype
  GpuOutDtype out_dtype;
  int k = 0;
  int64_t dim = 0, chunk_rows = 0;
  size_t out_row_bytes = 0;  // bytes of one key row of the output (k * dim elements)
  std::vector<RowRange> chunks;
  int32_t* miss_index = nullptr;  // device (chunks, k, chunk_rows): chunk c's column t at + (c * k + t) * rows of c
  int32_t* counts = nullptr;      // device (chunks, k)
  int64_t* missed = nullptr;      // device (n * k): chunk c's missed keys from + begin * k, column after column
  int32_t* host_counts = nullptr;  // mapped (chunks, k)
  int64_t* host_missed = nullptr;  // mapped, as `missed`
  std::vector<uint64_t> generations;  // of each column's cache when the call began
  std::vector<uint32_t> ticks;        // each column's LRU clock for this call (its lookups and inserts)
  std::vector<std::vector<int64_t>> offsets;  // per chunk once listed: (k + 1,) offsets of its columns' misses
  std::vector<std::vector<int64_t>> present;  // per chunk once read: (k,) of its columns' misses that exist
  std::vector<void*> allocations;     // device memory, freed in stream order when the call ends
  bool copies_waited = false;         // the staging's last user's copies are done
  Trace* trace = nullptr;             // when the call is traced
  cudaStream_t copy_stream = nullptr;  // the rows' copies (the staging's copy stream, or `stream`)

  /// Marks a host step of a traced call (nothing when the call is not traced).
  void mark(const char* what, int chunk) {
    if (trace != nullptr) trace->host(what, chunk);
  }
  /// Marks a GPU step of a traced call: when `on` reaches this point.
  void mark_gpu(const char* what, int chunk, cudaStream_t on) {
    if (trace != nullptr) trace->device(what, chunk, on);
  }
};

GpuTierLookup::GpuTierLookup(int device, const TierLookupOptions& options) : device_(device), options_(options) {
  if (options.stagings < 1) throw std::invalid_argument("stagings: expected >= 1");
  if (options.chunks < 1) throw std::invalid_argument("chunks: expected >= 1");
  if (options.min_chunk_rows < 1) throw std::invalid_argument("min_chunk_rows: expected >= 1");
  if (options.crowded_chunks < 0 || options.crowded_chunks > options.chunks) {
    throw std::invalid_argument("crowded_chunks: expected 0 (cut as a lone call) up to chunks");
  }
  DeviceGuard guard(device);
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  check(cudaMemPoolCreate(&pool_, &props), "cudaMemPoolCreate");
  uint64_t keep = std::numeric_limits<uint64_t>::max();  // freed memory stays in the pool for the next calls
  check(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute");
  // No reuse that would make one caller's stream wait for another's work (the driver's internal
  // dependencies): memory freed on another stream is reused once that free has run (opportunistic
  // reuse, which adds no wait), else the pool grows. (H200, two callers, with both reuses off: 0.98
  // hits 1.42 -> 2.06 G keys/s, 0.90 hits 0.21 -> 0.69.) Opportunistic reuse must stay: with
  // async_insert every free runs on the insert stream, which no caller's stream waits for and the host
  // never synchronizes, so without it no lookup could reuse that memory and the pool would grow every call.
  int no = 0;
  check(cudaMemPoolSetAttribute(pool_, cudaMemPoolReuseAllowInternalDependencies, &no), "cudaMemPoolSetAttribute");
  if (options.async_insert) check(cudaStreamCreateWithFlags(&insert_stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  for (int i = 0; i < options.stagings; ++i) {
    auto staging = std::make_unique<Staging>();
    staging->rows = std::vector<Pinned>(static_cast<size_t>(options.chunks));
    staging->packed = std::vector<Pinned>(static_cast<size_t>(options.chunks));
    for (int c = 0; c < options.chunks; ++c) {
      staging->ready.push_back(new_event(cudaEventBlockingSync));  // see wait_listed
      staging->sent.push_back(new_event());
      staging->landed.push_back(new_event());
    }
    if (options.copy_stream) check(cudaStreamCreateWithFlags(&staging->copy_stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    staging->copied = new_event();
    staging->ended = new_event();
    stagings_.push_back(std::move(staging));
  }
}

GpuTierLookup::~GpuTierLookup() {
  int previous = 0;
  if (cudaGetDevice(&previous) == cudaSuccess) (void)cudaSetDevice(device_);
  for (cudaEvent_t event : pending_) {
    (void)cudaEventSynchronize(event);
    (void)cudaEventDestroy(event);
  }
  for (auto& staging : stagings_) {
    if (staging->copies_queued) (void)cudaEventSynchronize(staging->copied);  // before its pinned buffers go
    for (cudaEvent_t event : staging->ready) (void)cudaEventDestroy(event);
    for (cudaEvent_t event : staging->sent) (void)cudaEventDestroy(event);
    for (cudaEvent_t event : staging->landed) (void)cudaEventDestroy(event);
    if (staging->copy_stream != nullptr) (void)cudaStreamDestroy(staging->copy_stream);
    (void)cudaEventDestroy(staging->copied);
    (void)cudaEventDestroy(staging->ended);
  }
  if (insert_stream_ != nullptr) {
    (void)cudaStreamSynchronize(insert_stream_);
    (void)cudaStreamDestroy(insert_stream_);
  }
  stagings_.clear();
  (void)cudaMemPoolDestroy(pool_);  // memory still queued for freeing goes back once freed
  (void)cudaSetDevice(previous);
}

int64_t GpuTierLookup::pool_bytes() const {
  uint64_t reserved = 0;
  check(cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemCurrent, &reserved), "cudaMemPoolGetAttribute");
  return static_cast<int64_t>(reserved);
}

void* GpuTierLookup::allocate(size_t bytes, cudaStream_t stream) {
  void* ptr = nullptr;
  check(cudaMallocFromPoolAsync(&ptr, std::max<size_t>(bytes, 1), pool_, stream), "cudaMallocFromPoolAsync");
  return ptr;
}

GpuTierLookup::Staging& GpuTierLookup::take_staging(bool& crowded) {
  std::unique_lock<std::mutex> lock(stagings_mutex_);
  const uint64_t ticket = next_ticket_++;
  Staging* taken = nullptr;
  staging_freed_.wait(lock, [&] {  // in the order callers came, so that none waits on while others pass
    if (serving_ != ticket) return false;
    for (auto& staging : stagings_) {  // the first free one, so a lone caller always takes the first
      if (!staging->busy) {
        taken = staging.get();
        return true;
      }
    }
    return false;
  });
  taken->busy = true;
  ++serving_;
  crowded = serving_ != next_ticket_;  // another caller waits
  for (auto& staging : stagings_) crowded = crowded || (staging.get() != taken && staging->busy);
  lock.unlock();
  staging_freed_.notify_all();  // the next caller may take another free staging
  return *taken;
}

void GpuTierLookup::release_staging(Staging& staging) {
  {
    std::lock_guard<std::mutex> lock(stagings_mutex_);
    staging.busy = false;
  }
  staging_freed_.notify_all();
}

void GpuTierLookup::check_columns(const std::vector<TierColumn>& columns) const {
  if (columns.empty()) throw std::invalid_argument("columns: expected at least one");
  for (const TierColumn& column : columns) {
    if (column.cache == nullptr || column.host == nullptr) throw std::invalid_argument("columns: a cache and a host table each");
    if (column.cache->dim() != columns[0].cache->dim() || column.host->dim() != column.cache->dim()) {
      throw std::invalid_argument("columns: expected one dim, in every cache and host table");
    }
    if (column.cache->device() != device_) throw std::invalid_argument("columns: a cache on another device than the lookup's");
  }
}

void GpuTierLookup::lookup(const std::vector<TierColumn>& columns, const int64_t* keys, int64_t n, void* out, GpuOutDtype out_dtype,
                           cudaStream_t stream, ThreadPool& pool, const CompleteMisses& complete) {
  check_columns(columns);
  if (n < 0) throw std::invalid_argument("n: expected >= 0");
  if (n == 0) return;
  const int k = static_cast<int>(columns.size());
  DeviceGuard guard(device_);
  std::unique_ptr<Trace> trace;
  if (this->trace()) {
    trace = std::make_unique<Trace>();
    check(cudaEventCreate(&trace->start), "cudaEventCreate(trace)");
    check(cudaEventRecord(trace->start, stream), "cudaEventRecord(trace)");
    trace->start_us = trace->now_us();
  }
  bool crowded = false;
  Staging& staging = take_staging(crowded);
  struct Release {
    GpuTierLookup* self;
    Staging& staging;
    ~Release() { self->release_staging(staging); }
  } release{this, staging};
  Call call{staging, columns, stream, keys, static_cast<char*>(out), out_dtype};
  call.trace = trace.get();
  call.k = k;
  call.dim = columns[0].cache->dim();
  call.out_row_bytes = static_cast<size_t>(k * call.dim) * (out_dtype == GpuOutDtype::kFloat16 ? 2 : 4);
  if (crowded) crowded_calls_.fetch_add(1, std::memory_order_relaxed);
  const bool own_copies = staging.copy_stream != nullptr && (!crowded || options_.crowded_copy_stream);
  call.copy_stream = own_copies ? staging.copy_stream : stream;
  call.chunks = crowded && options_.crowded_chunks > 0 ? lookup_chunks(n, options_.crowded_chunks, options_.min_chunk_rows, false)
                                                       : lookup_chunks(n, options_.chunks, options_.min_chunk_rows, options_.taper);
  for (const RowRange& range : call.chunks) call.chunk_rows = std::max(call.chunk_rows, range.end - range.begin);
  {
    std::lock_guard<std::mutex> lock(insert_mutex_);
    for (const TierColumn& column : columns) call.generations.push_back(generations_[column.cache]);
  }
  for (const TierColumn& column : columns) call.ticks.push_back(column.cache->lru_tick());  // read now, not before the wait for a staging
  call.mark("staging", -1);
  // A lone call sends chunk c - 1 (queues its copies, scatter and inserts) while the pool's workers
  // read chunk c; calls at once share the pool, so each sends its chunk after the read, leaving the
  // pool to the other's reads meanwhile.
  const bool beside = options_.send_beside_read && !crowded;
  const int chunks = static_cast<int>(call.chunks.size());
  call.offsets.resize(call.chunks.size());
  call.present.resize(call.chunks.size());
  try {
    list_chunks(call, n);
    for (int c = 0; c < chunks; ++c) {
      std::unique_ptr<TablesRead> read = start_read(call, c, pool);
      if (beside && c > 0) send_chunk(call, c - 1);
      finish_read(call, c, read.get(), complete);
      if (!beside) send_chunk(call, c);
    }
    if (beside) send_chunk(call, chunks - 1);
  } catch (...) {
    end_call(call, true);
    throw;
  }
  end_call(call, false);
}

/// Allocates the call's device and mapped memory and queues every chunk's lookups and miss gather.
void GpuTierLookup::list_chunks(Call& call, int64_t n) {
  Staging& staging = call.staging;
  const int k = call.k;
  const size_t chunks = call.chunks.size();
  const size_t index_bytes = align256(chunks * static_cast<size_t>(k * call.chunk_rows) * sizeof(int32_t));
  const size_t counts_bytes = align256(chunks * static_cast<size_t>(k) * sizeof(int32_t));
  const size_t keys_bytes = static_cast<size_t>(n * k) * sizeof(int64_t);
  char* block = static_cast<char*>(allocate(index_bytes + counts_bytes + keys_bytes, call.stream));
  call.allocations.push_back(block);
  call.miss_index = reinterpret_cast<int32_t*>(block);
  call.counts = reinterpret_cast<int32_t*>(block + index_bytes);
  call.missed = reinterpret_cast<int64_t*>(block + index_bytes + counts_bytes);
  char* listed = staging.listed.reserve(counts_bytes + keys_bytes);  // its last user's gathers are done
  call.host_counts = reinterpret_cast<int32_t*>(listed);
  call.host_missed = reinterpret_cast<int64_t*>(listed + counts_bytes);
  staging.found.resize(static_cast<size_t>(n * k));
  for (size_t c = 0; c < chunks; ++c) {
    const RowRange& range = call.chunks[c];
    const int64_t rows = range.end - range.begin;
    int32_t* index = call.miss_index + c * static_cast<size_t>(k * call.chunk_rows);
    for (int t = 0; t < k; ++t) {
      GpuCache::FindArgs args;
      args.keys = call.keys + range.begin * k + t;
      args.key_stride = k;
      args.n = rows;
      args.out = call.out + range.begin * call.out_row_bytes + static_cast<size_t>(t) * (call.out_row_bytes / k);
      args.out_stride = k * call.dim;
      args.out_dtype = call.out_dtype;
      args.miss_index = index + t * rows;
      args.miss_count = call.counts + c * k + t;
      args.tick = call.ticks[t];
      call.columns[t].cache->find_async(args, call.stream);
    }
    gather_miss_keys_async(call.keys + range.begin * k, k, rows, index, call.counts + c * k, rows, call.missed + range.begin * k,
                           device_, call.stream, call.host_missed + range.begin * k, call.host_counts + c * k);
    check(cudaEventRecord(staging.ready[c], call.stream), "cudaEventRecord");
    call.mark_gpu("gpu listed", static_cast<int>(c), call.stream);
  }
  call.mark("queued", -1);
}

/// Waits until chunk c's misses are listed and begins their read from the host tables on the
/// pool's workers (nullptr when the chunk missed nothing).
std::unique_ptr<TablesRead> GpuTierLookup::start_read(Call& call, int c, ThreadPool& pool) {
  Staging& staging = call.staging;
  const int k = call.k;
  wait_event(staging.ready[c], "cudaEventSynchronize(chunk listed)");
  call.mark("listed", c);
  const int32_t* counts = call.host_counts + static_cast<size_t>(c) * k;
  std::vector<int64_t>& offsets = call.offsets[c];
  offsets.assign(static_cast<size_t>(k) + 1, 0);
  call.present[c].assign(static_cast<size_t>(k), 0);
  for (int t = 0; t < k; ++t) {
    offsets[t + 1] = offsets[t] + counts[t];
    call.columns[t].cache->count_lookups(call.chunks[c].end - call.chunks[c].begin, counts[t]);  // the clock moves for calls from now on
  }
  const int64_t total = offsets[k];
  if (total == 0) return nullptr;
  if (!call.copies_waited) {  // the staging's last user may still be copying out of its rows
    if (staging.copies_queued) check(cudaEventSynchronize(staging.copied), "cudaEventSynchronize(copied)");
    call.copies_waited = true;
  }
  float* rows = reinterpret_cast<float*>(staging.rows[c].reserve(static_cast<size_t>(total * call.dim) * sizeof(float)));
  const int64_t begin = call.chunks[c].begin * k;
  std::vector<TablesRead::Part> parts;
  for (int t = 0; t < k; ++t) {
    const int64_t at = offsets[t];
    parts.push_back({call.columns[t].host, call.host_missed + begin + at, counts[t], rows + at * call.dim, staging.found.data() + begin + at});
  }
  return std::make_unique<TablesRead>(std::move(parts), pool, options_.stream_rows);
}

/// Ends chunk c's read (`read`, from start_read) and completes the columns whose missed keys the
/// host tables did not all hold (lower tiers, the missing-key policy), the tables released first.
void GpuTierLookup::finish_read(Call& call, int c, TablesRead* read, const CompleteMisses& complete) {
  if (read == nullptr) return;
  const std::vector<int64_t>& hits = read->finish();
  const std::vector<int64_t>& offsets = call.offsets[c];
  float* rows = reinterpret_cast<float*>(call.staging.rows[c].data());
  const int64_t* keys = call.host_missed + call.chunks[c].begin * call.k;
  uint8_t* found = call.staging.found.data() + call.chunks[c].begin * call.k;
  for (int t = 0; t < call.k; ++t) {
    const int64_t m = offsets[t + 1] - offsets[t], at = offsets[t];
    int64_t present = hits[t];
    if (present < m) {
      complete(t, m, keys + at, rows + at * call.dim, found + at, present);
      present = std::count_if(found + at, found + at + m, [](uint8_t f) { return f != 0; });
    }
    call.present[c][t] = present;
  }
  call.mark("read", c);
}

void GpuTierLookup::send_chunk(Call& call, int c) {
  const int k = call.k;
  if (call.offsets[c][k] == 0) return;
  Staging& staging = call.staging;
  const RowRange& range = call.chunks[c];
  const int64_t rows = range.end - range.begin;
  float* device_rows = copy_rows(call, c);
  std::vector<const int64_t*> insert_keys(static_cast<size_t>(k), nullptr);
  std::vector<const float*> insert_rows(static_cast<size_t>(k), nullptr);
  pack_present(call, c, device_rows, insert_keys, insert_rows);
  check(cudaEventRecord(staging.copied, call.copy_stream), "cudaEventRecord(copied)");
  staging.copies_queued = true;
  call.mark_gpu("gpu copied", c, call.copy_stream);
  if (call.copy_stream != call.stream) {  // the scatter and inserts after the copies, which need not wait for the last chunk's inserts
    check(cudaEventRecord(staging.landed[c], call.copy_stream), "cudaEventRecord(landed)");
    check(cudaStreamWaitEvent(call.stream, staging.landed[c], 0), "cudaStreamWaitEvent(landed)");
  }
  scatter_miss_rows_async(call.out + range.begin * call.out_row_bytes, call.out_dtype, k, rows, call.dim,
                          call.miss_index + c * static_cast<size_t>(k * call.chunk_rows), call.counts + c * k, rows, nullptr,
                          device_rows, device_, call.stream);
  call.mark_gpu("gpu scattered", c, call.stream);
  queue_inserts(call, c, insert_keys, insert_rows);
  call.mark("sent", c);
}

/// Queues the copy of chunk c's missed rows (read into its staging) to new device memory; returns it.
float* GpuTierLookup::copy_rows(Call& call, int c) {
  const size_t bytes = static_cast<size_t>(call.offsets[c][call.k] * call.dim) * sizeof(float);
  const char* host_rows = call.staging.rows[c].data();
  auto* device_rows = static_cast<float*>(allocate(bytes, call.copy_stream));
  call.allocations.push_back(device_rows);
  check(cudaMemcpyAsync(device_rows, host_rows, bytes, cudaMemcpyHostToDevice, call.copy_stream), "cudaMemcpyAsync(rows)");
  return device_rows;
}

/// What each column of chunk c inserts: its missed keys and rows as they are when all exist, else
/// those that exist, packed on the host and copied apart (none when no key of the column exists).
void GpuTierLookup::pack_present(Call& call, int c, const float* device_rows, std::vector<const int64_t*>& keys,
                                 std::vector<const float*>& rows) {
  const int k = call.k;
  const int64_t dim = call.dim, begin = call.chunks[c].begin * k;
  const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
  size_t packed_bytes = 0;
  for (int t = 0; t < k; ++t) {
    const int64_t m = call.offsets[c][t + 1] - call.offsets[c][t], present = call.present[c][t];
    if (present > 0 && present < m) packed_bytes += align256(present * sizeof(int64_t)) + align256(present * row_bytes);
  }
  char* host_packed = packed_bytes ? call.staging.packed[c].reserve(packed_bytes) : nullptr;
  char* device_packed = packed_bytes ? static_cast<char*>(allocate(packed_bytes, call.copy_stream)) : nullptr;
  if (device_packed != nullptr) call.allocations.push_back(device_packed);
  const auto* host_rows = reinterpret_cast<const float*>(call.staging.rows[c].data());
  size_t at = 0;
  for (int t = 0; t < k; ++t) {
    const int64_t first = call.offsets[c][t], m = call.offsets[c][t + 1] - first, present = call.present[c][t];
    if (present == m) {
      keys[t] = call.missed + begin + first;
      rows[t] = device_rows + first * dim;
    } else if (present > 0) {
      const size_t rows_at = at + align256(present * sizeof(int64_t));
      compact_found(call.host_missed + begin + first, host_rows + first * dim, call.staging.found.data() + begin + first, m, dim,
                    reinterpret_cast<int64_t*>(host_packed + at), reinterpret_cast<float*>(host_packed + rows_at));
      keys[t] = reinterpret_cast<const int64_t*>(device_packed + at);
      rows[t] = reinterpret_cast<const float*>(device_packed + rows_at);
      at = rows_at + align256(present * row_bytes);
    }
  }
  if (at > 0) check(cudaMemcpyAsync(device_packed, host_packed, at, cudaMemcpyHostToDevice, call.copy_stream), "cudaMemcpyAsync(packed)");
}

/// Queues the inserts of chunk c's present rows (on the lookup's stream, or after it on the insert
/// stream), but for columns whose cache was invalidated since the call began, and an event after them
/// that invalidations wait for (an update must not be overtaken by rows read before it).
void GpuTierLookup::queue_inserts(Call& call, int c, const std::vector<const int64_t*>& keys, const std::vector<const float*>& rows) {
  cudaStream_t target = call.stream;
  if (insert_stream_ != nullptr) {
    check(cudaEventRecord(call.staging.sent[c], call.stream), "cudaEventRecord(sent)");
    check(cudaStreamWaitEvent(insert_stream_, call.staging.sent[c], 0), "cudaStreamWaitEvent");
    target = insert_stream_;
  }
  std::lock_guard<std::mutex> lock(insert_mutex_);
  bool queued = false;
  for (int t = 0; t < call.k; ++t) {
    const TierColumn& column = call.columns[t];
    if (call.present[c][t] == 0 || generations_[column.cache] != call.generations[t]) continue;  // invalidated since its rows were read
    column.cache->insert_async(keys[t], rows[t], call.present[c][t], call.ticks[t], target);
    queued = true;
  }
  if (queued) {
    pending_.erase(std::remove_if(pending_.begin(), pending_.end(),
                                  [](cudaEvent_t event) { return event_done(event) && cudaEventDestroy(event) == cudaSuccess; }),
                   pending_.end());
    cudaEvent_t event = new_event();
    pending_.push_back(event);
    check(cudaEventRecord(event, target), "cudaEventRecord(inserted)");
  }
  call.mark_gpu("gpu inserted", c, target);
}

void GpuTierLookup::end_call(Call& call, bool failed) {
  Staging& staging = call.staging;
  if (failed) {  // what was queued finishes before the staging's buffers go to another call
    (void)cudaStreamSynchronize(call.stream);
    if (call.copy_stream != call.stream) (void)cudaStreamSynchronize(call.copy_stream);
    (void)cudaGetLastError();
  }
  cudaStream_t target = call.stream;
  if (insert_stream_ != nullptr && !call.allocations.empty()) {  // freed after the inserts, which read the rows and keys
    const cudaError_t recorded = cudaEventRecord(staging.ended, call.stream);
    if (recorded == cudaSuccess && cudaStreamWaitEvent(insert_stream_, staging.ended, 0) == cudaSuccess) target = insert_stream_;
  }
  cudaError_t status = cudaSuccess;
  for (void* ptr : call.allocations) {
    const cudaError_t freed = cudaFreeAsync(ptr, target);
    if (status == cudaSuccess) status = freed;
  }
  if (!failed) check(status, "cudaFreeAsync");
  (void)cudaGetLastError();
  if (!failed && call.trace != nullptr) end_trace(call);
}

/// Waits for the traced call's streams, times its GPU steps and keeps its marks for last_trace().
void GpuTierLookup::end_trace(Call& call) {
  Trace& trace = *call.trace;
  trace.host("end", -1);
  check(cudaStreamSynchronize(call.stream), "cudaStreamSynchronize(trace)");
  if (insert_stream_ != nullptr) check(cudaStreamSynchronize(insert_stream_), "cudaStreamSynchronize(trace)");
  trace.host("stream done", -1);
  for (auto& [at, event] : trace.gpu) {
    float ms = 0;
    check(cudaEventElapsedTime(&ms, trace.start, event), "cudaEventElapsedTime(trace)");
    trace.marks[at].us = trace.start_us + 1e3 * ms;
  }
  std::lock_guard<std::mutex> lock(trace_mutex_);
  last_trace_ = trace.marks;
}

std::vector<TraceMark> GpuTierLookup::last_trace() const {
  std::lock_guard<std::mutex> lock(trace_mutex_);
  return last_trace_;
}

void GpuTierLookup::invalidate(GpuCache& cache, const int64_t* keys, int64_t n) {
  if (n <= 0) return;
  DeviceGuard guard(device_);
  std::lock_guard<std::mutex> lock(insert_mutex_);
  ++generations_[&cache];
  for (cudaEvent_t event : pending_) {  // inserts queued by earlier lookups, on any stream, first
    check(cudaEventSynchronize(event), "cudaEventSynchronize(inserted)");
  }
  for (cudaEvent_t event : pending_) (void)cudaEventDestroy(event);
  pending_.clear();
  cudaStream_t stream = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  struct StreamOwner {
    cudaStream_t stream;
    ~StreamOwner() {
      (void)cudaStreamSynchronize(stream);
      (void)cudaStreamDestroy(stream);
    }
  } owner{stream};
  void* device_keys = allocate(static_cast<size_t>(n) * sizeof(int64_t), stream);
  check(cudaMemcpyAsync(device_keys, keys, static_cast<size_t>(n) * sizeof(int64_t), cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync(keys)");
  cache.invalidate_async(static_cast<const int64_t*>(device_keys), n, stream);
  check(cudaFreeAsync(device_keys, stream), "cudaFreeAsync");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

}  // namespace tritonrec
