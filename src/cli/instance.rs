//! `infrakit instance --name P ...`: call an instance plugin.

use anyhow::Result;
use clap::{Args, Subcommand};
use infrakit_sdk::rpc::client::InstanceClient;
use infrakit_sdk::spi::instance::{DestroyContext, DestroyReason, InstancePlugin, Spec};
use serde_json::Value;

use super::input::{parse_pairs, read_json};
use super::OutputFlags;
use crate::output::{self, errln, outln, Format};

#[derive(Args, Debug)]
pub struct InstanceArgs {
    /// The instance plugin's name (e.g. instance-file).
    #[arg(long, short = 'n', default_value = "instance-file")]
    pub name: String,
    #[command(flatten)]
    pub out: OutputFlags,
    #[command(subcommand)]
    pub command: InstanceCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reason {
    Terminate,
    RollingUpdate,
}

#[derive(Subcommand, Debug)]
pub enum InstanceCommand {
    /// Check instance properties (a JSON file, - for stdin).
    Validate { file: String },
    /// Create one instance from a spec file ({"Properties":..., "Tags":..., "Init":..., "LogicalID":...}).
    Provision { file: String },
    /// Merge KEY=VALUE labels into an instance's tags.
    Label {
        id: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Destroy instances.
    Destroy {
        #[arg(required = true)]
        ids: Vec<String>,
        #[arg(long, value_enum, default_value = "terminate")]
        reason: Reason,
    },
    /// List instances, optionally only those carrying every given tag.
    Describe {
        /// Only instances with this tag (repeatable).
        #[arg(long = "tags", short = 't', value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Include backend properties.
        #[arg(long)]
        properties: bool,
    },
}

impl InstanceCommand {
    /// The files the command reads (checked before anything else is done).
    pub fn input_files(&self) -> Vec<&str> {
        match self {
            InstanceCommand::Validate { file } | InstanceCommand::Provision { file } => vec![file],
            _ => vec![],
        }
    }
}

pub async fn run(args: InstanceArgs) -> Result<()> {
    let endpoint = super::plugin::find(&args.name).await?;
    let client = InstanceClient::new(endpoint);
    let format = args.out.format();
    match args.command {
        InstanceCommand::Validate { file } => {
            let props: Value = read_json(&file, "JSON document")?;
            client.validate(&props).await?;
            if format != Format::Quiet {
                outln!("valid");
            }
        }
        InstanceCommand::Provision { file } => {
            let spec: Spec = read_json(&file, "instance spec")?;
            let id = client.provision(spec).await?;
            match format {
                Format::Json => output::json(&serde_json::json!({ "ID": id }))?,
                _ => outln!("{id}"),
            }
        }
        InstanceCommand::Label { id, labels } => {
            client.label(&id, parse_pairs(&labels)?).await?;
            if format != Format::Quiet {
                outln!("{id}");
            }
        }
        InstanceCommand::Destroy { ids, reason } => {
            let context = DestroyContext {
                reason: match reason {
                    Reason::Terminate => DestroyReason::Terminate,
                    Reason::RollingUpdate => DestroyReason::RollingUpdate,
                },
            };
            let mut failed = 0;
            for id in &ids {
                match client.destroy(id, context).await {
                    Ok(()) => outln!("{id}"),
                    Err(e) => {
                        errln!("error: {id}: {e}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} destroys failed", ids.len());
            }
        }
        InstanceCommand::Describe { tags, properties } => {
            let list = client
                .describe_instances(&parse_pairs(&tags)?, properties)
                .await?;
            match format {
                Format::Json => output::json(&list)?,
                Format::Quiet => output::lines(list.into_iter().map(|d| d.id))?,
                Format::Table => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|d| {
                            let mut row = vec![
                                d.id.clone(),
                                d.logical_id.clone().unwrap_or_else(|| "-".into()),
                                output::tags(&d.tags),
                            ];
                            if properties {
                                row.push(
                                    d.properties
                                        .as_ref()
                                        .map(Value::to_string)
                                        .unwrap_or_default(),
                                );
                            }
                            row
                        })
                        .collect();
                    let mut header = vec!["ID", "LOGICAL", "TAGS"];
                    if properties {
                        header.push("PROPERTIES");
                    }
                    output::table(&header, &rows)?;
                }
            }
        }
    }
    Ok(())
}
