//! The command line: clap definitions and dispatch. Each subcommand lives in its own module.

mod bootstrap;
mod events;
mod flavor;
mod group;
mod input;
mod instance;
mod plugin;
pub mod serve;
mod swarm;
mod up;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::output::Format;

#[derive(Parser, Debug)]
#[command(
    name = "infrakit",
    version,
    about = "Declarative, self-healing infrastructure: groups of instances that converge by themselves",
    long_about = "infrakit runs and talks to InfraKit plugins: instance plugins make instances, flavor plugins \
                  give them meaning, and a group controller keeps groups of them as their spec says.\n\n\
                  Plugins are found by name in the plugins directory ($INFRAKIT_PLUGINS_DIR, default \
                  ~/.infrakit/plugins), then among the Docker engine's enabled managed plugins, then in \
                  Docker's legacy plugin locations; a command says on stderr when the plugin that \
                  answers is not from the plugins directory.",
    propagate_version = true
)]
pub struct Cli {
    /// Log filter: error, warn, info, debug, trace, or tracing's syntax (env INFRAKIT_LOG).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone, Copy)]
pub struct OutputFlags {
    /// Print JSON (for scripts) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only IDs (or names), one per line.
    #[arg(short, long, global = true, conflicts_with = "json")]
    pub quiet: bool,
}

impl OutputFlags {
    pub fn format(self) -> Format {
        Format::from_flags(self.json, self.quiet)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List, run and inspect plugins.
    Plugin {
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
    /// Talk to an instance plugin.
    Instance(instance::InstanceArgs),
    /// Talk to a flavor plugin.
    Flavor(flavor::FlavorArgs),
    /// Commit, inspect and steer groups (through the group plugin).
    Group(group::GroupArgs),
    /// Run the plugins on a swarm as plugin services: deploy, ls, upgrade, remove.
    Swarm(swarm::SwarmArgs),
    /// Quick start: run the controller and built-in plugins here, commit FILE, watch it converge.
    Up(up::UpArgs),
    /// Grow a swarm from one seed node: make the seed, start the swarm on it, deploy the plugins,
    /// commit the manager and worker groups, and wait until every node is Ready.
    Bootstrap(bootstrap::BootstrapArgs),
}

impl Command {
    /// `plugin serve`: a plugin process, whose logs go where the engine expects them.
    pub fn is_plugin(&self) -> bool {
        matches!(
            self,
            Command::Plugin {
                command: plugin::PluginCommand::Serve(_)
            }
        )
    }

    /// The files the command reads: a missing one is reported before anything else happens.
    pub fn input_files(&self) -> Vec<&str> {
        match self {
            Command::Plugin { .. } => vec![],
            Command::Instance(args) => args.command.input_files(),
            Command::Flavor(args) => args.command.input_files(),
            Command::Group(args) => args.command.input_files(),
            Command::Up(args) => vec![&args.file],
            Command::Swarm(_) => vec![],
            Command::Bootstrap(args) => vec![&args.file],
        }
    }

    /// Plugins log what they do; commands a person runs only warn.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Plugin {
                command: plugin::PluginCommand::Serve(_),
            } => "info",
            _ => "warn",
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    input::check_exist(cli.command.input_files())?;
    match cli.command {
        Command::Plugin {
            command: plugin::PluginCommand::Serve(args),
        } => serve::run(args),
        Command::Plugin { command } => block_on(plugin::run(command)),
        Command::Instance(args) => block_on(instance::run(args)),
        Command::Flavor(args) => block_on(flavor::run(args)),
        Command::Group(args) => block_on(group::run(args)),
        Command::Up(args) => up::run(args),
        Command::Swarm(args) => block_on(swarm::run(args)),
        Command::Bootstrap(args) => block_on(bootstrap::run(args)),
    }
}

/// One-shot commands run on a single-threaded runtime: they make a few calls and exit.
fn block_on<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

#[cfg(test)]
mod tests {
    /// clap checks a command's definition only when it is parsed: check every subcommand's here
    /// (two arguments called `version` once made `bootstrap` panic at start).
    #[test]
    fn every_command_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
