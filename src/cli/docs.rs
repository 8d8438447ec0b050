//! `recurrentd completions SHELL` and `recurrentd man`: generated from the clap definitions
//! ([`super::Cli`]), so they always match `--help`. Neither reads the config.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, exit};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write one page per command (recurrentd.1, recurrentd-run.1, …) into this folder instead
    /// of the main page to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn completions(args: &CompletionsArgs) -> u8 {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "recurrentd", &mut out);
    write_stdout(&out)
}

pub fn man(args: &ManArgs) -> u8 {
    let command = Cli::command();
    if let Some(dir) = &args.dir {
        if let Err(error) =
            std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(command, dir))
        {
            eprintln!(
                "recurrentd: cannot write the man pages to {}: {error}",
                dir.display()
            );
            return exit::IO_ERROR;
        }
        println!("Man pages written to {}", dir.display());
        return exit::OK;
    }
    let mut out = Vec::new();
    if let Err(error) = clap_mangen::Man::new(command).render(&mut out) {
        eprintln!("recurrentd: cannot render the man page: {error}");
        return exit::INTERNAL;
    }
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> u8 {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("recurrentd: cannot write: {e}");
            exit::INTERNAL
        }
    }
}
