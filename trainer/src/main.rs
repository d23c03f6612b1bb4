//! `trainer`: see `trainer --help`. Exit code 0 on success, 2 on any error (one line).

#[global_allocator]
static GLOBAL: fewstep_host::Allocator = fewstep_host::Allocator;

fn main() -> std::process::ExitCode {
    fewstep_host::init();
    match fewstep_host::parse::<trainer::cli::Cli>() {
        Ok(cli) => fewstep_host::exit(trainer::cli::run(cli)),
        Err(code) => code,
    }
}
