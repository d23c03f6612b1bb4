//! `trainer`: see `trainer --help`. Exit code 0 on success, 2 on any error.

fn main() -> std::process::ExitCode {
    trainer::cli::main()
}
