//! The `vodmesh` binary's global allocator: mimalloc, or jemalloc for `vodmesh sim`.
//!
//! mimalloc is the binary's allocator (the glibc one costs 20-25 % on the stream read path,
//! DESIGN section 12). It threads its free lists through the free blocks themselves, so
//! reserving memory touches it: every `kad::Behaviour` reserves 256 k-buckets of 20 entries
//! (6.4 KB each, 1.6 MB a peer) although a peer fills about 15 of them, and with mimalloc
//! those reservations are resident. A simulation of 10^4 stations spent 19 GiB on them.
//! jemalloc keeps its bookkeeping apart from the blocks, so untouched capacity stays
//! untouched; `vodmesh sim` runs on it.
//!
//! The choice is made once per process, at its first allocation, from the environment
//! variable [`SWITCH`] (read with `getenv`, which does not allocate): every block is then freed
//! by the allocator that made it. `vodmesh sim` started without it re-executes itself with it
//! set ([`exec_with_jemalloc`]).
//!
//! The one place in the workspace that allows `unsafe`: a `GlobalAlloc` cannot be written
//! without it. Every unsafe call here only forwards to one of the two allocators.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU8, Ordering};

/// The environment variable that selects jemalloc (value `jemalloc`).
pub const SWITCH: &std::ffi::CStr = c"VODMESH_ALLOCATOR";

const UNDECIDED: u8 = 0;
const MIMALLOC: u8 = 1;
const JEMALLOC: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

fn choice() -> u8 {
    match CHOICE.load(Ordering::Relaxed) {
        UNDECIDED => {
            // SAFETY: both strings are NUL-terminated; getenv returns NULL or a C string that
            // stays valid while nobody sets the environment, which this process does only in
            // a child it is about to exec.
            let jemalloc = unsafe {
                let value = libc::getenv(SWITCH.as_ptr());
                !value.is_null() && libc::strcmp(value, c"jemalloc".as_ptr()) == 0
            };
            let c = if jemalloc { JEMALLOC } else { MIMALLOC };
            // Two threads that race here read the same environment and store the same value.
            CHOICE.store(c, Ordering::Relaxed);
            c
        }
        c => c,
    }
}

/// Whether this process allocates with jemalloc.
pub fn is_jemalloc() -> bool {
    choice() == JEMALLOC
}

/// mimalloc, or jemalloc when [`SWITCH`] says so at the first allocation.
pub struct Allocator;

// SAFETY: every call goes to one allocator, the same for the whole life of the process, so
// each block is freed and resized by the allocator that made it.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if choice() == JEMALLOC {
                tikv_jemallocator::Jemalloc.alloc(layout)
            } else {
                mimalloc::MiMalloc.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if choice() == JEMALLOC {
                tikv_jemallocator::Jemalloc.alloc_zeroed(layout)
            } else {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the same allocator (the choice never changes).
        unsafe {
            if choice() == JEMALLOC {
                tikv_jemallocator::Jemalloc.dealloc(ptr, layout)
            } else {
                mimalloc::MiMalloc.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from the same allocator (the choice never changes).
        unsafe {
            if choice() == JEMALLOC {
                tikv_jemallocator::Jemalloc.realloc(ptr, layout, new_size)
            } else {
                mimalloc::MiMalloc.realloc(ptr, layout, new_size)
            }
        }
    }
}

/// Replaces this process with itself, same arguments, on jemalloc; returns only if that is not
/// possible (the caller then goes on with the allocator it has).
pub fn exec_with_jemalloc() -> std::io::Error {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(std::ffi::OsStr::from_bytes(SWITCH.to_bytes()), "jemalloc")
        .exec()
}
