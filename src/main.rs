//! The `fallthrough` binary: parse the command line and hand over to the library.

use clap::Parser;

// The proxy allocates small, short-lived buffers on every request; mimalloc's
// thread-local free lists do that markedly cheaper than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use fallthrough::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => fallthrough::run::run(*args)?,
        Command::Check { routes } => fallthrough::run::check(&routes)?,
        Command::Crd => print!("{}", fallthrough::run::crd_yaml()?),
        Command::Paths(args) => fallthrough::insight::command::paths(args)?,
    }
    Ok(())
}
