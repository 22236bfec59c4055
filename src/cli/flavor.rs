//! `infrakit flavor --name P ...`: call a flavor plugin. FILE is always the flavor's properties
//! (the `Flavor.Properties` block of a group), `-` for stdin.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use infrakit_sdk::rpc::client::FlavorClient;
use infrakit_sdk::spi::flavor::{AllocationMethod, FlavorPlugin, Index};
use infrakit_sdk::spi::instance::{Description, Spec};
use serde_json::Value;

use super::input::read_json;
use super::OutputFlags;
use crate::output::{self, outln, Format};

#[derive(Args, Debug)]
pub struct FlavorArgs {
    /// The flavor plugin's name (e.g. flavor-vanilla, flavor-swarm/manager).
    #[arg(long, short = 'n', default_value = "flavor-vanilla")]
    pub name: String,
    #[command(flatten)]
    pub out: OutputFlags,
    #[command(subcommand)]
    pub command: FlavorCommand,
}

/// The allocation the flavor is asked about: a size, or logical IDs.
#[derive(Args, Debug, Clone)]
pub struct AllocationArgs {
    /// Cattle: the group's size.
    #[arg(long, conflicts_with = "logical_ids")]
    pub size: Option<u64>,
    /// Pets: the group's logical IDs, comma separated.
    #[arg(long, value_delimiter = ',', value_name = "ID,ID,...")]
    pub logical_ids: Vec<String>,
}

impl AllocationArgs {
    fn allocation(&self) -> AllocationMethod {
        AllocationMethod {
            size: if self.logical_ids.is_empty() {
                self.size.unwrap_or(1)
            } else {
                0
            },
            logical_ids: self.logical_ids.clone(),
        }
    }
}

/// The instance a health or drain question is about.
#[derive(Args, Debug, Clone)]
pub struct InstanceRef {
    /// A JSON file with the instance description ({"ID":..., "Tags":..., "Properties":...}).
    #[arg(long, conflicts_with = "id", value_name = "FILE")]
    pub instance: Option<String>,
    /// Or just the instance's ID.
    #[arg(long)]
    pub id: Option<String>,
}

impl InstanceRef {
    fn description(&self) -> Result<Description> {
        match (&self.instance, &self.id) {
            (Some(file), _) => read_json(file, "instance description"),
            (None, Some(id)) => Ok(Description {
                id: id.clone(),
                ..Description::default()
            }),
            (None, None) => bail!("name the instance with --instance FILE or --id ID"),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum FlavorCommand {
    /// Check flavor properties against an allocation.
    Validate {
        file: String,
        #[command(flatten)]
        allocation: AllocationArgs,
    },
    /// Show the instance spec the flavor makes for one member.
    Prepare {
        file: String,
        /// The instance spec to start from (default: empty).
        #[arg(long, value_name = "FILE")]
        spec: Option<String>,
        #[command(flatten)]
        allocation: AllocationArgs,
        /// The group the instance belongs to.
        #[arg(long, default_value = "")]
        group: String,
        /// The member's sequence number.
        #[arg(long, default_value_t = 0)]
        index: u64,
    },
    /// Ask whether an instance is healthy.
    Healthy {
        file: String,
        #[command(flatten)]
        instance: InstanceRef,
    },
    /// Prepare an instance for destruction.
    Drain {
        file: String,
        #[command(flatten)]
        instance: InstanceRef,
    },
}

impl FlavorCommand {
    /// The files the command reads (checked before anything else is done).
    pub fn input_files(&self) -> Vec<&str> {
        match self {
            FlavorCommand::Validate { file, .. } => vec![file],
            FlavorCommand::Prepare { file, spec, .. } => std::iter::once(file)
                .chain(spec)
                .map(String::as_str)
                .collect(),
            FlavorCommand::Healthy { file, instance } | FlavorCommand::Drain { file, instance } => {
                std::iter::once(file)
                    .chain(&instance.instance)
                    .map(String::as_str)
                    .collect()
            }
        }
    }
}

pub async fn run(args: FlavorArgs) -> Result<()> {
    let endpoint = super::plugin::find(&args.name).await?;
    let client = FlavorClient::new(endpoint);
    let format = args.out.format();
    match args.command {
        FlavorCommand::Validate { file, allocation } => {
            let props: Value = read_json(&file, "JSON document")?;
            client.validate(&props, &allocation.allocation()).await?;
            if format != Format::Quiet {
                outln!("valid");
            }
        }
        FlavorCommand::Prepare {
            file,
            spec,
            allocation,
            group,
            index,
        } => {
            let props: Value = read_json(&file, "JSON document")?;
            let spec: Spec = match spec {
                Some(f) => read_json(&f, "instance spec")?,
                None => Spec::default(),
            };
            let index = Index {
                group,
                sequence: index,
            };
            let out = client
                .prepare(&props, spec, &allocation.allocation(), &index)
                .await?;
            output::json(&out)?;
        }
        FlavorCommand::Healthy { file, instance } => {
            let props: Value = read_json(&file, "JSON document")?;
            let health = client.healthy(&props, &instance.description()?).await?;
            match format {
                Format::Json => output::json(&serde_json::json!({ "Health": health }))?,
                _ => outln!("{health}"),
            }
        }
        FlavorCommand::Drain { file, instance } => {
            let props: Value = read_json(&file, "JSON document")?;
            let d = instance.description()?;
            client.drain(&props, &d).await?;
            if format != Format::Quiet {
                outln!("drained {}", d.id);
            }
        }
    }
    Ok(())
}
