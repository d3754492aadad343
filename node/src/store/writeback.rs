//! Early writeback: each chunk a [`Writer`](super::Writer) writes is handed to the disk at
//! once (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the device works on a segment while the
//! rest of it is still arriving and being hashed, and the fsync that makes the segment durable
//! waits only for its tail. Without it the kernel starts writeback of the dirty pages only at
//! that fsync (or after its dirty-expiry time), and every segment pays its whole transfer to
//! the device after its last byte came.
//!
//! This is a hint: durability still comes from the fsync in `writer::seal`, and a failure here
//! is ignored (the fsync reports real I/O errors). It is also the second place in the
//! workspace that allows `unsafe` (the first is the tools' allocator): neither `std` nor the
//! `rustix`/`nix` versions in the lock expose `sync_file_range`, and the one call passes a file
//! descriptor borrowed for the call and plain integers.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

/// Starts writeback of `len` bytes of `file` from `offset`, without waiting for it.
pub(super) fn start(file: &File, offset: u64, len: usize) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor stays open for the call (`file` is borrowed), and the call reads
    // no memory of ours.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}
