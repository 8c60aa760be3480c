//! The allocator the `diffuse` binary runs with (see its `main.rs`), for the kernel benchmarks: mimalloc that keeps
//! freed memory. With the system allocator every large output is fresh memory whose pages fault in (and are
//! zeroed) during the timed call, which is not what a kernel costs inside a generation.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in mimalloc for good; call first thing in `main`.
pub fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; it is called before any other
    // thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}
