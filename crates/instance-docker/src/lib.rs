//! `instance-docker`: each instance is a container on the Docker engine this plugin talks to.
//!
//! - **Tags are container labels**, plus a marker label (`infrakit.instance-docker=1`) so that
//!   `DescribeInstances` lists only containers this plugin made. The filter runs on the engine
//!   (a container list with a `label` filter): one request whatever the number of
//!   containers on the host. Exited containers are listed too (a flavor judges them through the
//!   `State`/`ExitCode`/`Health` properties; `docker rm` makes them disappear and get replaced).
//! - **Names**: `<group>-<logical ID>` for pets (so `docker ps` says which member is which),
//!   `<group>-<6 random hex>` for cattle, `infrakit-<random>` without a group tag.
//! - **Static IPs**: a logical ID that parses as an IP address becomes the container's address on
//!   `Network`, which must be a user-defined network whose IPAM config has a subnet holding it;
//!   otherwise provisioning fails naming the network's subnets.
//! - **Init** (the flavor's boot script) runs by the image's shell: when `Init` is non-empty the
//!   container's entrypoint becomes `<Shell> -c '<Init>\nexec "$@"' infrakit-init <entrypoint+cmd>`
//!   (`Shell` defaults to `/bin/sh`), so the script runs first, then the image's (or the
//!   properties') entrypoint and command as PID 1. An image without a shell cannot take an Init.
//! - **Destroy** stops the container (SIGTERM, then SIGKILL after its `StopTimeout`) and removes
//!   it with its anonymous volumes. A container that is gone is `NotFound` (the group controller
//!   takes that as done).
//! - **Label**: the engine cannot change a container's labels. `Label` succeeds when the labels
//!   are already there and otherwise refuses with an error saying so (the group controller never
//!   relabels; re-creating a container behind the caller's back would be worse than refusing).
//! - The image is never pulled: it must exist on the engine (`docker build`, `docker load`,
//!   `docker import`, or a pull by the user). A missing one is a clear error; the group controller
//!   backs off between attempts, and no container is created for it.
//! - **The engine** is reached through `infrakit-docker`'s [`Engine`]: bollard's typed requests,
//!   pinned to the engine API version we test against (1.41).

mod changes;
pub mod properties;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use infrakit_docker::bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerState, EndpointIpamConfig,
    EndpointSettings, HealthConfig, HostConfig, ImageInspect, Mount as EngineMount, MountType,
    NetworkInspect, NetworkingConfig, PortBinding, PortMap, RestartPolicy, RestartPolicyNameEnum,
};
use infrakit_docker::bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, InspectNetworkOptions, ListContainersOptions,
    RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use infrakit_docker::engine::{refusal, Engine};
use infrakit_sdk::spi::flavor::AllocationMethod;
use infrakit_sdk::spi::instance::{
    Changes, Description, DestroyContext, InstanceId, InstancePlugin, Spec, Tags,
};
use infrakit_sdk::{Error, Result};
use serde::Serialize;
use serde_json::Value;

pub use properties::Properties;

/// The label every container made by this plugin carries.
pub const MARKER_LABEL: &str = "infrakit.instance-docker";
/// The tag the group controller puts on every instance; names containers.
const GROUP_TAG: &str = infrakit_sdk::spi::tags::GROUP;
/// Where the logical ID is kept (the tag the group controller uses for it too).
const LOGICAL_ID_LABEL: &str = infrakit_sdk::spi::tags::LOGICAL_ID;

/// How many containers are inspected at once for `DescribeInstances` with properties.
const INSPECT_PARALLEL: usize = 16;

/// The plugin. Cheap to clone; every method may run concurrently.
#[derive(Clone)]
pub struct DockerInstancePlugin {
    engine: Arc<Engine>,
    /// What `Instance.Changes` answers from (the engine's event stream).
    changes: Arc<changes::Changes>,
}

impl DockerInstancePlugin {
    /// Container operations are slower than discovery's `GET /plugins`: a stop waits up to the
    /// container's stop timeout, and a create on a busy engine can take seconds. Hence longer
    /// timeouts than `Engine::new`'s.
    pub fn new(engine: Engine) -> DockerInstancePlugin {
        DockerInstancePlugin {
            engine: Arc::new(
                engine.with_timeouts(Duration::from_secs(2), Duration::from_secs(120)),
            ),
            changes: Arc::default(),
        }
    }

