//! `curate`: turn lists of copyright-cleared image URLs into training-ready
//! data for a text-to-image diffusion model.
//!
//! Exit codes: 0 ok, 1 failure, 2 usage.

mod cli;
mod commands;
mod imaging;
mod paths;
mod progress;

use std::process::ExitCode;

use clap::Parser;

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
    progress::init_logging(&cli.global);
    match commands::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
