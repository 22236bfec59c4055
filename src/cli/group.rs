//! `infrakit group ...`: commit, inspect and steer groups through the group plugin.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use infrakit_sdk::rpc::client::GroupClient;
use infrakit_sdk::spi::group::{GroupDescription, GroupPlugin, GroupSpec, UpdateCommand};
use serde_json::json;

use super::input::read_json;
use super::OutputFlags;
use crate::output::{self, outln, Format};

#[derive(Args, Debug)]
pub struct GroupArgs {
    /// The group plugin's name.
    #[arg(long, short = 'n', default_value = "group")]
    pub name: String,
    #[command(flatten)]
    pub out: OutputFlags,
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Commit a group file ({"ID": ..., "Properties": {...}}); with --pretend only show the plan.
    Commit {
        file: String,
        /// Change nothing; print what the commit would do (and the plan's version).
        #[arg(long)]
        pretend: bool,
        /// Refuse unless the plan is still this version (from an earlier --pretend): nothing
        /// changed in the group or its instances since you reviewed it.
        #[arg(long, value_name = "VERSION")]
        expect: Option<String>,
    },
    /// Check a group file without committing it (locally: fields, allocation, policies).
    Validate { file: String },
    /// Print the JSON Schema of a group file.
    Schema,
    /// Pause the group's update (the group still heals).
    Pause { id: String },
    /// Resume a paused update (or roll forward again after a rollback).
    Resume { id: String },
    /// Roll the group's update back to the previous configuration.
    Rollback { id: String },
    /// List managed groups.
    Ls,
    /// Show a group's instances, their health, the target and whether it has converged.
    Describe { id: String },
    /// Print a group's committed spec.
    Inspect { id: String },
    /// Stop managing a group; its instances are left alone.
    Free { id: String },
    /// Drain and destroy every instance of a group, then forget it.
    Destroy {
        id: String,
        /// Return at once instead of waiting until no instance is left.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long (e.g. 5m).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
        timeout: Duration,
    },
    /// Set a cattle group's size.
    Scale { id: String, size: u64 },
    /// Destroy named instances of a group (cattle: the size shrinks by as many).
    DestroyInstances {
        id: String,
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Follow a group until it has converged.
    Watch {
        id: String,
        /// Give up after this long (e.g. 90s); 0 waits forever.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        timeout: Duration,
    },
}

impl GroupCommand {
    /// The files the command reads (checked before anything else is done).
    pub fn input_files(&self) -> Vec<&str> {
        match self {
            GroupCommand::Commit { file, .. } | GroupCommand::Validate { file } => vec![file],
            _ => vec![],
        }
    }
}

pub async fn client(name: &str) -> Result<GroupClient> {
    Ok(GroupClient::new(
        infrakit_docker::discovery_from_env().find(name).await?,
    ))
}

fn unreachable_local() -> Result<()> {
    bail!("internal: local group commands are handled before contacting the group plugin")
}

/// `validate` and `schema` need no group plugin.
fn run_local(command: &GroupCommand, format: Format) -> Option<Result<()>> {
    match command {
        GroupCommand::Schema => Some(
            serde_json::from_str::<serde_json::Value>(infrakit_controller::GROUP_SPEC_SCHEMA)
                .map_err(anyhow::Error::from)
                .and_then(|v| output::json(&v)),
        ),
        GroupCommand::Validate { file } => Some((|| {
            let spec: GroupSpec = read_json(file, "group spec")?;
            let parsed = infrakit_controller::record::parse(&spec)?;
            match format {
                Format::Json => output::json(&json!({
                    "ID": spec.id,
                    "ConfigHash": parsed.hash,
                    "Target": parsed.desired.allocation.target(),
                    "Policies": parsed.desired.policy,
                })),
                Format::Quiet => Ok(()),
                Format::Table => {
                    outln!(
                        "{file}: valid group '{}' ({}, instance plugin {}, flavor plugin {}, config hash {})",
                        spec.id,
                        match &parsed.desired.allocation {
                            infrakit_group::core::Allocation::Size(n) => format!("{n} instances"),
                            infrakit_group::core::Allocation::Pets(ids) => format!("{} logical IDs", ids.len()),
                        },
                        parsed.props.instance.plugin,
                        parsed.props.flavor.plugin,
                        &parsed.hash[..12.min(parsed.hash.len())]
                    );
                    outln!("(the plugins are checked at commit; `commit --pretend` checks them without changing anything)");
                    Ok(())
                }
            }
        })()),
        _ => None,
    }
}

pub async fn run(args: GroupArgs) -> Result<()> {
    let format = args.out.format();
    if let Some(result) = run_local(&args.command, format) {
        return result;
    }
    // A commit's file is read before the plugin is looked for: a wrong file is the first thing to fix.
    let mut commit_spec = match &args.command {
        GroupCommand::Commit { file, .. } => Some(read_json::<GroupSpec>(file, "group spec")?),
        _ => None,
    };
    let group = client(&args.name).await?;
    match args.command {
        GroupCommand::Commit {
            pretend, expect, ..
        } => {
            let Some(spec) = commit_spec.take() else {
                bail!("internal: the spec of a commit is read before the group plugin is found");
            };
            let r = match &expect {
                Some(v) => group.commit_group_expecting(spec, pretend, v).await?,
                None => group.commit_group(spec, pretend).await?,
            };
            match format {
                Format::Json => output::json(&json!({"Details": r.details, "Plan": r.plan}))?,
                Format::Quiet => outln!("{}", r.plan.map(|p| p.version).unwrap_or_default()),
                Format::Table => {
                    outln!("{}", r.details);
                    if let (true, Some(plan)) = (pretend, r.plan) {
                        outln!(
                            "plan version {} (commit it unchanged with --expect {})",
                            plan.version,
                            plan.version
                        );
                    }
                }
            }
        }
        GroupCommand::Validate { .. } | GroupCommand::Schema => unreachable_local()?,
        GroupCommand::Pause { id } => {
            outln!("{}", group.update_command(&id, UpdateCommand::Pause).await?)
        }
        GroupCommand::Resume { id } => outln!(
            "{}",
            group.update_command(&id, UpdateCommand::Resume).await?
        ),
        GroupCommand::Rollback { id } => {
            outln!(
                "{}",
                group.update_command(&id, UpdateCommand::Rollback).await?
            )
        }
        GroupCommand::Ls => {
            let specs = group.inspect_groups().await?;
            let mut rows = Vec::new();
            let mut all = Vec::new();
            for s in &specs {
                let d = group.describe_group(&s.id).await?;
                rows.push(vec![
                    s.id.clone(),
                    d.target
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into()),
                    d.instances.len().to_string(),
                    if d.converged {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                    update_state(&d),
                ]);
                all.push(json!({"ID": s.id, "Description": d}));
            }
            match format {
                Format::Json => output::json(&all)?,
                Format::Quiet => output::lines(specs.into_iter().map(|s| s.id))?,
                Format::Table => {
                    output::table(&["ID", "TARGET", "INSTANCES", "CONVERGED", "UPDATE"], &rows)?
                }
            }
        }
        GroupCommand::Describe { id } => {
            let d = group.describe_group(&id).await?;
            match format {
                Format::Json => output::json(&d)?,
                Format::Quiet => output::lines(d.instances.into_iter().map(|i| i.id))?,
                Format::Table => print_description(&id, &d)?,
            }
        }
        GroupCommand::Inspect { id } => {
            let specs = group.inspect_groups().await?;
            let Some(spec) = specs.into_iter().find(|s| s.id == id) else {
                bail!("no group '{id}' is managed by '{}'", args.name);
            };
            output::json(&spec)?;
        }
        GroupCommand::Free { id } => {
            group.free_group(&id).await?;
            if format != Format::Quiet {
                outln!("freed group '{id}': its instances are no longer managed");
            }
        }
        GroupCommand::Destroy {
            id,
            no_wait,
            timeout,
        } => {
            group.destroy_group(&id).await?;
            if !no_wait {
                wait_gone(&group, &id, timeout).await?;
            }
            if format != Format::Quiet {
                outln!("destroyed group '{id}'");
            }
        }
        GroupCommand::Scale { id, size } => {
            group.set_size(&id, size).await?;
            if format != Format::Quiet {
                outln!("group '{id}' target size is now {size}");
            }
        }
        GroupCommand::DestroyInstances { id, instances } => {
            group.destroy_instances(&id, &instances).await?;
            if format != Format::Quiet {
                output::lines(instances)?;
            }
        }
        GroupCommand::Watch { id, timeout } => watch(&group, &id, timeout).await?,
    }
    Ok(())
}

fn update_state(d: &GroupDescription) -> String {
    d.update
        .as_ref()
        .and_then(|u| u.get("State"))
        .and_then(|s| s.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| "-".into())
}

fn print_description(id: &str, d: &GroupDescription) -> Result<()> {
    outln!(
        "group {id}: {} of {} instances, {}",
        d.instances.len(),
        d.target
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into()),
        if d.converged {
            "converged"
        } else {
            "converging"
        }
    );
    if let Some(u) = &d.update {
        outln!(
            "update: {}",
            u.get("Message")
                .and_then(|m| m.as_str())
                .unwrap_or(&u.to_string())
        );
    }
    if !d.message.is_empty() {
        outln!("note: {}", d.message);
    }
    let rows: Vec<Vec<String>> = d
        .status
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.logical_id.clone().unwrap_or_else(|| "-".into()),
                s.health.to_string(),
                if s.current {
                    "current".into()
                } else {
                    "outdated".into()
                },
            ]
        })
        .collect();
    output::table(&["ID", "LOGICAL", "HEALTH", "VERSION"], &rows)
}