    /// The engine from `DOCKER_HOST` (a `unix://` address) or `/var/run/docker.sock`.
    pub fn from_env() -> Result<DockerInstancePlugin> {
        Engine::from_env().map(DockerInstancePlugin::new).ok_or_else(|| {
            Error::invalid(
                "instance-docker needs the engine's unix socket: DOCKER_HOST must be unix://PATH or unset",
            )
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The image's config, or the error a user should read.
    async fn inspect_image(&self, image: &str) -> Result<ImageInspect> {
        match self
            .engine
            .docker()?
            .inspect_image(&path_escape(image))
            .await
        {
            Ok(i) => Ok(i),
            Err(e) if status(&e) == Some(404) => Err(image_missing(image)),
            Err(e) => Err(self.engine.error(&format!("inspecting image {image}"), e)),
        }
    }

    async fn inspect_network(&self, name: &str) -> Result<NetworkInspect> {
        match self
            .engine
            .docker()?
            .inspect_network(&path_escape(name), None::<InspectNetworkOptions>)
            .await
        {
            Ok(n) => Ok(n),
            Err(e) if status(&e) == Some(404) => Err(Error::invalid(format!(
                "network '{name}' not found on the engine; create it first (docker network create --subnet ... {name})"
            ))),
            Err(e) => Err(self.engine.error(&format!("inspecting network {name}"), e)),
        }
    }

    /// The static address for `logical_id` on the properties' network, when the logical ID is an
    /// IP address ([`static_ip_on`]).
    async fn static_ip(&self, props: &Properties, logical_id: &str) -> Result<Option<IpAddr>> {
        let Ok(ip) = logical_id.parse::<IpAddr>() else {
            return Ok(None);
        };
        let network = match props.network.as_deref() {
            Some(net) => Some((net, self.inspect_network(net).await?)),
            None => None,
        };
        static_ip_on(ip, network.as_ref().map(|(n, info)| (*n, info))).map(Some)
    }

    /// The checks of `validate`, plus every IP-shaped logical ID against the network's subnets;
    /// the image and the network are each inspected once, however many logical IDs there are.
    async fn check(&self, props: &Properties, logical_ids: &[String]) -> Result<()> {
        self.inspect_image(&props.image).await?;
        let network = match props.network.as_deref() {
            // `container:NAME` shares another container's stack: not a network to look up.
            Some(net) if !net.contains(':') => Some((net, self.inspect_network(net).await?)),
            _ => None,
        };
        for ip in logical_ids.iter().filter_map(|l| l.parse::<IpAddr>().ok()) {
            static_ip_on(ip, network.as_ref().map(|(n, info)| (*n, info)))?;
        }
        Ok(())
    }

    /// The engine's create body for `spec`.
    async fn create_body(&self, props: &Properties, spec: &Spec) -> Result<ContainerCreateBody> {
        let mut labels: HashMap<String, String> = props.labels.clone().into_iter().collect();
        labels.extend(spec.tags.clone());
        if let Some(l) = &spec.logical_id {
            labels.insert(LOGICAL_ID_LABEL.to_string(), l.clone());
        }
        labels.insert(MARKER_LABEL.to_string(), "1".to_string());

        let (mut entrypoint, mut cmd) = (props.entrypoint.clone(), props.cmd.clone());
        if !spec.init.trim().is_empty() {
            // The script runs first, then `exec "$@"` becomes what the container would have run
            // without it, so we need the image's defaults for whatever the properties leave out.
            let config = self.inspect_image(&props.image).await?.config;
            let config = config.unwrap_or_default();
            let ep = entrypoint.unwrap_or_else(|| config.entrypoint.unwrap_or_default());
            let c = cmd.unwrap_or_else(|| config.cmd.unwrap_or_default());
            let shell = props.shell.clone().unwrap_or_else(|| "/bin/sh".to_string());
            let script = format!("{}\nexec \"$@\"", spec.init.trim_end());
            let mut args = vec![shell, "-c".to_string(), script, "infrakit-init".to_string()];
            args.extend(ep);
            entrypoint = Some(args);
            cmd = Some(c);
        }

        let mut exposed: Vec<String> = Vec::new();
        let mut bindings: PortMap = HashMap::new();
        for p in &props.ports {
            let (container, host_ip, host_port) = properties::parse_port(p)?;
            if !exposed.contains(&container) {
                exposed.push(container.clone());
            }
            bindings
                .entry(container)
                .or_default()
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(host_ip),
                    host_port: Some(host_port),
                });
        }

        let memory = match &props.memory {
            Some(m) => Some(i64::try_from(m.bytes()?).map_err(|_| {
                Error::invalid("Memory is larger than the engine can take".to_string())
            })?),
            None => None,
        };
        let restart_policy = match &props.restart_policy {
            Some(r) => Some(restart_policy(r)?),
            None => None,
        };
        let mounts = props
            .mounts
            .iter()
            .map(engine_mount)
            .collect::<Result<Vec<_>>>()?;
        let healthcheck = match &props.healthcheck {
            Some(h) => {
                let ns = |k: &str, d: &Option<String>| {
                    d.as_deref()
                        .map(|d| properties::parse_duration_ns(&format!("Healthcheck.{k}"), d))
                        .transpose()
                };
                Some(HealthConfig {
                    test: Some(h.test.clone()),
                    interval: ns("Interval", &h.interval)?,
                    timeout: ns("Timeout", &h.timeout)?,
                    start_period: ns("StartPeriod", &h.start_period)?,
                    retries: h.retries.map(i64::from),
                    ..Default::default()
                })
            }
            None => None,
        };

        let unconfined_paths = props
            .security_opt
            .iter()
            .any(|o| o == "systempaths=unconfined")
            .then(Vec::new);
        let host = HostConfig {
            binds: Some(props.binds.clone()),
            mounts: Some(mounts),
            tmpfs: Some(props.tmpfs.clone().into_iter().collect()),
            port_bindings: Some(bindings),
            cap_add: Some(props.cap_add.clone()),
            cap_drop: Some(props.cap_drop.clone()),
            extra_hosts: Some(props.extra_hosts.clone()),
            dns: Some(props.dns.clone()),
            privileged: Some(props.privileged),
            // `systempaths=unconfined` is the docker CLI's, not the engine's: it means no masked
            // and no read-only /proc and /sys paths, which the API says that way.
            security_opt: Some(
                props
                    .security_opt
                    .iter()
                    .filter(|o| o.as_str() != "systempaths=unconfined")
                    .cloned()
                    .collect::<Vec<_>>(),
            )
            .filter(|v| !v.is_empty()),
            masked_paths: unconfined_paths.clone(),
            readonly_paths: unconfined_paths,
            device_cgroup_rules: (!props.device_cgroup_rules.is_empty())
                .then(|| props.device_cgroup_rules.clone()),
            readonly_rootfs: Some(props.read_only),
            init: props.init_process.then_some(true),
            memory,
            nano_cpus: props.cpus.map(|c| (c * 1e9) as i64),
            restart_policy,
            network_mode: props.network.clone(),
            ..Default::default()
        };

        let networking_config = match &props.network {
            Some(net) => {
                let mut endpoint = EndpointSettings::default();
                if !props.network_aliases.is_empty() {
                    endpoint.aliases = Some(props.network_aliases.clone());
                }
                if let Some(l) = &spec.logical_id {
                    endpoint.ipam_config = match self.static_ip(props, l).await? {
                        Some(IpAddr::V4(ip)) => Some(EndpointIpamConfig {
                            ipv4_address: Some(ip.to_string()),
                            ..Default::default()
                        }),
                        Some(IpAddr::V6(ip)) => Some(EndpointIpamConfig {
                            ipv6_address: Some(ip.to_string()),
                            ..Default::default()
                        }),
                        None => None,
                    };
                }
                Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(net.clone(), endpoint)])),
                })
            }
            None => {
                if let Some(l) = &spec.logical_id {
                    // Same error as with a network, for an IP-shaped logical ID without one.
                    self.static_ip(props, l).await?;
                }
                None
            }
        };

        Ok(ContainerCreateBody {
            image: Some(props.image.clone()),
            labels: Some(labels),
            exposed_ports: Some(exposed),
            tty: Some(props.tty),
            cmd,
            entrypoint,
            env: props.env.as_ref().map(|e| e.to_list()),
            working_dir: props.working_dir.clone(),
            user: props.user.clone(),
            hostname: props.hostname.clone(),
            stop_timeout: props.stop_timeout.map(i64::from),
            stop_signal: props.stop_signal.clone(),
            healthcheck,
            host_config: Some(host),
            networking_config,
            ..Default::default()
        })
    }

    /// Removes a container we could not start, so a failing start leaves nothing behind.
    async fn remove_quietly(&self, id: &str) {
        let removed = match self.engine.docker() {
            Ok(docker) => docker
                .remove_container(&path_escape(id), Some(remove_options()))
                .await
                .map_err(|e| self.engine.error("removing", e)),
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            tracing::warn!(
                container = id,
                "cannot remove a container that failed to start: {e}"
            );
        }
    }

    /// The container's inspection, None when it is gone.
    async fn inspect_container(&self, id: &str) -> Result<Option<ContainerInspectResponse>> {
        match self
            .engine
            .docker()?
            .inspect_container(&path_escape(id), None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.engine.error(&format!("inspecting container {id}"), e)),
        }
    }
}

