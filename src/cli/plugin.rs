//! `infrakit plugin ls`: every plugin discovery can see, what it implements and where it was found.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use infrakit_sdk::discovery::default_socket;
use infrakit_sdk::rpc::client::{Endpoint, Protocol, RpcClient};
use infrakit_sdk::spi::INSTANCE;
use serde::Serialize;

use super::serve::ServeArgs;
use super::OutputFlags;
use crate::output::{self, errln, outln, Format};

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// List the plugins discovery finds: name, interfaces/versions, where found, socket. A name
    /// found in several places is listed once per place; `*` (JSON: "Picked") marks the one every
    /// command uses: the plugins directory first, then the engine's managed plugins, then the
    /// legacy locations.
    Ls {
        #[command(flatten)]
        out: OutputFlags,
    },
    /// Run one plugin in the foreground until SIGTERM/SIGINT (the managed plugins' entrypoint).
    Serve(ServeArgs),
    /// The plugins this build knows (its registry): name, interfaces, the binary that runs it, and
    /// where the swarm bundle runs it.
    Builtin {
        #[command(flatten)]
        out: OutputFlags,
    },
    /// Create a Docker managed plugin from a context directory (config.json + rootfs/), without
    /// the docker CLI: the context is sent as a tar to the engine's POST /plugins/create.
    #[command(
        after_help = "Example:\n  make static && scripts/plugins.sh create   # assembles target/plugins/<name>\n  \
        infrakit plugin create acme/group:0.1.0 target/plugins/group && docker plugin enable acme/group:0.1.0"
    )]
    Create {
        /// The plugin's reference, e.g. infrakit/group:0.1.0.
        name: String,
        /// The context directory holding config.json and rootfs/.
        dir: std::path::PathBuf,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    name: String,
    /// The one commands use for this name (the first source that has it).
    picked: bool,
    /// `infrakit` (ours) or `v0.5` (InfraKit v0.5's JSON-RPC); absent when it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<Protocol>,
    implements: Vec<String>,
    source: String,
    socket: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn run(cmd: PluginCommand) -> Result<()> {
    match cmd {
        PluginCommand::Ls { out } => ls(out.format()).await,
        PluginCommand::Serve(_) => unreachable_serve(),
        PluginCommand::Create { name, dir } => create(&name, &dir).await,
        PluginCommand::Builtin { out } => builtin(out.format()),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct BuiltinRow {
    name: &'static str,
    implements: Vec<String>,
    binary: &'static str,
    runs_on: &'static str,
}

fn builtin(format: Format) -> Result<()> {
    let rows: Vec<BuiltinRow> = crate::registry::PLUGINS
        .iter()
        .map(|e| BuiltinRow {
            name: e.name,
            implements: e.interfaces.iter().map(|i| i.to_string()).collect(),
            binary: e.binary(),
            runs_on: if e.managers_only {
                "managers"
            } else {
                "every node"
            },
        })
        .collect();
    match format {
        Format::Json => output::json(&rows),
        Format::Quiet => output::lines(rows.into_iter().map(|r| r.name.to_string())),
        Format::Table => output::table(
            &["NAME", "INTERFACES", "BINARY", "ON A SWARM"],
            &rows
                .iter()
                .map(|r| {
                    vec![
                        r.name.to_string(),
                        r.implements.join(","),
                        r.binary.to_string(),
                        r.runs_on.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
}

async fn create(name: &str, dir: &std::path::Path) -> Result<()> {
    let Some(engine) = infrakit_docker::Engine::from_env() else {
        anyhow::bail!(
            "DOCKER_HOST is not a unix:// address: plugin create talks to a local engine"
        );
    };
    // Unpacking a rootfs takes the engine longer than a listing: a generous overall limit.
    let engine = engine.with_timeouts(Duration::from_secs(2), Duration::from_secs(300));
    let context = infrakit_docker::create::context_tar(dir)?;
    let size = context.len();
    engine.create_plugin(name, context).await?;
    outln!(
        "created plugin {name} ({:.1} MB context); enable it with: docker plugin enable {name}",
        size as f64 / 1_048_576.0
    );
    Ok(())
}

/// Finds plugin `name` as every command does, and says on stderr (one line) when the one that
/// will answer is not in the plugins directory: with none of their own running, a person would
/// otherwise talk to an engine's managed plugin of the same name without knowing it.
pub async fn find(name: &str) -> Result<Endpoint> {
    let (endpoint, source) = infrakit_docker::discovery_from_env().locate(name).await?;
    if source != "dir" {
        let from = match source.as_str() {
            "engine" => "the Docker engine's managed plugins",
            "legacy" => "Docker's legacy plugin locations",
            other => other,
        };
        errln!(
            "infrakit: plugin '{}' answers from {from} ({}): none in the plugins directory ({})",
            endpoint.name,
            endpoint.socket.display(),
            default_socket(&endpoint.name).display()
        );
    }
    Ok(endpoint)
}

fn unreachable_serve() -> Result<()> {
    anyhow::bail!("internal: serve is dispatched before the async runtime starts")
}

async fn ls(format: Format) -> Result<()> {
    let found = infrakit_docker::discovery_from_env().list_all().await?;
    let found_names: Vec<String> = found.iter().map(|f| f.name.clone()).collect();
    // Ask every plugin at once what it implements; one that does not answer is shown, not hidden.
    let tasks: Vec<_> = found
        .into_iter()
        .enumerate()
        .map(|(i, f)| (i == 0 || found_names[i - 1] != f.name, f))
        .map(|(picked, f)| {
            tokio::spawn(async move {
                let client = RpcClient::with_timeout(
                    Endpoint::new(&f.name, &f.socket),
                    INSTANCE,
                    Duration::from_secs(3),
                );
                let (protocol, implements, error) = match client.identify().await {
                    Ok((p, i)) => (Some(p), i, None),
                    Err(e) => (None, Vec::new(), Some(e.message)),
                };
                Row {
                    name: f.name,
                    picked,
                    protocol,
                    implements,
                    source: f.source,
                    socket: f.socket.display().to_string(),
                    error,
                }
            })
        })
        .collect();
    let mut rows = Vec::new();
    for t in tasks {
        rows.push(t.await?);
    }
    match format {
        Format::Json => output::json(&rows),
        Format::Quiet => output::lines(rows.into_iter().filter(|r| r.picked).map(|r| r.name)),
        Format::Table => output::table(
            &[
                "NAME",
                "PICKED",
                "PROTOCOL",
                "INTERFACES",
                "FOUND IN",
                "SOCKET",
            ],
            &rows
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        if r.picked { "*" } else { "" }.to_string(),
                        r.protocol.map(|p| p.to_string()).unwrap_or_default(),
                        match &r.error {
                            Some(e) => format!("(not answering: {e})"),
                            None => r.implements.join(","),
                        },
                        r.source.clone(),
                        r.socket.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
}
