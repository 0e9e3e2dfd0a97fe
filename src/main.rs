//! The `fallthrough` binary: parse the command line and hand over to the library.

use clap::Parser;
use fallthrough::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => fallthrough::run::run(*args)?,
        Command::Check { routes } => fallthrough::run::check(&routes)?,
        Command::Crd => print!("{}", fallthrough::run::crd_yaml()?),
    }
    Ok(())
}
