// PersistentTier: embedding rows on disk in RocksDB, read in batches with MultiGet.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace rocksdb {
class DB;
}

namespace tritonrec {

/// Options of a PersistentTier, validated by its constructor.
struct PersistentTierOptions {
  std::string path;                        ///< RocksDB directory
  bool create_if_missing = false;          ///< create an empty database when none exists
  int64_t block_cache_bytes = 64ll << 20;  ///< LRU block cache, in bytes
  int bloom_bits_per_key = 10;             ///< bloom filter bits per key (point lookups)
  /// Empty: open as the primary (the one writer; RocksDB's LOCK file keeps out a second one).
  /// Else open as a read-only secondary of the primary at `path` (any number may be open beside
  /// the primary and each other), keeping its own info log in this directory.
  std::string secondary_path;
};

/// What verify_file_checksums() read.
struct VerifiedFiles {
  int64_t files = 0;  ///< table files (.sst) whose whole-file checksum was checked
  int64_t bytes = 0;  ///< their total size, in bytes
};

/// One RocksDB database holding the rows of every table of a store: key = 4-byte table id and
/// 8-byte key (big-endian), value = the row's bytes in the table's storage dtype, plus one count
/// record per table. Every table file gets a whole-file CRC32C, recorded in RocksDB's MANIFEST as
/// the file is written (by flushes and compactions too), and reads check block checksums
/// (paranoid checks on). RAII: the constructor opens, the destructor closes. Copy deleted. All
/// calls are synchronous and safe to make from several threads.
class PersistentTier {
 public:
  /// @throw std::runtime_error with RocksDB's status when the database cannot be opened.
  explicit PersistentTier(const PersistentTierOptions& options);
  ~PersistentTier();
  PersistentTier(const PersistentTier&) = delete;
  PersistentTier& operator=(const PersistentTier&) = delete;

  /// Writes n rows of row_bytes each (one atomic batch) and keeps the table's row count.
  /// @throw std::runtime_error on a write error (e.g. a full disk); nothing of the batch is written.
  void put(uint32_t table, const int64_t* keys, const uint8_t* rows, int64_t n, int64_t row_bytes);

  /// Erases keys (one atomic batch); returns how many existed.
  int64_t erase(uint32_t table, const int64_t* keys, int64_t n);

  /// Reads n keys: row bytes into out (n * row_bytes), found[i] = 1 where present. Returns the
  /// number found. @throw std::runtime_error on a read error or a stored row of another size.
  int64_t multi_get(uint32_t table, const int64_t* keys, int64_t n, uint8_t* out, uint8_t* found,
                    int64_t row_bytes) const;

  /// Calls fn(keys, rows, count) over every row of a table, in chunks of at most `chunk` rows.
  void scan(uint32_t table, int64_t row_bytes, int64_t chunk,
            const std::function<void(const int64_t*, const uint8_t*, int64_t)>& fn) const;

  /// Compacts the whole database (after a bulk load: fewer files per read, no background
  /// compaction competing with the first lookups).
  void compact();

  /// Rows held for a table.
  int64_t count(uint32_t table) const;

  /// RocksDB's estimate of its live data on disk, in bytes.
  int64_t disk_bytes() const;

  /// Reads every live table file and checks it against the whole-file CRC32C in RocksDB's
  /// MANIFEST (streamed in 8 MiB reads, `threads` files at once; a primary's file deletions are
  /// paused meanwhile).
  /// @throw std::runtime_error naming the file, the computed and the recorded checksum (or sizes),
  ///        or a table file with no recorded checksum (written without one).
  VerifiedFiles verify_file_checksums(int threads = 1) const;

  /// A secondary: replays the primary's MANIFEST and WAL written since the last call, so that
  /// reads see its writes. @throw std::runtime_error on a primary: it is always current.
  void catch_up();

  /// The sequence number of the last write this instance sees (a secondary's moves on catch_up).
  uint64_t sequence_number() const;

  /// True when opened as a secondary (read-only).
  bool is_secondary() const noexcept { return secondary_; }

 private:
  std::unique_ptr<rocksdb::DB> db_;
  bool secondary_ = false;
};

}  // namespace tritonrec
