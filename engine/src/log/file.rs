//! One file of the log (a segment or the hard-state file) opened either with O_DIRECT
//! (glommio `DmaFile`) or buffered (glommio `BufferedFile`); both submit their writes,
//! reads and `fdatasync` through the shard's io_uring.
//!
//! Callers always write whole pages starting at a page boundary (the log rewrites the
//! partial tail page from memory), so the same call sequence is valid in both modes.
//!
//! A [`LogFile`] must be closed with [`LogFile::close`] (or [`close_shared`]) by its owner.
//! Dropping one only queues a close on the shard's ring, which is never submitted if the
//! executor stops first: an executor that ends right after dropping files leaks their
//! descriptors.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{BufferedFile, DmaFile, OpenOptions};

/// Page size every write is aligned to (and a multiple of any O_DIRECT alignment we meet).
pub const PAGE_BYTES: u64 = 4096;

/// How the log's files are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// O_DIRECT: aligned writes from memory straight to the device, no page cache.
    Direct,
    /// Buffered writes into the page cache, made durable by `fdatasync`.
    Buffered,
    /// O_DIRECT | O_DSYNC: a write completes once its data is on stable storage (the
    /// kernel flushes the device's cache behind it), so a batch costs one io_uring
    /// operation instead of a write followed by an `fdatasync` (which io_uring always hands
    /// to a worker thread). Into zero-filled segments no metadata changes, so the flush is
    /// all the sync there is.
    DirectSync,
}

impl IoMode {
    /// Whether files are opened with O_DIRECT (writes whole, aligned pages).
    pub fn is_direct(self) -> bool {
        matches!(self, IoMode::Direct | IoMode::DirectSync)
    }

    /// Whether a completed write is already durable (no `fdatasync` needed after it).
    pub fn syncs_on_write(self) -> bool {
        self == IoMode::DirectSync
    }

    /// The name used on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            IoMode::Direct => "direct",
            IoMode::Buffered => "buffered",
            IoMode::DirectSync => "direct-sync",
        }
    }
}

impl std::str::FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<IoMode, String> {
        match s {
            "direct" => Ok(IoMode::Direct),
            "buffered" => Ok(IoMode::Buffered),
            "direct-sync" => Ok(IoMode::DirectSync),
            _ => Err(format!(
                "unknown io mode {s:?}: use direct, direct-sync or buffered"
            )),
        }
    }
}

/// An open file of the log.
#[derive(Debug)]
pub enum LogFile {
    /// Opened with O_DIRECT.
    Direct(DmaFile),
    /// Opened without O_DIRECT.
    Buffered(BufferedFile),
}

fn io_err(e: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(e)
}

/// Rounds `n` up to a page multiple.
pub const fn page_up(n: u64) -> u64 {
    (n + PAGE_BYTES - 1) & !(PAGE_BYTES - 1)
}

/// Rounds `n` down to a page multiple.
pub const fn page_down(n: u64) -> u64 {
    n & !(PAGE_BYTES - 1)
}

impl LogFile {
    /// Opens `path` read-write; creates it when `create` is set.
    pub async fn open(path: &Path, mode: IoMode, create: bool) -> io::Result<LogFile> {
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(create);
        Ok(match mode {
            IoMode::Direct => LogFile::Direct(o.dma_open(path).await.map_err(io_err)?),
            IoMode::DirectSync => LogFile::Direct(
                o.custom_flags(libc::O_DSYNC)
                    .dma_open(path)
                    .await
                    .map_err(io_err)?,
            ),
            IoMode::Buffered => LogFile::Buffered(o.buffered_open(path).await.map_err(io_err)?),
        })
    }

    /// Closes the file through io_uring and waits for the close to complete.
    pub async fn close(self) -> io::Result<()> {
        match self {
            LogFile::Direct(f) => f.close().await.map_err(io_err),
            LogFile::Buffered(f) => f.close().await.map_err(io_err),
        }
    }

