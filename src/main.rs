//! The `recurrentd` binary: parse the command line, set up logging, hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use recurrentd::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version are not errors; clap knows which code each one gets.
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() {
                cli::exit::USAGE
            } else {
                cli::exit::OK
            });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    cli::run(cli)
}
