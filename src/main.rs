//! `curate`: turn lists of copyright-cleared image URLs into training-ready
//! data for a text-to-image diffusion model.
//!
//! Exit codes: 0 ok, 1 failure, 2 usage.

mod cli;
mod commands;
mod paths;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use curate_stage::progress::{set_mode, ProgressMode as Mode};
use tracing_subscriber::EnvFilter;

use cli::ProgressMode;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(&cli.global);
    match commands::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `tracing` to stderr, and the stage runtime's progress mode
/// (`curate_stage::progress`): indicatif bars on a terminal, plain
/// `tracing` lines otherwise (Slurm logs, CI, pipes).
fn init_logging(global: &crate::cli::GlobalArgs) {
    let level = match (global.quiet, global.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("CURATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},ort=warn")));
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
    set_mode(match global.progress {
        ProgressMode::Auto if ansi && !global.quiet => Mode::Bar,
        ProgressMode::Auto if global.quiet => Mode::None,
        ProgressMode::Auto => Mode::Log,
        ProgressMode::Bar => Mode::Bar,
        ProgressMode::Log => Mode::Log,
        ProgressMode::None => Mode::None,
    });
}
