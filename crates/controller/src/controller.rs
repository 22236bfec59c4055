//! The group plugin: the `Group` interface over the per-group workers and the store.
//!
//! A commit is checked completely (spec, policies, plugins reachable, their Validate) before
//! anything changes, so a bad file never disturbs a running group.
//!
//! One writer per group: every change of a group's record (commit, scale, destroy, free, a
//! command, the task's own write-ahead) holds that group's writer lock from reading the record to
//! storing it, and the store's compare-and-swap refuses a write based on a stale copy. So N
//! concurrent commits of a new group start exactly one task, and a commit racing a destroy ends
//! either destroyed or committed, never both or neither.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use infrakit_group::core::{
    command as core_command, preview, rules, Allocation, Command, Observed,
};
use infrakit_group::spec::{self, Origin, ValidGroup};
use infrakit_sdk::resolve::PluginResolver;
use infrakit_sdk::spi::flavor::{AllocationMethod, Health};
use infrakit_sdk::spi::group::{
    CommitResult, EventBatch, GroupDescription, GroupPlugin, GroupSpec, InstanceStatus,
    UpdateCommand,
};
use infrakit_sdk::spi::instance::InstanceId;
use infrakit_sdk::{Error, ErrorKind, Result};
use tokio::sync::Semaphore;

use crate::events::What;
use crate::leader::Leadership;
use crate::record::GroupRecord;
use crate::store::GroupStore;
use crate::sync;
use crate::tags;
use crate::worker::{self, observe_instance, Ctx, Group, Options};

pub struct GroupController {
    ctx: Arc<Ctx>,
}

impl GroupController {
    /// Loads every stored group and starts managing it. Must run inside a tokio runtime. A record
    /// that cannot be managed (its spec no longer valid, a torn file) is reported by `InspectGroups`
    /// and `DescribeGroup` and left as it is; it never stops the others.
    pub async fn start(
        resolver: Arc<dyn PluginResolver>,
        store: Box<dyn GroupStore>,
        leadership: Arc<dyn Leadership>,
        options: Options,
    ) -> Result<GroupController> {
        let ctx = Arc::new(Ctx {
            resolver,
            store,
            permits: Semaphore::new(options.max_parallel.max(1)),
            options,
            groups: Mutex::new(BTreeMap::new()),
            unusable: Mutex::new(BTreeMap::new()),
            writers: Mutex::new(Default::default()),
            role: leadership.watch(),
            _leadership: leadership,
            resync_wanted: tokio::sync::Notify::new(),
            events: crate::events::EventLog::default(),
            watchers: Mutex::new(Default::default()),
            observations: worker::Observations::default(),
        });
        // The same path a shared store's controller takes to keep in step: every stored group
        // started (what the previous process had in flight waited for as after a restart),
        // every unusable record kept to be shown.
        sync::resync(&ctx, false).await?;
        if ctx.options.shared_store {
            // A write through another manager wakes keep_in_step at once; the watch ends with
            // the controller (it holds no strong reference).
            let weak = Arc::downgrade(&ctx);
            ctx.store
                .watch_changes(Box::new(move || match weak.upgrade() {
                    Some(ctx) => {
                        ctx.resync_wanted.notify_one();
                        true
                    }
                    None => false,
                }));
            tokio::spawn(keep_in_step(ctx.clone()));
        }
        Ok(GroupController { ctx })
    }

    fn group(&self, id: &str) -> Result<Arc<Group>> {
        if let Some(g) = self.ctx.groups().get(id).cloned() {
            return Ok(g);
        }
        if let Some(u) = self.ctx.unusable().get(id) {
            return Err(Error::invalid(format!(
                "the stored record of group '{id}' ({}) is unusable: {}; commit a corrected spec, \
                 or `infrakit group free {id}` to drop the record (its instances are left alone)",
                u.source, u.error
            )));
        }
        Err(Error::not_found(format!(
            "no group '{id}' is managed here (see `infrakit group ls`)"
        )))
    }

