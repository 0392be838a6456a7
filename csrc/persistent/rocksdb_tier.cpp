#include "persistent/rocksdb_tier.hpp"

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/file_checksum.h>
#include <rocksdb/metadata.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <stdexcept>
#include <vector>

namespace tritonrec {
namespace {

constexpr size_t kKeyBytes = 12;

void encode(uint32_t table, int64_t key, char* out) noexcept {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((table >> (24 - 8 * i)) & 0xFF);
  const uint64_t k = static_cast<uint64_t>(key) ^ (1ull << 63);  // order by signed value
  for (int i = 0; i < 8; ++i) out[4 + i] = static_cast<char>((k >> (56 - 8 * i)) & 0xFF);
}

int64_t decode_key(const char* in) noexcept {
  uint64_t k = 0;
  for (int i = 0; i < 8; ++i) k = (k << 8) | static_cast<uint8_t>(in[4 + i]);
  return static_cast<int64_t>(k ^ (1ull << 63));
}

std::string count_key(uint32_t table) {
  std::string key("\xff\xff\xff\xff#count:", 11);
  key += std::to_string(table);
  return key;
}

void check(const rocksdb::Status& status, const char* what) {
  if (!status.ok()) throw std::runtime_error(std::string(what) + ": " + status.ToString());
}

std::string hex(const std::string& bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

}  // namespace

PersistentTier::PersistentTier(const PersistentTierOptions& options) {
  if (options.block_cache_bytes < 0) throw std::invalid_argument("block_cache_bytes must be >= 0");
  rocksdb::Options db_options;
  db_options.create_if_missing = options.create_if_missing;
  db_options.IncreaseParallelism(2);
  // Embedding rows are random floats: compression costs a decompression per read and saves nothing.
  db_options.compression = rocksdb::kNoCompression;
  rocksdb::BlockBasedTableOptions table_options;
  table_options.block_cache = rocksdb::NewLRUCache(static_cast<size_t>(options.block_cache_bytes));
  table_options.filter_policy.reset(rocksdb::NewBloomFilterPolicy(options.bloom_bits_per_key, false));
  table_options.data_block_index_type = rocksdb::BlockBasedTableOptions::kDataBlockBinaryAndHash;
  table_options.cache_index_and_filter_blocks = true;
  db_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table_options));
  // Damage is found, not served: a whole-file CRC32C of every table file in the MANIFEST (checked
  // by verify_file_checksums), block checksums checked on every read, and paranoid checks.
  db_options.file_checksum_gen_factory = rocksdb::GetFileChecksumGenCrc32cFactory();
  db_options.paranoid_checks = true;
  // A torn last record (a crash mid-write) is dropped; damage anywhere else in the WAL fails the open.
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  rocksdb::DB* db = nullptr;
  if (options.secondary_path.empty()) {
    check(rocksdb::DB::Open(db_options, options.path, &db), ("cannot open RocksDB at " + options.path).c_str());
  } else {
    db_options.max_open_files = -1;  // required of a secondary
    check(rocksdb::DB::OpenAsSecondary(db_options, options.path, options.secondary_path, &db),
          ("cannot open RocksDB at " + options.path + " as a secondary").c_str());
    secondary_ = true;
  }
  db_.reset(db);
}

