//! The group plugin: the `Group` interface over the per-group workers and the store.
//!
//! A commit is checked completely (spec, policies, plugins reachable, their Validate) before
//! anything changes, so a bad file never disturbs a running group.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use infrakit_group::core::{command as core_command, preview, Allocation, Command, Observed};
use infrakit_sdk::resolve::PluginResolver;
use infrakit_sdk::spi::flavor::AllocationMethod;
use infrakit_sdk::spi::group::{
    CommitResult, GroupDescription, GroupPlugin, GroupSpec, InstanceStatus, UpdateCommand,
};
use infrakit_sdk::spi::instance::InstanceId;
use infrakit_sdk::{Error, ErrorKind, Result};
use tokio::sync::Semaphore;

use crate::record::{parse, parse_with, GroupRecord, Parsed};
use crate::store::FileStore;
use crate::tags;
use crate::worker::{self, group_tags, observe_instance, Ctx, Group, Options};

pub struct GroupController {
    ctx: Arc<Ctx>,
}

impl GroupController {
    /// Loads every stored group and starts managing it. Must run inside a tokio runtime.
    pub fn start(
        resolver: Arc<dyn PluginResolver>,
        store: FileStore,
        options: Options,
    ) -> Result<GroupController> {
        let records = store.load_all()?;
        let ctx = Arc::new(Ctx {
            resolver,
            store,
            permits: Semaphore::new(options.max_parallel.max(1)),
            options,
            groups: Mutex::new(BTreeMap::new()),
        });
        for mut record in records {
            // Provisions the previous process had in flight are not ours to wait for; if they
            // finished, their instances simply show up and are adopted.
            record.memory.after_restart_within(
                worker::now_ms(),
                ctx.options.restart_grace.as_millis() as u64,
            );
            tracing::info!(group = %record.id(), "resuming group from the store");
            spawn(&ctx, Group::new(record));
        }
        Ok(GroupController { ctx })
    }

    fn group(&self, id: &str) -> Result<Arc<Group>> {
        self.ctx.groups().get(id).cloned().ok_or_else(|| {
            Error::not_found(format!(
                "no group '{id}' is managed here (see `infrakit group ls`)"
            ))
        })
    }

    /// Checks a spec against the plugins it names: they must be reachable and accept their properties.
    async fn check_plugins(&self, parsed: &Parsed) -> Result<()> {
        let id = &parsed.desired.group;
        let ip = &parsed.props.instance;
        let fp = &parsed.props.flavor;
        let instance = self
            .ctx
            .resolver
            .instance(&ip.plugin)
            .await
            .map_err(|e| e.context(format!("group '{id}': Instance.Plugin '{}'", ip.plugin)))?;
        let flavor = self
            .ctx
            .resolver
            .flavor(&fp.plugin)
            .await
            .map_err(|e| e.context(format!("group '{id}': Flavor.Plugin '{}'", fp.plugin)))?;
        instance
            .validate_with_allocation(
                &ip.properties.clone().unwrap_or_default(),
                &allocation(&parsed.desired.allocation),
            )
            .await
            .map_err(|e| {
                e.context(format!(
                    "group '{id}': instance plugin '{}' refused Instance.Properties",
                    ip.plugin
                ))
            })?;
        flavor
            .validate(
                &fp.properties.clone().unwrap_or_default(),
                &allocation(&parsed.desired.allocation),
            )
            .await
            .map_err(|e| {
                e.context(format!(
                    "group '{id}': flavor plugin '{}' refused Flavor.Properties",
                    fp.plugin
                ))
            })?;
        Ok(())
    }

    /// Observes the group's instances now, for a plan.
    async fn observe(&self, parsed: &Parsed) -> Result<Observed> {
        let id = &parsed.desired.group;
        let instance = self
            .ctx
            .resolver
            .instance(&parsed.props.instance.plugin)
            .await?;
        let described = instance
            .describe_instances(&group_tags(id), false)
            .await
            .map_err(|e| e.context(format!("cannot list the instances of group '{id}'")))?;
        let (health, destroying) = match self.ctx.groups().get(id) {
            Some(g) => {
                let s = g.state();
                ((*s.view.health).clone(), s.destroying.clone())
            }
            None => Default::default(),
        };
        Ok(Observed {
            instances: described
                .iter()
                .map(|d| observe_instance(d, health.get(&d.id).copied().unwrap_or_default()))
                .collect(),
            pending: Vec::new(),
            destroying,
        })
    }