    /// Checks a spec against the plugins it names: they must be reachable and accept their properties.
    async fn check_plugins(&self, valid: &ValidGroup) -> Result<()> {
        let id = &valid.id;
        let ip = &valid.properties.instance;
        let fp = &valid.properties.flavor;
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
                &allocation(&valid.allocation),
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
                &allocation(&valid.allocation),
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
    async fn observe(&self, valid: &ValidGroup) -> Result<Observed> {
        let id = &valid.id;
        let instance = self
            .ctx
            .resolver
            .instance(&valid.properties.instance.plugin)
            .await?;
        // A plan is made on what is there now (a describe started after this commit asked), shared
        // with the passes and other commits that want the plugin's instances meanwhile.
        let now = std::time::Instant::now();
        let described = self
            .ctx
            .observations
            .instances(
                &valid.properties.instance.plugin,
                instance.as_ref(),
                id,
                now,
                std::time::Duration::ZERO,
            )
            .await
            .map_err(|e| e.context(format!("cannot list the instances of group '{id}'")))?
            .0;
        let (health, destroying) = match self.ctx.groups().get(id) {
            Some(g) => {
                let s = g.state();
                let verdicts: HashMap<InstanceId, Health> = s
                    .view
                    .instances
                    .iter()
                    .zip(s.view.health.iter())
                    .map(|(d, h)| (d.id.clone(), *h))
                    .collect();
                (verdicts, s.destroying.clone())
            }
            None => Default::default(),
        };
        Ok(Observed {
            instances: described
                .iter()
                // A plan does not ask the flavor which members lead: its order may differ there.
                .map(|d| observe_instance(d, health.get(&d.id).copied().unwrap_or_default(), false))
                .collect(),
            pending: Vec::new(),
            destroying,
            recovered_ms: None,
        })
    }

    /// Changes a group's record under its writer lock; on a failed save nothing changes. With a
    /// shared store a write based on a copy another manager has since replaced is refused; the
    /// store is then read again and the change made once more on what it holds.
    async fn update(
        &self,
        group: &Arc<Group>,
        mut change: impl FnMut(&mut GroupRecord, &mut Arc<ValidGroup>) -> Result<()>,
    ) -> Result<()> {
        let first = {
            let _writer = self.ctx.writer(&group.id).await;
            worker::write_locked(&self.ctx, group, &mut change).await
        };
        match first {
            Err(e) if e.kind == ErrorKind::Conflict && self.ctx.options.shared_store => {
                sync::resync(&self.ctx, false).await?;
                let group = self.group(&group.id)?;
                let _writer = self.ctx.writer(&group.id).await;
                worker::write_locked(&self.ctx, &group, &mut change).await
            }
            other => other,
        }
    }

    /// Commits (or with `pretend` only plans) `spec`; with `expect`, only if the plan's version is
    /// still that.
    async fn commit(
        &self,
        spec: GroupSpec,
        pretend: bool,
        expect: Option<&str>,
    ) -> Result<CommitResult> {
        let valid = spec::parse(&spec, Origin::Commit).map_err(Error::invalid)?;
        self.check_plugins(&valid).await?;
        match self.commit_checked(&spec, &valid, pretend, expect).await {
            // Another manager wrote the group since this one last read the shared store.
            Err(e) if e.kind == ErrorKind::Conflict && self.ctx.options.shared_store => {
                sync::resync(&self.ctx, false).await?;
                self.commit_checked(&spec, &valid, pretend, expect).await
            }
            other => other,
        }
    }

    /// [`Self::commit`] once the spec and its plugins are checked.
    async fn commit_checked(
        &self,
        spec: &GroupSpec,
        valid: &ValidGroup,
        pretend: bool,
        expect: Option<&str>,
    ) -> Result<CommitResult> {
        let valid = valid.clone();
        // From here to the store write, no other change of this group can interleave.
        let _writer = self.ctx.writer(&spec.id).await;
        let existing = self.ctx.groups().get(&spec.id).cloned();
        let memory = existing
            .as_ref()
            .map(|g| g.state().record.memory.clone())
            .unwrap_or_default();
        let observed = self.observe(&valid).await?;
        let (text, plan) = preview(&valid.desired(false), &observed, &memory);
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
            Some(group) => {
                let valid = Arc::new(valid);
                worker::write_locked(&self.ctx, &group, |r, v| {
                    r.spec = spec.clone();
                    r.deleting = false;
                    r.remember_version(&valid);
                    *v = valid.clone();
                    Ok(())
                })
                .await?
            }
            None => {
                let record = GroupRecord::new(spec.clone(), &valid);
                // A commit replaces an unusable record of the same ID.
                let expected = self
                    .ctx
                    .unusable()
                    .get(&spec.id)
                    .map(|u| u.revision)
                    .unwrap_or(0);
                let revision = self.ctx.store.put(&record, expected).await?;
                self.ctx.unusable().remove(&spec.id);
                spawn(&self.ctx, Group::new(record, valid, revision));
            }
        }
        tracing::info!(group = %spec.id, "committed: {text}");
        self.ctx.events.emit(
            &spec.id,
            What {
                kind: "commit",
                ..What::default()
            },
            text.clone(),
        );
        Ok(CommitResult {
            details: format!("Committed group '{}': {text}", spec.id),
            plan: Some(plan),
        })
    }
}