/// The status of the engine's refusal, if the engine refused.
fn status(e: &infrakit_docker::bollard::errors::Error) -> Option<u16> {
    refusal(e).map(|(status, _)| status)
}

/// Remove with its anonymous volumes, running or not.
fn remove_options() -> RemoveContainerOptions {
    RemoveContainerOptions {
        force: true,
        v: true,
        link: false,
    }
}

/// `no`, `always`, `unless-stopped`, `on-failure[:N]` as the engine's restart policy.
fn restart_policy(text: &str) -> Result<RestartPolicy> {
    let (name, count) = properties::parse_restart_policy(text)?;
    let name = match name.as_str() {
        "no" => RestartPolicyNameEnum::NO,
        "always" => RestartPolicyNameEnum::ALWAYS,
        "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
        _ => RestartPolicyNameEnum::ON_FAILURE,
    };
    Ok(RestartPolicy {
        name: Some(name),
        maximum_retry_count: Some(i64::from(count)),
    })
}

/// A `Mounts` entry as the engine's mount; its `Type` must be one the engine knows.
fn engine_mount(m: &properties::Mount) -> Result<EngineMount> {
    let typ: MountType = serde_json::from_value(Value::String(m.kind.clone())).map_err(|_| {
        Error::invalid(format!(
            "Mounts: Type '{}' is not one of bind, volume, tmpfs",
            m.kind
        ))
    })?;
    Ok(EngineMount {
        typ: Some(typ),
        source: m.source.clone(),
        target: Some(m.target.clone()),
        read_only: m.read_only.then_some(true),
        ..Default::default()
    })
}