    /// Persists a changed record and wakes the group; on a failed save nothing changes.
    fn update(
        &self,
        group: &Arc<Group>,
        change: impl FnOnce(&mut GroupRecord) -> Result<()>,
    ) -> Result<()> {
        let mut s = group.state();
        let mut record = s.record.clone();
        change(&mut record)?;
        self.ctx.store.save(&record)?;
        s.record = record;
        s.generation += 1;
        drop(s);
        group.wake.notify_one();
        Ok(())
    }

    /// Commits (or with `pretend` only plans) `spec`; with `expect`, only if the plan's version is
    /// still that.
    async fn commit(
        &self,
        spec: GroupSpec,
        pretend: bool,
        expect: Option<&str>,
    ) -> Result<CommitResult> {
        let parsed = parse(&spec)?;
        self.check_plugins(&parsed).await?;
        let existing = self.ctx.groups().get(&spec.id).cloned();
        let memory = existing
            .as_ref()
            .map(|g| g.state().record.memory.clone())
            .unwrap_or_default();
        let observed = self.observe(&parsed).await?;
        let (text, plan) = preview(&parsed.desired, &observed, &memory);
        if let Some(expect) = expect.filter(|e| *e != plan.version) {
            return Err(Error::conflict(format!(
                "group '{}' or what runs in it changed since plan {expect}: the plan is now {} ({text}); \
                 review it with --pretend and commit with --expect {}",
                spec.id, plan.version, plan.version
            )));
        }
        if pretend {
            return Ok(CommitResult {
                details: text,
                plan: Some(plan),
            });
        }
        match existing {
            Some(group) => self.update(&group, |r| {
                r.spec = spec.clone();
                r.deleting = false;
                r.remember_version(&parsed);
                Ok(())
            })?,
            None => {
                let record = GroupRecord::new(spec.clone(), &parsed);
                self.ctx.store.save(&record)?;
                spawn(&self.ctx, Group::new(record));
            }
        }
        tracing::info!(group = %spec.id, "committed: {text}");
        Ok(CommitResult {
            details: format!("Committed group '{}': {text}", spec.id),
            plan: Some(plan),
        })
    }
}

fn spawn(ctx: &Arc<Ctx>, group: Arc<Group>) {
    ctx.groups().insert(group.id.clone(), group.clone());
    tokio::spawn(worker::run(group, ctx.clone()));
}

pub(crate) fn allocation(a: &Allocation) -> AllocationMethod {
    match a {
        Allocation::Size(n) => AllocationMethod {
            size: *n,
            logical_ids: Vec::new(),
        },
        Allocation::Pets(ids) => AllocationMethod {
            size: 0,
            logical_ids: ids.clone(),
        },
    }
}

#[async_trait]
impl GroupPlugin for GroupController {
    async fn commit_group(&self, spec: GroupSpec, pretend: bool) -> Result<CommitResult> {
        self.commit(spec, pretend, None).await
    }

    async fn commit_group_expecting(
        &self,
        spec: GroupSpec,
        pretend: bool,
        expect: &str,
    ) -> Result<CommitResult> {
        self.commit(spec, pretend, Some(expect)).await
    }

    async fn update_command(&self, id: &str, command: UpdateCommand) -> Result<String> {
        let group = self.group(id)?;
        let cmd = match command {
            UpdateCommand::Pause => Command::Pause,
            UpdateCommand::Resume => Command::Resume,
            UpdateCommand::Rollback => Command::Rollback,
        };
        let mut message = String::new();
        self.update(&group, |r| {
            let desired = r.desired()?;
            let memory = core_command(&r.memory, cmd, &desired, worker::now_ms())
                .map_err(Error::conflict)?;
            message = memory
                .update
                .as_ref()
                .map(|u| u.message.clone())
                .unwrap_or_default();
            r.memory = memory;
            Ok(())
        })?;
        tracing::info!(group = id, %command, "{message}");
        Ok(if message.is_empty() {
            format!("{command}: done")
        } else {
            message
        })
    }