    /// Writes all of `bytes` at `pos`. In direct mode `pos` and `bytes.len()` must be
    /// multiples of [`PAGE_BYTES`].
    pub async fn write_all_at(&self, bytes: &[u8], pos: u64) -> io::Result<()> {
        match self {
            LogFile::Direct(f) => {
                assert!(
                    pos % PAGE_BYTES == 0 && bytes.len() as u64 % PAGE_BYTES == 0,
                    "unaligned direct write"
                );
                let mut done = 0usize;
                while done < bytes.len() {
                    let mut buf = f.alloc_dma_buffer(bytes.len() - done);
                    buf.as_bytes_mut().copy_from_slice(&bytes[done..]);
                    let n = f.write_at(buf, pos + done as u64).await.map_err(io_err)?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "direct write wrote nothing",
                        ));
                    }
                    // A short O_DIRECT write ends on a block boundary; continue from there.
                    done += n;
                    assert!(
                        done as u64 % PAGE_BYTES == 0 || done == bytes.len(),
                        "short direct write off a page"
                    );
                }
                Ok(())
            }
            LogFile::Buffered(f) => {
                let mut done = 0usize;
                while done < bytes.len() {
                    let n = f
                        .write_at(bytes[done..].to_vec(), pos + done as u64)
                        .await
                        .map_err(io_err)?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "buffered write wrote nothing",
                        ));
                    }
                    done += n;
                }
                Ok(())
            }
        }
    }

    /// Writes zeros over `[from, to)` (page-aligned) in chunks of at most `chunk_bytes`,
    /// reusing one zeroed buffer: no copy and no allocation per chunk in direct mode.
    pub async fn write_zeros(&self, from: u64, to: u64, chunk_bytes: usize) -> io::Result<()> {
        assert!(
            from % PAGE_BYTES == 0 && to % PAGE_BYTES == 0 && chunk_bytes as u64 % PAGE_BYTES == 0
        );
        match self {
            LogFile::Direct(f) => {
                let mut buf = f.alloc_dma_buffer(chunk_bytes);
                buf.as_bytes_mut().fill(0);
                let buf = std::rc::Rc::new(buf);
                let mut at = from;
                while at < to {
                    let n = ((to - at) as usize).min(chunk_bytes);
                    let w = if n == chunk_bytes {
                        f.write_rc_at(buf.clone(), at).await.map_err(io_err)?
                    } else {
                        let mut tail = f.alloc_dma_buffer(n);
                        tail.as_bytes_mut().fill(0);
                        f.write_at(tail, at).await.map_err(io_err)?
                    };
                    if w == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "zero-fill wrote nothing",
                        ));
                    }
                    at += w as u64;
                    glommio::yield_if_needed().await;
                }
                Ok(())
            }
            LogFile::Buffered(_) => {
                let zeros = vec![0u8; chunk_bytes];
                let mut at = from;
                while at < to {
                    let n = ((to - at) as usize).min(chunk_bytes);
                    self.write_all_at(&zeros[..n], at).await?;
                    at += n as u64;
                    glommio::yield_if_needed().await;
                }
                Ok(())
            }
        }
    }

    /// Reads `len` bytes at `pos` into `out` (cleared first); fewer at the end of the file.
    pub async fn read_at(&self, pos: u64, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        const CHUNK_BYTES: usize = 1 << 20;
        let mut at = pos;
        let end = pos + len as u64;
        while at < end {
            let want = ((end - at) as usize).min(CHUNK_BYTES);
            let got = match self {
                LogFile::Direct(f) => {
                    let r = f.read_at(at, want).await.map_err(io_err)?;
                    out.extend_from_slice(&r);
                    r.len()
                }
                LogFile::Buffered(f) => {
                    let r = f.read_at(at, want).await.map_err(io_err)?;
                    out.extend_from_slice(&r);
                    r.len()
                }
            };
            if got == 0 {
                break;
            }
            at += got as u64;
        }
        Ok(())
    }

    /// `fdatasync` through io_uring.
    pub async fn fdatasync(&self) -> io::Result<()> {
        match self {
            LogFile::Direct(f) => f.fdatasync().await.map_err(io_err),
            LogFile::Buffered(f) => f.fdatasync().await.map_err(io_err),
        }
    }

    /// Reserves `size` bytes of disk for the file (and sets its length).
    pub async fn pre_allocate(&self, size: u64) -> io::Result<()> {
        match self {
            LogFile::Direct(f) => f.pre_allocate(size, false).await.map_err(io_err),
            LogFile::Buffered(f) => f.pre_allocate(size, false).await.map_err(io_err),
        }
    }

    /// The file's length in bytes.
    pub async fn file_size(&self) -> io::Result<u64> {
        match self {
            LogFile::Direct(f) => f.file_size().await.map_err(io_err),
            LogFile::Buffered(f) => f.file_size().await.map_err(io_err),
        }
    }
}

/// Closes a shared file if `f` is its last handle and returns `Ok(None)`; otherwise
/// gives the handle back (`Ok(Some(f))`): another holder still uses it, and the caller
/// must keep it and try again once that holder is done.
pub async fn close_shared(f: Rc<LogFile>) -> io::Result<Option<Rc<LogFile>>> {
    match Rc::try_unwrap(f) {
        Ok(f) => f.close().await.map(|()| None),
        Err(f) => Ok(Some(f)),
    }
}

/// Renames `from` to `to` (replacing `to`) through glommio.
pub async fn rename(from: &Path, to: &Path) -> io::Result<()> {
    glommio::io::rename(from, to).await.map_err(io_err)
}

/// Removes a file through glommio.
pub async fn remove(path: &Path) -> io::Result<()> {
    glommio::io::remove(path).await.map_err(io_err)
}

/// `fsync` of a directory, so that creations, renames and removals in it are durable.
pub async fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = glommio::io::Directory::open(dir).await.map_err(io_err)?;
    d.sync().await.map_err(io_err)?;
    d.close().await.map_err(io_err)
}

/// The path of the segment whose first entry is `first_index`.
pub fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}.seg"))
}

/// The first index encoded in a segment file name, if `name` is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}
