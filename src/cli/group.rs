//! `infrakit group ...`: commit, inspect and steer groups through the group plugin.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use infrakit_sdk::rpc::client::GroupClient;
use infrakit_sdk::spi::flavor::Health;
use infrakit_sdk::spi::group::{GroupDescription, GroupPlugin, GroupSpec, UpdateCommand};
use infrakit_sdk::spi::instance::InstancePlugin;
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
    /// Show a group's instances, their health, the target, whether it has converged and how many
    /// are healthy ("ready" once converged and all healthy).
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
    /// Follow what the group controller decides and sees happen (every group's, or ID's):
    /// provisions and destroys with their causes, unhealthy instances, updates started, paused,
    /// completed or rolled back, commits and scales. `--json` prints one JSON object per line.
    #[command(
        after_help = "Examples:\n  infrakit group events                 # from now on, every group\n  \
        infrakit group events web --since 10m  # the last 10 minutes kept, then new ones\n  \
        infrakit group events --since 1h --no-follow --json | jq .Kind"
    )]
    Events {
        id: Option<String>,
        /// Also show the events of this last stretch of time still kept (e.g. 10m, 1h).
        #[arg(long, value_parser = super::events::parse_since)]
        since: Option<Duration>,
        /// Print what is kept and exit instead of following.
        #[arg(long)]
        no_follow: bool,
    },
    /// Follow a group until it is ready: converged and every one of its target healthy.
    Watch {
        id: String,
        /// Give up after this long (e.g. 90s); 0 waits forever.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        timeout: Duration,
        /// Stop once the group has converged (every instance present and current), healthy or not.
        #[arg(long)]
        converged_only: bool,
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
    Ok(GroupClient::new(super::plugin::find(name).await?))
}

fn unreachable_local() -> Result<()> {
    bail!("internal: local group commands are handled before contacting the group plugin")
}

