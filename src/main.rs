//! `infrakit`: the command line and, through `infrakit plugin serve <kind>`, every plugin's process
//! (one static multi-call binary is what each managed plugin's rootfs holds).

mod cli;
mod output;
mod registry;

use clap::Parser;
use infrakit_sdk::logging::{self, Output};

fn main() {
    let args = cli::Cli::parse();
    let output = if args.command.is_plugin() {
        Output::Plugin
    } else {
        Output::Command
    };
    logging::init(
        args.log_level.as_deref(),
        args.command.default_log_level(),
        output,
    );
    let code = match cli::run(args) {
        Ok(()) => 0,
        // `infrakit ... | head`: the reader has what it wanted; end as if done.
        Err(e) if output::is_closed_pipe(&e) => 0,
        Err(e) => {
            output::errln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
