//! Writes a table file from entries given in sorted order.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::block::BlockBuilder;
use super::{FOOTER_LEN, MAGIC, PAGE, TableMeta, bloom};
use crate::error::{IoContext, Result};
use crate::key;
use crate::options::Options;

/// Builds one SSTable. Call [`TableBuilder::finish`] to complete and fsync it.
#[derive(Debug)]
pub struct TableBuilder {
    out: ChunkWriter,
    path: PathBuf,
    number: u64,
    offset: u64,
    data: BlockBuilder,
    index: BlockBuilder,
    block_size: usize,
    /// With [`Options::block_align`]: the largest data block, so that it and
    /// its checksum end on a page boundary.
    aligned_cap: Option<usize>,
    bloom_bits: usize,
    hashes: Vec<u64>,
    last_user_key: Vec<u8>,
    smallest: Vec<u8>,
    entries: u64,
    max_seq: u64,
}

impl TableBuilder {
    /// Creates table file `number` at `path`.
    ///
    /// # Errors
    ///
    /// The file cannot be created.
    pub fn create(path: &Path, number: u64, opts: &Options) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .ctx(path)?;
        Ok(TableBuilder {
            out: ChunkWriter::new(
                file,
                if opts.huge_page_tables {
                    HUGE_CHUNK
                } else {
                    SMALL_CHUNK
                },
            ),
            path: path.to_path_buf(),
            number,
            offset: 0,
            data: BlockBuilder::new(opts.block_restart_interval),
            index: BlockBuilder::new(1),
            block_size: opts.block_size,
            aligned_cap: (opts.block_align && opts.block_size >= PAGE as usize)
                .then(|| opts.block_size.next_multiple_of(PAGE as usize) - 4),
            bloom_bits: opts.bloom_bits_per_key,
            hashes: Vec::new(),
            last_user_key: Vec::new(),
            smallest: Vec::new(),
            entries: 0,
            max_seq: 0,
        })
    }

    /// Appends an entry; internal keys must come in increasing order.
    ///
    /// # Errors
    ///
    /// Writing a finished block failed.
    pub(crate) fn add(&mut self, ikey: &[u8], value: &[u8]) -> Result<()> {
        if self.entries == 0 {
            self.smallest = ikey.to_vec();
        }
        let uk = key::user_key(ikey);
        if self.entries == 0 || uk != self.last_user_key.as_slice() {
            self.hashes.push(bloom::hash(uk));
            self.last_user_key.clear();
            self.last_user_key.extend_from_slice(uk);
        }
        if let Some((_, seq, _)) = key::parse(ikey) {
            self.max_seq = self.max_seq.max(seq);
        }
        match self.aligned_cap {
            Some(cap) => {
                if !self.data.add_within(ikey, value, cap) {
                    self.flush_data_block()?;
                    self.data.add(ikey, value);
                }
            }
            None => {
                self.data.add(ikey, value);
                if self.data.size_estimate() >= self.block_size {
                    self.flush_data_block()?;
                }
            }
        }
        self.entries += 1;
        Ok(())
    }

    /// Bytes written so far (an estimate of the final size).
    pub fn estimated_size(&self) -> u64 {
        self.offset + self.data.size_estimate() as u64
    }

    fn write_block(&mut self, block: &[u8]) -> Result<(u64, u64)> {
        let at = self.offset;
        self.out.write_all(block).ctx(&self.path)?;
        self.out
            .write_all(&crc32fast::hash(block).to_le_bytes())
            .ctx(&self.path)?;
        self.offset += block.len() as u64 + 4;
        Ok((at, block.len() as u64))
    }

    /// Writes zeros up to the next multiple of `align` (at most 4 KiB).
    fn pad_to(&mut self, align: u64) -> Result<()> {
        let pad = self.offset.next_multiple_of(align) - self.offset;
        self.out
            .write_all(&[0u8; PAGE as usize][..pad as usize])
            .ctx(&self.path)?;
        self.offset += pad;
        Ok(())
    }

    fn flush_data_block(&mut self) -> Result<()> {
        if self.data.is_empty() {
            return Ok(());
        }
        if self.aligned_cap.is_some() {
            self.pad_to(PAGE)?;
        }
        let last = self.data.last_key().to_vec();
        let block = self.data.finish();
        let (off, len) = self.write_block(&block)?;
        let mut handle = Vec::with_capacity(12);
        handle.extend_from_slice(&off.to_le_bytes());
        handle.extend_from_slice(&(len as u32).to_le_bytes());
        self.index.add(&last, &handle);
        Ok(())
    }

    /// Writes the filter, index and footer, fsyncs the file and returns its
    /// metadata. The caller must fsync the directory before naming the file
    /// in the manifest.
    ///
    /// # Errors
    ///
    /// Any write or the fsync failed.
    pub fn finish(mut self) -> Result<TableMeta> {
        let largest = self.data.last_key().to_vec();
        let largest = if largest.is_empty() {
            self.last_index_key()
        } else {
            largest
        };
        self.flush_data_block()?;
        let filter = if self.bloom_bits > 0 {
            bloom::build(&self.hashes, self.bloom_bits)
        } else {
            Vec::new()
        };
        if self.aligned_cap.is_some() {
            // A key's filter probes share one 64-byte line of the filter;
            // aligned, that is one cache line instead of two.
            self.pad_to(64)?;
        }
        let (bloom_off, bloom_len) = self.write_block(&filter)?;
        let index = self.index.finish();
        let (index_off, index_len) = self.write_block(&index)?;
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        for v in [bloom_off, bloom_len, index_off, index_len, self.entries] {
            footer.extend_from_slice(&v.to_le_bytes());
        }
        footer.extend_from_slice(&crc32fast::hash(&footer).to_le_bytes());
        footer.extend_from_slice(&MAGIC.to_le_bytes());
        self.out.write_all(&footer).ctx(&self.path)?;
        self.offset += footer.len() as u64;
        crate::fault::check("table-write", &self.path)?;
        let file = self.out.finish().ctx(&self.path)?;
        crate::fault::check("table-sync", &self.path)?;
        file.sync_all().ctx(&self.path)?;
        Ok(TableMeta {
            number: self.number,
            size: self.offset,
            smallest: self.smallest,
            largest,
            entries: self.entries,
            max_seq: self.max_seq,
        })
    }

    fn last_index_key(&self) -> Vec<u8> {
        self.index.last_key().to_vec()
    }
}