#[async_trait]
impl InstancePlugin for DockerInstancePlugin {
    /// Checks the properties, that the image exists on the engine and that the network does.
    async fn validate(&self, properties: &Value) -> Result<()> {
        self.check(&Properties::parse(properties)?, &[]).await
    }

    /// As `validate`, and every logical ID that is an IP address must fit the network's subnet:
    /// a pet whose address cannot be given is refused at commit, not at its first provision.
    async fn validate_with_allocation(
        &self,
        properties: &Value,
        allocation: &AllocationMethod,
    ) -> Result<()> {
        self.check(&Properties::parse(properties)?, &allocation.logical_ids)
            .await
    }

    async fn provision(&self, spec: Spec) -> Result<InstanceId> {
        let props = Properties::parse(spec.properties.as_ref().unwrap_or(&Value::Null))?;
        let body = self.create_body(&props, &spec).await?;
        let name = container_name(&spec);
        let docker = self.engine.docker()?;
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let id = match docker.create_container(Some(options), body).await {
            Ok(created) => created.id,
            Err(e) => match refusal(&e) {
                Some((404, m)) if m.contains("image") => {
                    // Logged here too: the count of these lines is how a storm would show.
                    tracing::info!(image = %props.image, container = %name, "provision refused: image not found");
                    return Err(image_missing(&props.image));
                }
                Some((409, m)) => {
                    return Err(Error::conflict(format!(
                        "a container named '{name}' already exists ({m}); remove it or give the instance another logical ID"
                    )))
                }
                _ => return Err(self.engine.error(&format!("creating container {name}"), e)),
            },
        };
        if let Err(e) = docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
        {
            let err = self.engine.error(&format!("starting container {name}"), e);
            self.remove_quietly(&id).await;
            return Err(err);
        }
        tracing::debug!(container = %name, id = %id, "provisioned");
        Ok(id)
    }

