//! What fewstep's two binaries (`sampler-cli`, `trainer`) share on a workstation, and
//! nothing else needs: the allocator, the command-line contract (a bad flag or a failed run
//! is one line on stderr and exit code 2; `--help` and `--version` exit 0) and progress
//! bars. Above both binaries' libraries, below their `main`s; sampler-core stays free of it
//! (it also runs on a microcontroller).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

/// The allocator of both binaries (each names it `#[global_allocator]` in its `main.rs`:
/// a library cannot, or test binaries that count allocations could not use their own).
/// Every denoiser evaluation and training step allocates and frees activations of the same
/// sizes; glibc's malloc hands large ones back to the kernel and faults them in again (a
/// sixth of a batch-16 sampling run went to page faults). mimalloc keeps them.
pub use mimalloc::MiMalloc as Allocator;

/// mimalloc's `mi_option_purge_delay` (not among the constants `libmimalloc-sys` names).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The exit code of every error: bad flags, bad input, failed runs.
pub const EXIT_ERROR: u8 = 2;

/// Sets up the process for long runs; call it first in `main`, before any thread exists.
///
/// Never purge: by default mimalloc hands pages unused for 10 ms back to the kernel, which
/// zeroes them again on the next touch. A 28x28 batch-64 training step took 230,000 page
/// faults that way, 5-10% of its time; the peak memory is the same either way.
pub fn init() {
    // SAFETY: sets an integer option; the caller runs it before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Parses the command line into `P`. `--help` and `--version` print and give `Err(0)`; a bad
/// flag prints clap's first line (without its usage block) and gives `Err(2)`, the same one
/// line as every other error.
pub fn parse<P: Parser>() -> Result<P, ExitCode> {
    parse_from(std::env::args_os())
}

/// [`parse`] over given arguments (the first is the program name).
pub fn parse_from<P: Parser>(
    args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> Result<P, ExitCode> {
    match P::try_parse_from(args) {
        Ok(p) => Ok(p),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}", usage_error_line(&e.render().to_string()));
            Err(ExitCode::from(EXIT_ERROR))
        }
    }
}

/// The one line a bad flag prints: clap's first non-blank line, pointing at `--help`.
pub fn usage_error_line(rendered: &str) -> String {
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("error");
    format!("{}; see --help", first.trim_end())
}

/// The exit code of a run: 0, or the error (with its causes) on one line and 2.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// A progress bar on stderr for `total` steps in `template` (indicatif's), hidden when
/// `hidden` or when stderr is not a terminal (logs and pipes get no control codes).
pub fn progress(total: u64, template: &str, hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    struct Args {
        #[arg(long, default_value_t = 1)]
        count: u32,
    }

    #[test]
    fn a_bad_flag_is_one_line_and_exit_2() {
        let e = Args::try_parse_from(["x", "--cont", "3"]).unwrap_err();
        let line = usage_error_line(&e.render().to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("error: unexpected argument '--cont'"),
            "{line}"
        );
        assert!(line.ends_with("; see --help"), "{line}");
        assert_eq!(
            parse_from::<Args>(["x", "--count", "x"]).unwrap_err(),
            ExitCode::from(EXIT_ERROR)
        );
        assert_eq!(parse_from::<Args>(["x", "--count", "3"]).unwrap().count, 3);
    }

    #[test]
    fn help_is_not_an_error() {
        assert_eq!(
            parse_from::<Args>(["x", "--help"]).unwrap_err(),
            ExitCode::SUCCESS
        );
    }
}