/// Polls until the group reports converged. On a terminal a progress bar, otherwise a line per change.
pub async fn watch(group: &dyn GroupPlugin, id: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:30}] {pos}/{len} {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_prefix(id.to_string());
        b
    });
    let mut last = String::new();
    loop {
        let d = group
            .describe_group(id)
            .await
            .context("cannot follow the group")?;
        let target = d.target.unwrap_or(0);
        let ready = d
            .status
            .iter()
            .filter(|s| s.current && s.health == infrakit_sdk::spi::flavor::Health::Healthy)
            .count() as u64;
        let line = format!(
            "{} instances, {ready} current and healthy, target {target}{}{}",
            d.instances.len(),
            match &d.update {
                Some(u) => format!(
                    ", update {}",
                    u.get("State").and_then(|s| s.as_str()).unwrap_or("?")
                ),
                None => String::new(),
            },
            if d.message.is_empty() {
                String::new()
            } else {
                format!(" ({})", d.message)
            }
        );
        match &bar {
            Some(b) => {
                b.set_length(target);
                b.set_position(ready.min(target));
                b.set_message(line.clone());
                b.tick();
            }
            None if line != last => outln!("{id}: {line}"),
            None => {}
        }
        last = line;
        if d.converged {
            if let Some(b) = &bar {
                b.finish_with_message(format!("converged: {last}"));
            } else {
                outln!("{id}: converged in {:.1}s", start.elapsed().as_secs_f64());
            }
            return Ok(());
        }
        if !timeout.is_zero() && start.elapsed() > timeout {
            bail!("group '{id}' has not converged after {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_gone(group: &GroupClient, id: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        match group.describe_group(id).await {
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
            Ok(d) => {
                if start.elapsed() > timeout {
                    bail!(
                        "group '{id}' still has {} instances after {timeout:?}; it stays marked for destruction",
                        d.instances.len()
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