    async fn free_group(&self, id: &str) -> Result<()> {
        let group = self.group(id)?;
        self.ctx.store.remove(id)?;
        group.state().stopped = true;
        group.wake.notify_one();
        self.ctx.groups().remove(id);
        tracing::info!(group = id, "freed: instances left as they are");
        Ok(())
    }

    async fn describe_group(&self, id: &str) -> Result<GroupDescription> {
        let group = self.group(id)?;
        let s = group.state();
        let desired = s.record.desired()?;
        let view = &s.view;
        let status = view.status.clone();
        let current_hash = desired.config_hash.clone();
        let mut message = status
            .as_ref()
            .map(|st| st.message.clone())
            .unwrap_or_default();
        for e in [&view.error, &s.backoff.message].into_iter().flatten() {
            message = if message.is_empty() {
                e.clone()
            } else {
                format!("{message}; {e}")
            };
        }
        if !view.observed {
            message = if message.is_empty() {
                "not observed yet".to_string()
            } else {
                message
            };
        }
        let mut extra = BTreeMap::new();
        if s.record.deleting {
            extra.insert("Deleting".to_string(), serde_json::Value::Bool(true));
        }
        Ok(GroupDescription {
            instances: (*view.instances).clone(),
            converged: view.observed
                && view.error.is_none()
                && view.generation == s.generation
                && !s.record.deleting
                && status.as_ref().is_some_and(|st| st.converged),
            target: status.as_ref().map(|st| st.target),
            status: view
                .instances
                .iter()
                .map(|d| InstanceStatus {
                    id: d.id.clone(),
                    logical_id: d
                        .logical_id
                        .clone()
                        .or_else(|| d.tags.get(tags::LOGICAL_ID).cloned()),
                    health: view.health.get(&d.id).copied().unwrap_or_default(),
                    current: d.tags.get(tags::CONFIG_HASH) == Some(&current_hash),
                })
                .collect(),
            update: status
                .as_ref()
                .and_then(|st| st.update.as_ref())
                .and_then(|u| serde_json::to_value(u).ok()),
            message,
            extra,
        })
    }

    async fn destroy_group(&self, id: &str) -> Result<()> {
        let group = self.group(id)?;
        self.update(&group, |r| {
            r.deleting = true;
            Ok(())
        })?;
        tracing::info!(
            group = id,
            "destroying: draining and destroying every instance"
        );
        Ok(())
    }

    async fn inspect_groups(&self) -> Result<Vec<GroupSpec>> {
        Ok(self
            .ctx
            .groups()
            .values()
            .map(|g| g.state().record.spec.clone())
            .collect())
    }

    async fn destroy_instances(&self, id: &str, instances: &[InstanceId]) -> Result<()> {
        let group = self.group(id)?;
        let (members, is_cattle) = {
            let s = group.state();
            let members: Vec<InstanceId> = s.view.instances.iter().map(|d| d.id.clone()).collect();
            let cattle = matches!(s.record.desired()?.allocation, Allocation::Size(_));
            (members, cattle)
        };
        let unknown: Vec<&InstanceId> = instances.iter().filter(|i| !members.contains(i)).collect();
        if !unknown.is_empty() {
            return Err(Error::not_found(format!(
                "group '{id}' has no instance {} (see `infrakit group describe {id}`)",
                unknown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if is_cattle {
            // Destroying named cattle shrinks the group by as many (InfraKit's behaviour); pets
            // come back under the same logical ID.
            self.update(&group, |r| {
                let size = match r.desired()?.allocation {
                    Allocation::Size(n) => n,
                    Allocation::Pets(_) => 0,
                };
                r.set_size(size.saturating_sub(instances.len() as u64))
            })?;
        }
        worker::destroy_now(&group, &self.ctx, instances);
        Ok(())
    }

    async fn size(&self, id: &str) -> Result<u64> {
        let group = self.group(id)?;
        let s = group.state();
        Ok(match parse_with(&s.record.spec, true)?.desired.allocation {
            Allocation::Size(n) => n,
            Allocation::Pets(ids) => ids.len() as u64,
        })
    }

    async fn set_size(&self, id: &str, size: u64) -> Result<()> {
        let group = self.group(id)?;
        self.update(&group, |r| r.set_size(size))
    }
}

/// True for errors a retry may fix (used by callers deciding whether to wait).
pub fn is_transient(e: &Error) -> bool {
    e.kind == ErrorKind::Unavailable
}