/// `validate` and `schema` need no group plugin.
fn run_local(command: &GroupCommand, format: Format) -> Option<Result<()>> {
    match command {
        GroupCommand::Schema => Some(output::json(&infrakit_group::spec::schema())),
        GroupCommand::Validate { file } => Some((|| {
            let spec: GroupSpec = read_json(file, "group spec")?;
            let parsed = infrakit_group::spec::parse(&spec, infrakit_group::spec::Origin::Commit)
                .map_err(anyhow::Error::msg)?;
            match format {
                Format::Json => output::json(&json!({
                    "ID": spec.id,
                    "ConfigHash": parsed.hash,
                    "Target": parsed.size(),
                    "Policies": parsed.policy,
                })),
                Format::Quiet => Ok(()),
                Format::Table => {
                    outln!(
                        "{file}: valid group '{}' ({}, instance plugin {}, flavor plugin {}, config hash {})",
                        spec.id,
                        match &parsed.allocation {
                            infrakit_group::core::Allocation::Size(n) => format!("{n} instances"),
                            infrakit_group::core::Allocation::Pets(ids) => format!("{} logical IDs", ids.len()),
                        },
                        parsed.properties.instance.plugin,
                        parsed.properties.flavor.plugin,
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
    // A commit's file is read before the plugin is looked for: a missing file is the first thing
    // to fix.
    let spec = match &args.command {
        GroupCommand::Commit { file, .. } => Some(read_json::<GroupSpec>(file, "group spec")?),
        _ => None,
    };
    let group = client(&args.name).await?;
    match args.command {
        GroupCommand::Commit {
            file: _,
            pretend,
            expect,
        } => {
            let spec = spec.context("internal: the group file was not read")?;
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
            let mut unusable = Vec::new();
            for s in &specs {
                // One group that cannot be described (an unusable stored record) must not hide the
                // others: list it, say why below, and exit non-zero.
                let d = match group.describe_group(&s.id).await {
                    Ok(d) => d,
                    Err(e) if !e.is_not_found() => {
                        rows.push(vec![
                            s.id.clone(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "UNUSABLE".into(),
                        ]);
                        all.push(json!({"ID": s.id, "Error": e.to_string()}));
                        unusable.push(format!("{}: {e}", s.id));
                        continue;
                    }
                    // Freed or destroyed since the list was taken.
                    Err(_) => continue,
                };
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
                    Readiness::of(&d).healthy_of_target(),
                    update_state(&d),
                ]);
                all.push(json!({"ID": s.id, "Description": d}));
            }
            match format {
                Format::Json => output::json(&all)?,
                Format::Quiet => output::lines(specs.into_iter().map(|s| s.id))?,
                Format::Table => output::table(
                    &[
                        "ID",
                        "TARGET",
                        "INSTANCES",
                        "CONVERGED",
                        "HEALTHY",
                        "UPDATE",
                    ],
                    &rows,
                )?,
            }
            if !unusable.is_empty() {
                bail!("{}", unusable.join("\n"));
            }
        }
        GroupCommand::Describe { id } => {
            let d = group.describe_group(&id).await?;
            match format {
                Format::Json => output::json(&d)?,
                Format::Quiet => output::lines(d.instances.iter().map(|i| i.id.clone()))?,
                Format::Table => {
                    print_description(&id, &d, &instance_names(&group, &id, &d).await)?
                }
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
        GroupCommand::Events {
            id,
            since,
            no_follow,
        } => {
            if let Some(id) = &id {
                super::events::known(&group, id).await?;
            }
            super::events::follow(
                &group,
                id.as_deref(),
                since,
                !no_follow,
                format == Format::Json,
            )
            .await?
        }
        GroupCommand::Watch {
            id,
            timeout,
            converged_only,
        } => {
            let until = if converged_only {
                Until::Converged
            } else {
                Until::Ready
            };
            watch(&group, &id, timeout, until).await?
        }
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

/// How many of a group's instances their flavor calls healthy, against the target. Computed here
/// from DescribeGroup's per-instance status: "converged" says every instance is present and current,
/// not that it serves; "ready" is converged with every one of the target healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub converged: bool,
    pub healthy: u64,
    /// None until the group has been observed.
    pub target: Option<u64>,
}

impl Readiness {
    pub fn of(d: &GroupDescription) -> Readiness {
        Readiness {
            converged: d.converged,
            healthy: d
                .status
                .iter()
                .filter(|s| s.health == Health::Healthy)
                .count() as u64,
            target: d.target,
        }
    }

    /// Converged, and at least the target healthy.
    pub fn ready(&self) -> bool {
        self.converged && self.target.is_some_and(|t| self.healthy >= t)
    }

    /// "3/5".
    pub fn healthy_of_target(&self) -> String {
        match self.target {
            Some(t) => format!("{}/{t}", self.healthy),
            None => format!("{}/?", self.healthy),
        }
    }
}

impl std::fmt::Display for Readiness {
    /// "ready: 5/5 healthy", "converged, 3/5 healthy" or "converging, 3/5 healthy".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let healthy = self.healthy_of_target();
        if self.ready() {
            write!(f, "ready: {healthy} healthy")
        } else if self.converged {
            write!(f, "converged, {healthy} healthy")
        } else {
            write!(f, "converging, {healthy} healthy")
        }
    }
}

/// What `watch` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Converged, healthy or not.
    Converged,
    /// Converged and every one of the target healthy.
    Ready,
}

impl Until {
    fn reached(self, r: &Readiness) -> bool {
        match self {
            Until::Converged => r.converged,
            Until::Ready => r.ready(),
        }
    }
}

/// The property an instance plugin's description names an instance by, when it has one
/// (instance-docker: the container's name).
const NAME_PROPERTY: &str = "Name";

fn name_in(properties: Option<&serde_json::Value>) -> Option<String> {
    properties?
        .get(NAME_PROPERTY)?
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// Each instance's name (a container's, for instance-docker), by instance ID; empty when the
/// backend has none. From the group's description when it carries the properties, else asked once
/// of the group's instance plugin; a plugin that cannot be asked just leaves the names out.
async fn instance_names(
    group: &GroupClient,
    id: &str,
    d: &GroupDescription,
) -> std::collections::BTreeMap<String, String> {
    let mut names: std::collections::BTreeMap<String, String> = d
        .instances
        .iter()
        .filter_map(|i| Some((i.id.clone(), name_in(i.properties.as_ref())?)))
        .collect();
    if names.len() == d.instances.len() {
        return names;
    }
    let Ok(specs) = group.inspect_groups().await else {
        return names;
    };
    let plugin = specs.iter().find(|s| s.id == id).and_then(|s| {
        s.properties
            .as_ref()?
            .get("Instance")?
            .get("Plugin")?
            .as_str()
    });
    let Some(plugin) = plugin else { return names };
    let Ok(found) = infrakit_docker::discovery_from_env().find(plugin).await else {
        return names;
    };
    let tags = [(infrakit_controller::tags::GROUP.to_string(), id.to_string())].into();
    let instances = infrakit_sdk::rpc::client::InstanceClient::new(found);
    if let Ok(described) = instances.describe_instances(&tags, true).await {
        for i in described {
            if let Some(n) = name_in(i.properties.as_ref()) {
                names.insert(i.id, n);
            }
        }
    }
    names
}

fn print_description(
    id: &str,
    d: &GroupDescription,
    names: &std::collections::BTreeMap<String, String>,
) -> Result<()> {
    outln!(
        "group {id}: {} of {} instances, {}",
        d.instances.len(),
        d.target
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into()),
        Readiness::of(d)
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
    let with_names = !names.is_empty();
    let rows: Vec<Vec<String>> = d
        .status
        .iter()
        .map(|s| {
            let mut row = vec![s.id.clone()];
            if with_names {
                row.push(names.get(&s.id).cloned().unwrap_or_else(|| "-".into()));
            }
            row.extend([
                s.logical_id.clone().unwrap_or_else(|| "-".into()),
                s.health.to_string(),
                if s.current {
                    "current".into()
                } else {
                    "outdated".into()
                },
            ]);
            row
        })
        .collect();
    if with_names {
        output::table(&["ID", "NAME", "LOGICAL", "HEALTH", "VERSION"], &rows)
    } else {
        output::table(&["ID", "LOGICAL", "HEALTH", "VERSION"], &rows)
    }
}

/// Polls until the group is ready (or, with [`Until::Converged`], has converged). On a terminal a
/// progress bar of healthy instances, otherwise a line per change.
pub async fn watch(
    group: &dyn GroupPlugin,
    id: &str,
    timeout: Duration,
    until: Until,
) -> Result<()> {
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
        let readiness = Readiness::of(&d);
        let target = d.target.unwrap_or(0);
        let line = format!(
            "{} instances, {readiness}{}{}",
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
                b.set_position(readiness.healthy.min(target));
                b.set_message(line.clone());
                b.tick();
            }
            None if line != last => outln!("{id}: {line}"),
            None => {}
        }
        last = line;
        if until.reached(&readiness) {
            let elapsed = start.elapsed().as_secs_f64();
            let what = if readiness.ready() {
                "ready"
            } else {
                "converged"
            };
            if let Some(b) = &bar {
                b.finish_with_message(format!("{what} in {elapsed:.1}s: {last}"));
            } else {
                outln!("{id}: {what} in {elapsed:.1}s");
            }
            return Ok(());
        }
        if !timeout.is_zero() && start.elapsed() > timeout {
            if let Some(b) = &bar {
                b.abandon();
            }
            if readiness.converged {
                bail!(
                    "group '{id}' has converged but only {} of its instances are healthy after {timeout:?}: {last}\n\
                     (`infrakit group describe {id}` shows each one's health; --converged-only stops at convergence)",
                    readiness.healthy_of_target()
                );
            }
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
            Ok(d) if !d.extra.contains_key("Deleting") => bail!(
                "group '{id}' was committed again while it was being destroyed: it is managed \
                 again with its new spec (destroy it again to remove it)"
            ),
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
