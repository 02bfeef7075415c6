//! `gpuslice completions SHELL`: the shell completion script, generated from the clap
//! definition so that it never lags behind the flags.

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};
use crate::exit::{self, Failure};

/// Prints the completion script for `args.shell` to stdout.
pub fn completions(args: &CompletionsArgs) -> Result<u8, Failure> {
    clap_complete::generate(
        args.shell,
        &mut Cli::command(),
        "gpuslice",
        &mut std::io::stdout().lock(),
    );
    Ok(exit::OK)
}
