//! The `recurrentd` binary: parse the command line and hand over to the library.

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
    // Logging is set up by `cli::run` once the config (and its `log.format`) is read.
    cli::run(cli)
}