    async fn label(&self, id: &str, labels: Tags) -> Result<()> {
        let Some(c) = self.inspect_container(id).await? else {
            return Err(Error::not_found(format!("no container {id}")));
        };
        let have = c.config.and_then(|c| c.labels).unwrap_or_default();
        let missing: Vec<String> = labels
            .iter()
            .filter(|(k, v)| have.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "container {id} cannot be relabelled (the Docker engine fixes labels at creation): {} would need a new container; destroy it and let the group re-create it",
            missing.join(", ")
        )))
    }

    async fn destroy(&self, id: &str, _context: DestroyContext) -> Result<()> {
        let (docker, escaped) = (self.engine.docker()?, path_escape(id));
        // No `t`: the engine uses the container's own StopTimeout (the properties' StopTimeout).
        // An already stopped container (304) is success.
        match docker
            .stop_container(&escaped, None::<StopContainerOptions>)
            .await
        {
            Ok(()) => {}
            Err(e) if status(&e) == Some(404) => {
                return Err(Error::not_found(format!("no container {id}")))
            }
            Err(e) => return Err(self.engine.error(&format!("stopping container {id}"), e)),
        }
        match docker
            .remove_container(&escaped, Some(remove_options()))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => match refusal(&e) {
                // 404: removed by someone else since the stop; 409: a removal is already under way.
                Some((404, _)) => Ok(()),
                Some((409, m)) if m.contains("in progress") => Ok(()),
                _ => Err(self.engine.error(&format!("removing container {id}"), e)),
            },
        }
    }

    async fn describe_instances(&self, tags: &Tags, properties: bool) -> Result<Vec<Description>> {
        let mut labels = vec![format!("{MARKER_LABEL}=1")];
        labels.extend(tags.iter().map(|(k, v)| format!("{k}={v}")));
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), labels)])),
            ..Default::default()
        };
        let listed = self
            .engine
            .docker()?
            .list_containers(Some(options))
            .await
            // Never "no instances" on an engine error: the controller would re-create everything.
            .map_err(|e| Error::unavailable(self.engine.error("listing containers", e).message))?;
        let mut out: Vec<Description> = listed
            .into_iter()
            .map(|c| {
                let mut tags: Tags = c.labels.unwrap_or_default().into_iter().collect();
                tags.remove(MARKER_LABEL);
                Description {
                    id: c.id.unwrap_or_default(),
                    logical_id: tags.get(LOGICAL_ID_LABEL).cloned(),
                    tags: tags.into(),
                    properties: None,
                }
            })
            .collect();
        if properties {
            // Exit code and health are only in the inspect answer: one per container, bounded.
            let sem = Arc::new(tokio::sync::Semaphore::new(INSPECT_PARALLEL));
            let mut set = tokio::task::JoinSet::new();
            for (i, d) in out.iter().enumerate() {
                let (me, id, sem) = (self.clone(), d.id.clone(), sem.clone());
                set.spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    (i, me.inspect_container(&id).await)
                });
            }
            while let Some(joined) = set.join_next().await {
                let (i, r) = joined.map_err(|e| Error::internal(format!("inspect task: {e}")))?;
                if let Some(c) = r? {
                    out[i].properties = Some(state_properties(&c));
                }
            }
            // A container removed between the list and its inspect has no properties: drop it.
            out.retain(|d| d.properties.is_some());
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// From the engine's event stream (see `instance_docker/changes.rs`).
    async fn changes(&self, cursor: &str, timeout: Duration) -> Result<Changes> {
        self.changes.ensure_started(&self.engine);
        self.changes.feed.wait(cursor, timeout).await
    }
}