VerifiedFiles PersistentTier::verify_file_checksums(int threads) const {
  // A primary's compactions may delete files meanwhile: hold deletions until every file is read.
  if (!secondary_) check(db_->DisableFileDeletions(), "pausing file deletions");
  struct Resume {
    rocksdb::DB* db;
    bool on;
    ~Resume() {
      if (on) db->EnableFileDeletions(false).PermitUncheckedError();
    }
  } resume{db_.get(), !secondary_};
  std::vector<rocksdb::LiveFileMetaData> files;
  db_->GetLiveFilesMetaData(&files);
  VerifiedFiles verified;
  for (const auto& file : files) {
    if (file.file_checksum_func_name != rocksdb::kStandardDbFileChecksumFuncName) {
      throw std::runtime_error("RocksDB table file " + file.directory + "/" + file.relative_filename +
                               " has no recorded whole-file checksum (" + file.file_checksum_func_name +
                               "): it was written without one; rebuild the store");
    }
    verified.files += 1;
    verified.bytes += static_cast<int64_t>(file.size);
  }
  // Files on threads (one file is read in order): each through RocksDB's own CRC32C generator.
  std::atomic<size_t> next{0};
  std::mutex mutex;
  std::string failure;
  auto work = [&] {
    std::vector<char> buffer(8 << 20);
    for (size_t i; (i = next.fetch_add(1)) < files.size();) {
      const auto& file = files[i];
      const std::string path = file.directory + "/" + file.relative_filename;
      rocksdb::FileChecksumGenContext context;
      context.file_name = path;
      auto generator = rocksdb::GetFileChecksumGenCrc32cFactory()->CreateFileChecksumGenerator(context);
      std::string problem;
      std::FILE* f = std::fopen(path.c_str(), "rb");
      if (f == nullptr) {
        problem = path + ": cannot be read (" + std::strerror(errno) + ")";
      } else {
        size_t n;
        uint64_t total = 0;
        while ((n = std::fread(buffer.data(), 1, buffer.size(), f)) > 0) {
          generator->Update(buffer.data(), n);
          total += n;
        }
        const bool read_error = std::ferror(f) != 0;
        std::fclose(f);
        generator->Finalize();
        if (read_error) {
          problem = path + ": read error";
        } else if (total != file.size) {
          problem = path + ": " + std::to_string(total) + " bytes, RocksDB's MANIFEST says " + std::to_string(file.size) +
                    ": truncated or damaged";
        } else if (generator->GetChecksum() != file.file_checksum) {
          problem = path + ": damaged: crc32c " + hex(generator->GetChecksum()) + ", RocksDB's MANIFEST says " +
                    hex(file.file_checksum);
        }
      }
      if (!problem.empty()) {
        std::lock_guard<std::mutex> lock(mutex);
        if (failure.empty()) failure = problem;
      }
    }
  };
  const size_t n_threads = std::max<size_t>(1, std::min<size_t>(files.size(), static_cast<size_t>(std::max(threads, 1))));
  std::vector<std::thread> pool;
  for (size_t t = 1; t < n_threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (!failure.empty()) throw std::runtime_error(failure);
  return verified;
}

uint64_t PersistentTier::sequence_number() const { return db_->GetLatestSequenceNumber(); }

void PersistentTier::catch_up() {
  if (!secondary_) throw std::runtime_error("catch_up: this PersistentTier is the primary (it is always current)");
  check(db_->TryCatchUpWithPrimary(), "catching up with the primary");
}

PersistentTier::~PersistentTier() {
  if (!db_) return;
  // The primary flushes its memtable: a store at rest keeps every row in checksummed table files.
  if (!secondary_) db_->Flush(rocksdb::FlushOptions()).PermitUncheckedError();
  db_->Close().PermitUncheckedError();
}

int64_t PersistentTier::count(uint32_t table) const {
  std::string value;
  rocksdb::Status status = db_->Get(rocksdb::ReadOptions(), count_key(table), &value);
  if (status.IsNotFound()) return 0;
  check(status, "reading a row count");
  return std::stoll(value);
}

void PersistentTier::put(uint32_t table, const int64_t* keys, const uint8_t* rows, int64_t n, int64_t row_bytes) {
  // Count the keys that are new (present neither in the database nor earlier in this batch).
  std::vector<uint8_t> found(static_cast<size_t>(n));
  std::vector<uint8_t> scratch(static_cast<size_t>(n * row_bytes));
  multi_get(table, keys, n, scratch.data(), found.data(), row_bytes);
  rocksdb::WriteBatch batch;
  char key[kKeyBytes];
  std::vector<int64_t> fresh;
  for (int64_t i = 0; i < n; ++i) {
    encode(table, keys[i], key);
    batch.Put(rocksdb::Slice(key, kKeyBytes),
              rocksdb::Slice(reinterpret_cast<const char*>(rows + i * row_bytes), static_cast<size_t>(row_bytes)));
    if (!found[static_cast<size_t>(i)]) fresh.push_back(keys[i]);
  }
  std::sort(fresh.begin(), fresh.end());
  const int64_t added = std::unique(fresh.begin(), fresh.end()) - fresh.begin();
  batch.Put(count_key(table), std::to_string(count(table) + added));
  check(db_->Write(rocksdb::WriteOptions(), &batch), "writing rows to RocksDB");
}

int64_t PersistentTier::erase(uint32_t table, const int64_t* keys, int64_t n) {
  std::vector<int64_t> unique(keys, keys + n);
  std::sort(unique.begin(), unique.end());
  unique.erase(std::unique(unique.begin(), unique.end()), unique.end());
  const int64_t m = static_cast<int64_t>(unique.size());
  std::vector<uint8_t> found(static_cast<size_t>(m));
  // Only existence matters: read the rows into a scratch buffer sized by the first hit.
  std::vector<std::string> values(static_cast<size_t>(m));
  std::vector<std::string> encoded(static_cast<size_t>(m), std::string(kKeyBytes, '\0'));
  std::vector<rocksdb::Slice> slices;
  slices.reserve(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    encode(table, unique[static_cast<size_t>(i)], encoded[static_cast<size_t>(i)].data());
    slices.emplace_back(encoded[static_cast<size_t>(i)]);
  }
  std::vector<rocksdb::Status> statuses = db_->MultiGet(rocksdb::ReadOptions(), slices, &values);
  rocksdb::WriteBatch batch;
  int64_t erased = 0;
  for (int64_t i = 0; i < m; ++i) {
    if (statuses[static_cast<size_t>(i)].ok()) {
      batch.Delete(slices[static_cast<size_t>(i)]);
      ++erased;
    } else if (!statuses[static_cast<size_t>(i)].IsNotFound()) {
      check(statuses[static_cast<size_t>(i)], "reading rows from RocksDB");
    }
  }
  if (erased) {
    batch.Put(count_key(table), std::to_string(count(table) - erased));
    check(db_->Write(rocksdb::WriteOptions(), &batch), "erasing rows from RocksDB");
  }
  return erased;
}

int64_t PersistentTier::multi_get(uint32_t table, const int64_t* keys, int64_t n, uint8_t* out, uint8_t* found,
                                  int64_t row_bytes) const {
  if (n == 0) return 0;
  std::vector<char> encoded(static_cast<size_t>(n) * kKeyBytes);
  std::vector<rocksdb::Slice> slices(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    encode(table, keys[i], encoded.data() + i * kKeyBytes);
    slices[static_cast<size_t>(i)] = rocksdb::Slice(encoded.data() + i * kKeyBytes, kKeyBytes);
  }
  std::vector<rocksdb::PinnableSlice> values(static_cast<size_t>(n));
  std::vector<rocksdb::Status> statuses(static_cast<size_t>(n));
  db_->MultiGet(rocksdb::ReadOptions(), db_->DefaultColumnFamily(), static_cast<size_t>(n), slices.data(),
                values.data(), statuses.data());
  int64_t hits = 0;
  for (int64_t i = 0; i < n; ++i) {
    const rocksdb::Status& status = statuses[static_cast<size_t>(i)];
    if (status.ok()) {
      if (static_cast<int64_t>(values[static_cast<size_t>(i)].size()) != row_bytes) {
        throw std::runtime_error("RocksDB holds a row of " + std::to_string(values[static_cast<size_t>(i)].size()) +
                                 " bytes for key " + std::to_string(keys[i]) + "; expected " + std::to_string(row_bytes));
      }
      std::memcpy(out + i * row_bytes, values[static_cast<size_t>(i)].data(), static_cast<size_t>(row_bytes));
      found[i] = 1;
      ++hits;
    } else if (status.IsNotFound()) {
      found[i] = 0;
    } else {
      check(status, "reading rows from RocksDB");
    }
  }
  return hits;
}

void PersistentTier::scan(uint32_t table, int64_t row_bytes, int64_t chunk,
                          const std::function<void(const int64_t*, const uint8_t*, int64_t)>& fn) const {
  char prefix[kKeyBytes];
  encode(table, 0, prefix);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  std::vector<int64_t> keys;
  std::vector<uint8_t> rows;
  for (it->Seek(rocksdb::Slice(prefix, 4)); it->Valid() && it->key().starts_with(rocksdb::Slice(prefix, 4)); it->Next()) {
    if (it->key().size() != kKeyBytes) continue;
    if (static_cast<int64_t>(it->value().size()) != row_bytes) {
      throw std::runtime_error("RocksDB holds a row of " + std::to_string(it->value().size()) + " bytes; expected " +
                               std::to_string(row_bytes));
    }
    keys.push_back(decode_key(it->key().data()));
    rows.insert(rows.end(), it->value().data(), it->value().data() + row_bytes);
    if (static_cast<int64_t>(keys.size()) == chunk) {
      fn(keys.data(), rows.data(), chunk);
      keys.clear();
      rows.clear();
    }
  }
  check(it->status(), "scanning RocksDB");
  if (!keys.empty()) fn(keys.data(), rows.data(), static_cast<int64_t>(keys.size()));
}

void PersistentTier::compact() {
  rocksdb::CompactRangeOptions options;
  options.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  check(db_->CompactRange(options, nullptr, nullptr), "compacting RocksDB");
}

int64_t PersistentTier::disk_bytes() const {
  uint64_t size = 0;
  db_->GetIntProperty("rocksdb.live-sst-files-size", &size);
  uint64_t memtable = 0;
  db_->GetIntProperty("rocksdb.cur-size-all-mem-tables", &memtable);
  return static_cast<int64_t>(size + memtable);
}

}  // namespace tritonrec