/// Bytes [`ChunkWriter`] hands to the file per `write` with
/// [`Options::huge_page_tables`]: one 2 MiB huge page.
const HUGE_CHUNK: usize = 2 << 20;
/// ... and without.
const SMALL_CHUNK: usize = 256 << 10;

/// Writes a file in whole, aligned chunks (and the rest at the end).
///
/// With 2 MiB chunks the page cache holds the table in 2 MiB folios (on
/// file systems with large folios, ext4 and xfs on current kernels), and the
/// table's read-only mapping maps them with 2 MiB pages: a lookup's data
/// block then costs no page walk of its own. Smaller or unaligned writes
/// leave 4 KiB pages (256 KiB or 1 MiB writes did on ext4 with Linux 6.18).
#[derive(Debug)]
struct ChunkWriter<W = File> {
    file: W,
    buf: Vec<u8>,
    chunk: usize,
}

impl<W: Write> ChunkWriter<W> {
    fn new(file: W, chunk: usize) -> Self {
        ChunkWriter {
            file,
            buf: Vec::with_capacity(chunk),
            chunk,
        }
    }

    fn write_all(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let take = (self.chunk - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.chunk {
                self.file.write_all(&self.buf)?;
                self.buf.clear();
            }
        }
        Ok(())
    }

    /// Writes what is buffered and returns the file.
    fn finish(mut self) -> std::io::Result<W> {
        self.file.write_all(&self.buf)?;
        Ok(self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the length of each `write` it gets.
    #[derive(Default)]
    struct Writes(Vec<usize>, Vec<u8>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.len());
            self.1.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn chunk_writer_writes_whole_chunks_then_the_rest() {
        let mut w = ChunkWriter::new(Writes::default(), HUGE_CHUNK);
        let mut want = Vec::new();
        for i in 0..3000u32 {
            // Blocks of odd sizes, and a few larger than a chunk.
            let len = if i % 1000 == 999 {
                5 << 20
            } else {
                4093 + i as usize % 7
            };
            let block = vec![i as u8; len];
            w.write_all(&block).expect("write");
            want.extend_from_slice(&block);
        }
        let out = w.finish().expect("finish");
        let (last, whole) = out.0.split_last().expect("writes");
        assert!(whole.iter().all(|&n| n == HUGE_CHUNK), "{whole:?}");
        assert!(*last <= HUGE_CHUNK);
        assert_eq!(out.1, want);
    }
}
