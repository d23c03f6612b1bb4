//! `trainer`: see `trainer --help`. Exit code 0 on success, 2 on any error.

// A training step allocates and frees the same activation sizes over and over; glibc's
// malloc returns large blocks to the kernel and faults them in again, mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    trainer::cli::main()
}
