//! `trainer`: see `trainer --help`. Exit code 0 on success, 2 on any error.

// A training step allocates and frees the same activation sizes over and over; glibc's
// malloc returns large blocks to the kernel and faults them in again, mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (not among the constants `libmimalloc-sys` names).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Never purge: by default mimalloc hands pages unused for 10 ms back to the kernel, which
    // zeroes them again on the next touch. A 28x28 batch-64 training step took 230,000 page
    // faults that way, 5-10% of its time. The peak memory is the same either way.
    // SAFETY: sets an integer option; called before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    trainer::cli::main()
}