fn image_missing(image: &str) -> Error {
    Error::invalid(format!(
        "image {image} not found on the engine; build or pull it first"
    ))
}

/// A container name the engine accepts (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
fn container_name(spec: &Spec) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let group = spec
        .tags
        .get(GROUP_TAG)
        .map(|g| clean(g))
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| "infrakit".to_string());
    let group = if group.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        group
    } else {
        format!("g{group}")
    };
    match &spec.logical_id {
        Some(l) if !l.is_empty() => format!("{group}-{}", clean(l)),
        _ => format!("{group}-{}", random_suffix()),
    }
}

/// Six hex digits, random enough that cattle names do not collide in a group (and the engine
/// refuses a duplicate name anyway; the controller then retries with another).
fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process and per instance from the OS: no extra crate needed.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(nanos);
    format!("{:06x}", h.finish() & 0xff_ffff)
}

/// True when `ip` is in `cidr` (`10.0.0.0/24`, `fd00::/64`).
/// `ip` as a static address on `network` (its name and inspection): refused, naming the subnets,
/// when it is outside all of them; refused when there is no network or it has no subnet.
fn static_ip_on(ip: IpAddr, network: Option<(&str, &NetworkInspect)>) -> Result<IpAddr> {
    let Some((net, info)) = network else {
        return Err(Error::invalid(format!(
            "logical ID {ip} is an IP address, which needs a user-defined Network with a subnet in the instance properties"
        )));
    };
    let subnets: Vec<&str> = info
        .ipam
        .iter()
        .flat_map(|ipam| ipam.config.iter().flatten())
        .filter_map(|c| c.subnet.as_deref())
        .collect();
    if subnets.iter().any(|s| in_subnet(ip, s)) {
        return Ok(ip);
    }
    if subnets.is_empty() {
        return Err(Error::invalid(format!(
            "logical ID {ip}: network '{net}' has no configured subnet; static addresses need one (docker network create --subnet CIDR {net})"
        )));
    }
    Err(Error::invalid(format!(
        "logical ID {ip} is outside the subnet of network '{net}' ({})",
        subnets.join(", ")
    )))
}

fn in_subnet(ip: IpAddr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if len <= 128 => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// A name or ID as a path segment of a request: everything but unreserved characters
/// percent-encoded (bollard puts names into paths as they are, so a `?` or `#` in a user's name
/// would otherwise change the request), except `/`, `:` and `@`: image references
/// (`registry:5000/a/b:tag`, `a@sha256:...`) are matched by the engine's router as they are.
fn path_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What `DescribeInstances` with `properties` says about a container. `State`, `Running`,
/// `ExitCode` and `Health` are the SDK's backend state (`infrakit_sdk::spi::backend`), which
/// flavors read.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct StateProperties<'a> {
    name: &'a str,
    image: &'a str,
    /// `created`, `running`, `restarting`, `exited`, `paused`, `dead`.
    state: String,
    running: bool,
    exit_code: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
    /// Docker's health status (`starting`, `healthy`, `unhealthy`), `none` without a healthcheck.
    health: String,
    started_at: &'a str,
    finished_at: &'a str,
    restart_count: i64,
    /// Network name → the container's address on it.
    #[serde(rename = "IPAddresses")]
    ip_addresses: BTreeMap<&'a str, &'a str>,
}