/// With a shared store: reads it again every poll interval (so followers show what the leader
/// does and the leader picks up what followers accepted), at once when this controller becomes the
/// leader (it resumes from the store, not from what it saw while standing by), and when a write
/// was refused as stale.
async fn keep_in_step(ctx: Arc<Ctx>) {
    let mut role = ctx.role.clone();
    let mut leading = role.borrow_and_update().is_leader();
    loop {
        let elected = tokio::select! {
            changed = role.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = role.borrow_and_update().is_leader();
                let elected = now && !leading;
                leading = now;
                elected
            }
            _ = ctx.resync_wanted.notified() => false,
            _ = tokio::time::sleep(ctx.options.poll_interval) => false,
        };
        if Arc::strong_count(&ctx) == 1 {
            return;
        }
        if let Err(e) = sync::resync(&ctx, elected).await {
            tracing::warn!(
                "cannot read the group store ({}): {e}",
                ctx.store.describe()
            );
        } else if elected {
            tracing::info!(
                "elected: resuming every group from {}",
                ctx.store.describe()
            );
        }
    }
}

pub(crate) fn spawn(ctx: &Arc<Ctx>, group: Arc<Group>) {
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
        self.update(&group, |r, v| {
            let desired = v.desired(r.deleting);
            let memory = core_command(&r.memory, cmd, &desired, worker::now_ms())
                .map_err(Error::conflict)?;
            message = memory
                .update
                .as_ref()
                .map(|u| u.message.clone())
                .unwrap_or_default();
            r.memory = memory;
            Ok(())
        })
        .await?;
        tracing::info!(group = id, %command, "{message}");
        self.ctx.events.emit(
            id,
            What {
                kind: match command {
                    UpdateCommand::Pause => "update-pause-asked",
                    UpdateCommand::Resume => "update-resume-asked",
                    UpdateCommand::Rollback => "rollback-asked",
                },
                cause: "command",
                ..What::default()
            },
            message.clone(),
        );
        Ok(if message.is_empty() {
            format!("{command}: done")
        } else {
            message
        })
    }

    async fn free_group(&self, id: &str) -> Result<()> {
        spec::check_group_id(id).map_err(Error::invalid)?;
        let _writer = self.ctx.writer(id).await;
        let unusable = self.ctx.unusable().get(id).map(|u| u.revision);
        if let Some(revision) = unusable {
            self.ctx.store.delete(id, revision).await?;
            self.ctx.unusable().remove(id);
            tracing::info!(
                group = id,
                "freed an unusable record: instances left as they are"
            );
            return Ok(());
        }
        let group = self.group(id)?;
        let revision = group.state().revision;
        self.ctx.store.delete(id, revision).await?;
        group.state().stopped = true;
        group.wake.notify_one();
        self.ctx.groups().remove(id);
        crate::metrics::metrics().forget(id);
        tracing::info!(group = id, "freed: instances left as they are");
        self.ctx.events.emit(
            id,
            What {
                kind: "group-freed",
                ..What::default()
            },
            "no longer managed; its instances are left as they are",
        );
        Ok(())
    }

    async fn describe_group(&self, id: &str) -> Result<GroupDescription> {
        let group = self.group(id)?;
        let s = group.state();
        let desired = s.valid.desired(s.record.deleting);
        let view = &s.view;
        let status = view.status.clone();
        let current_hash = desired.config_hash.clone();
        let mut message = status
            .as_ref()
            .map(|st| st.message.clone())
            .unwrap_or_default();
        for e in [&view.error, &s.backoff.message, &view.standby]
            .into_iter()
            .flatten()
        {
            message = if message.is_empty() {
                e.clone()
            } else {
                format!("{message}; {e}")
            };
        }
        if !s.unreadable.is_empty() {
            let shown: Vec<&str> = s.unreadable.iter().take(3).map(|i| i.as_str()).collect();
            let more = s.unreadable.len().saturating_sub(shown.len());
            let note = format!(
                "the description of {}{} cannot be read (see the events): counted without its \
                 properties",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
            message = if message.is_empty() {
                note
            } else {
                format!("{message}; {note}")
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
            instances: view.instances.clone(),
            converged: rules::converged(
                status.as_ref(),
                view.observed && view.error.is_none() && view.generation == s.generation,
                s.record.deleting,
            ),
            target: status.as_ref().map(|st| st.target),
            status: view
                .instances
                .iter()
                .zip(view.health.iter())
                .map(|(d, health)| InstanceStatus {
                    id: d.id.clone(),
                    logical_id: d
                        .logical_id
                        .clone()
                        .or_else(|| d.tags.get(tags::LOGICAL_ID).cloned()),
                    health: *health,
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
        self.update(&group, |r, _| {
            r.deleting = true;
            Ok(())
        })
        .await?;
        tracing::info!(
            group = id,
            "destroying: draining and destroying every instance"
        );
        self.ctx.events.emit(
            id,
            What {
                kind: "destroy-asked",
                cause: "command",
                ..What::default()
            },
            "draining and destroying every instance",
        );
        Ok(())
    }

    async fn inspect_groups(&self) -> Result<Vec<GroupSpec>> {
        let mut specs: Vec<GroupSpec> = self
            .ctx
            .groups()
            .values()
            .map(|g| g.state().record.spec.clone())
            .collect();
        // Unusable records are listed too (DescribeGroup says what is wrong with them), so that
        // `group ls` shows them instead of hiding them.
        specs.extend(self.ctx.unusable().iter().map(|(id, u)| {
            u.spec.clone().unwrap_or_else(|| GroupSpec {
                id: id.clone(),
                properties: None,
            })
        }));
        specs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(specs)
    }

    async fn destroy_instances(&self, id: &str, instances: &[InstanceId]) -> Result<()> {
        let group = self.group(id)?;
        let (unknown, is_cattle) = {
            let s = group.state();
            let members: std::collections::HashSet<&str> =
                s.view.instances.iter().map(|d| d.id.as_str()).collect();
            let unknown: Vec<&InstanceId> = instances
                .iter()
                .filter(|i| !members.contains(i.as_str()))
                .collect();
            (unknown, !s.valid.allocation.is_pets())
        };
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
            self.update(&group, |r, v| {
                let size = v.size().saturating_sub(instances.len() as u64);
                *v = Arc::new(r.set_size(v, size)?);
                Ok(())
            })
            .await?;
        }
        worker::destroy_now(&group, &self.ctx, instances);
        Ok(())
    }

    async fn size(&self, id: &str) -> Result<u64> {
        let group = self.group(id)?;
        let size = group.state().valid.size();
        Ok(size)
    }

    async fn set_size(&self, id: &str, size: u64) -> Result<()> {
        let group = self.group(id)?;
        let mut before = 0;
        self.update(&group, |r, v| {
            before = v.size();
            *v = Arc::new(r.set_size(v, size)?);
            Ok(())
        })
        .await?;
        self.ctx.events.emit(
            id,
            What {
                kind: "scale",
                cause: "command",
                ..What::default()
            },
            format!("target {before} -> {size}"),
        );
        Ok(())
    }

    async fn events(
        &self,
        cursor: u64,
        group: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<EventBatch> {
        Ok(self.ctx.events.after(cursor, group, timeout).await)
    }
}

/// True for errors a retry may fix (used by callers deciding whether to wait).
pub fn is_transient(e: &Error) -> bool {
    e.kind == ErrorKind::Unavailable
}