/// The engine's inspection as `DescribeInstances` properties (what is absent: empty or zero).
fn state_properties(c: &ContainerInspectResponse) -> Value {
    let state = c.state.as_ref();
    let text = |field: fn(&ContainerState) -> Option<&String>| {
        state
            .and_then(field)
            .map(String::as_str)
            .unwrap_or_default()
    };
    let p = StateProperties {
        name: c
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/'),
        image: c
            .config
            .as_ref()
            .and_then(|c| c.image.as_deref())
            .unwrap_or_default(),
        state: state
            .and_then(|s| s.status.as_ref())
            .map(ToString::to_string)
            .unwrap_or_default(),
        running: state.and_then(|s| s.running).unwrap_or_default(),
        exit_code: state.and_then(|s| s.exit_code).unwrap_or_default(),
        error: text(|s| s.error.as_ref()),
        health: match state.and_then(|s| s.health.as_ref()) {
            Some(h) => h
                .status
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            None => "none".to_string(),
        },
        started_at: text(|s| s.started_at.as_ref()),
        finished_at: text(|s| s.finished_at.as_ref()),
        restart_count: c.restart_count.unwrap_or_default(),
        ip_addresses: c
            .network_settings
            .iter()
            .flat_map(|n| n.networks.iter().flatten())
            .filter_map(|(n, e)| Some((n.as_str(), e.ip_address.as_deref()?)))
            .filter(|(_, ip)| !ip.is_empty())
            .collect(),
    };
    serde_json::to_value(p).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn described_state_is_the_backend_state_flavors_read() {
        use infrakit_docker::bollard::models::ContainerStateStatusEnum;
        let c = ContainerInspectResponse {
            state: Some(ContainerState {
                status: Some(ContainerStateStatusEnum::EXITED),
                running: Some(false),
                exit_code: Some(3),
                ..ContainerState::default()
            }),
            ..ContainerInspectResponse::default()
        };
        let props = state_properties(&c);
        let b = infrakit_sdk::spi::backend::BackendState::read(Some(&props));
        assert_eq!(b.state, Some("exited"));
        assert_eq!(b.running, Some(false));
        assert_eq!(b.exit_code, Some(3));
        assert_eq!(b.health, Some("none"));
    }
    use serde_json::json;

    /// The properties become what `docker run` would send for the same flags (no engine is asked:
    /// no Init, no IP-shaped logical ID).
    #[tokio::test]
    async fn create_body_is_what_docker_run_sends() {
        let plugin = DockerInstancePlugin::new(Engine::new("/nonexistent/docker.sock"));
        let props = Properties::parse(&json!({
            "Image": "busybox:local", "Cmd": ["sleep", "60"], "Env": {"A": "b"},
            "Ports": ["127.0.0.1:8080:80/udp", "9000"], "Memory": "256m", "Cpus": 0.5,
            "RestartPolicy": "on-failure:3", "InitProcess": true, "StopTimeout": 2,
            "Mounts": [{"Type": "volume", "Source": "v", "Target": "/d", "ReadOnly": true}],
            "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": "1s", "Retries": 3},
            "SecurityOpt": ["seccomp=unconfined", "systempaths=unconfined"],
            "DeviceCgroupRules": ["a *:* rwm"],
            "CapAdd": ["ALL"], "CapDrop": ["SYS_RESOURCE"]
        }))
        .unwrap();
        let mut spec = Spec::default();
        spec.tags.insert(GROUP_TAG.into(), "web".into());
        spec.logical_id = Some("web1".into());
        let body = plugin.create_body(&props, &spec).await.unwrap();
        let body = serde_json::to_value(body).unwrap();
        assert_eq!(body["Image"], "busybox:local");
        assert_eq!(body["Cmd"], json!(["sleep", "60"]));
        assert_eq!(body["Env"], json!(["A=b"]));
        assert_eq!(body["Labels"][LOGICAL_ID_LABEL], "web1");
        assert_eq!(body["Labels"][GROUP_TAG], "web");
        assert_eq!(body["Labels"][MARKER_LABEL], "1");
        assert_eq!(body["ExposedPorts"], json!({"80/udp": {}, "9000/tcp": {}}));
        assert_eq!(body["StopTimeout"], 2);
        assert_eq!(
            body["Healthcheck"],
            json!({"Test": ["CMD-SHELL", "true"], "Interval": 1_000_000_000i64, "Retries": 3})
        );
        let host = &body["HostConfig"];
        assert_eq!(
            host["PortBindings"]["80/udp"],
            json!([{"HostIp": "127.0.0.1", "HostPort": "8080"}])
        );
        assert_eq!(
            host["PortBindings"]["9000/tcp"],
            json!([{"HostIp": "", "HostPort": ""}])
        );
        assert_eq!(host["Memory"], 256 << 20);
        assert_eq!(host["NanoCpus"], 500_000_000);
        assert_eq!(host["Init"], true);
        assert_eq!(
            host["RestartPolicy"],
            json!({"Name": "on-failure", "MaximumRetryCount": 3})
        );
        assert_eq!(
            host["Mounts"],
            json!([{"Type": "volume", "Source": "v", "Target": "/d", "ReadOnly": true}])
        );
        assert!(body.get("NetworkingConfig").is_none(), "{body}");
        assert_eq!(host["SecurityOpt"], json!(["seccomp=unconfined"]));
        assert_eq!(host["MaskedPaths"], json!([]));
        assert_eq!(host["ReadonlyPaths"], json!([]));
        assert_eq!(host["DeviceCgroupRules"], json!(["a *:* rwm"]));
        assert_eq!(host["CapAdd"], json!(["ALL"]));
        assert_eq!(host["CapDrop"], json!(["SYS_RESOURCE"]));

        let bad =
            Properties::parse(&json!({"Image": "x", "Mounts": [{"Type": "nfs", "Target": "/d"}]}))
                .unwrap();
        let e = plugin.create_body(&bad, &spec).await.unwrap_err();
        assert!(e.message.contains("Type 'nfs'"), "{e}");
    }

    #[test]
    fn subnets() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_subnet(ip("10.1.2.3"), "10.1.0.0/16"));
        assert!(!in_subnet(ip("10.2.2.3"), "10.1.0.0/16"));
        assert!(in_subnet(ip("1.2.3.4"), "0.0.0.0/0"));
        assert!(in_subnet(ip("fd00::5"), "fd00::/64"));
        assert!(!in_subnet(ip("10.1.2.3"), "fd00::/64"));
        assert!(!in_subnet(ip("10.1.2.3"), "garbage"));
    }

    #[test]
    fn static_ips_need_a_network_whose_subnet_holds_them() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net: NetworkInspect =
            serde_json::from_value(json!({"IPAM": {"Config": [{"Subnet": "10.1.0.0/16"}]}}))
                .unwrap();
        let bare: NetworkInspect = serde_json::from_value(json!({"IPAM": {"Config": []}})).unwrap();
        assert_eq!(
            static_ip_on(ip("10.1.2.3"), Some(("n", &net))).unwrap(),
            ip("10.1.2.3")
        );
        let e = static_ip_on(ip("192.0.2.7"), Some(("n", &net))).unwrap_err();
        assert!(
            e.message
                .contains("outside the subnet of network 'n' (10.1.0.0/16)"),
            "{e}"
        );
        let e = static_ip_on(ip("10.1.2.3"), Some(("n", &bare))).unwrap_err();
        assert!(e.message.contains("has no configured subnet"), "{e}");
        let e = static_ip_on(ip("10.1.2.3"), None).unwrap_err();
        assert!(e.message.contains("needs a user-defined Network"), "{e}");
    }

    #[test]
    fn names() {
        let mut spec = Spec::default();
        spec.tags.insert(GROUP_TAG.into(), "zk ensemble".into());
        spec.logical_id = Some("10.0.0.5".into());
        assert_eq!(container_name(&spec), "zk-ensemble-10.0.0.5");
        spec.logical_id = None;
        let n = container_name(&spec);
        assert!(
            n.starts_with("zk-ensemble-") && n.len() == "zk-ensemble-".len() + 6,
            "{n}"
        );
        assert_ne!(container_name(&spec), container_name(&spec));
        spec.tags.insert(GROUP_TAG.into(), "_x".into());
        assert!(container_name(&spec).starts_with("g_x-"));
    }

    /// A user's ID reaches the engine as one path segment, and the engine's 404 is `NotFound`.
    #[tokio::test]
    async fn destroy_escapes_the_id_and_reports_a_missing_container() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap();
            let body = r#"{"message":"No such container: a?b"}"#;
            let reply = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        let plugin = DockerInstancePlugin::new(Engine::new(&sock));
        let e = plugin
            .destroy("a?b", DestroyContext::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind, infrakit_sdk::ErrorKind::NotFound, "{e}");
        let head = server.await.unwrap();
        let line = head.lines().next().unwrap_or_default();
        assert!(
            line.starts_with("POST /") && line.ends_with("containers/a%3Fb/stop HTTP/1.1"),
            "{line}"
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(path_escape("reg:5000/a/b:1"), "reg:5000/a/b:1");
        assert_eq!(path_escape("a?b#c d%"), "a%3Fb%23c%20d%25");
    }
}
