//! `instance-docker`: each instance is a container on the Docker engine this plugin talks to.
//!
//! - **Tags are container labels**, plus a marker label (`infrakit.instance-docker=1`) so that
//!   `DescribeInstances` lists only containers this plugin made. The filter runs on the engine
//!   (`GET /containers/json?all=1&filters={"label":[...]}`): one request whatever the number of
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

pub mod properties;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hyper::Method;
use infrakit_sdk::spi::flavor::AllocationMethod;
use infrakit_sdk::spi::instance::{
    Description, DestroyContext, InstanceId, InstancePlugin, Spec, Tags,
};
use infrakit_sdk::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use infrakit_docker::engine::{engine_message, Engine};
pub use properties::Properties;

/// The label every container made by this plugin carries.
pub const MARKER_LABEL: &str = "infrakit.instance-docker";
/// The tag the group controller puts on every instance; names containers.
const GROUP_TAG: &str = "infrakit.group";
/// Where the logical ID is kept (the tag the group controller uses for it too).
const LOGICAL_ID_LABEL: &str = "infrakit.logical_id";

/// How many containers are inspected at once for `DescribeInstances` with properties.
const INSPECT_PARALLEL: usize = 16;

/// The plugin. Cheap to clone; every method may run concurrently.
#[derive(Clone)]
pub struct DockerInstancePlugin {
    engine: Arc<Engine>,
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

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Bytes)> {
        let (ct, bytes) = match body {
            Some(b) => (
                Some("application/json"),
                Bytes::from(serde_json::to_vec(b).map_err(|e| Error::internal(e.to_string()))?),
            ),
            None => (None, Bytes::new()),
        };
        self.engine.request(method, path, ct, bytes).await
    }

    /// An engine answer that is not what we wanted, as an error of the right kind.
    fn engine_error(&self, what: &str, status: u16, body: &[u8]) -> Error {
        let msg = format!(
            "{what}: the engine answered {status}: {}",
            engine_message(body)
        );
        match status {
            404 => Error::not_found(msg),
            409 => Error::conflict(msg),
            400..=499 => Error::invalid(msg),
            _ => Error::internal(msg),
        }
    }

    /// `GET /images/NAME/json`: the image's config, or the error a user should read.
    async fn inspect_image(&self, image: &str) -> Result<ImageInspect> {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/images/{}/json", path_escape(image)),
                None,
            )
            .await?;
        match status {
            200 => parse(&body, "image inspect"),
            404 => Err(image_missing(image)),
            _ => Err(self.engine_error(&format!("inspecting image {image}"), status, &body)),
        }
    }

    /// `GET /networks/NAME`.
    async fn inspect_network(&self, name: &str) -> Result<NetworkInspect> {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/networks/{}", path_escape(name)),
                None,
            )
            .await?;
        match status {
            200 => parse(&body, "network inspect"),
            404 => Err(Error::invalid(format!(
                "network '{name}' not found on the engine; create it first (docker network create --subnet ... {name})"
            ))),
            _ => Err(self.engine_error(&format!("inspecting network {name}"), status, &body)),
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
    async fn create_body(&self, props: &Properties, spec: &Spec) -> Result<Value> {
        let mut labels: BTreeMap<String, String> = props.labels.clone();
        labels.extend(spec.tags.clone());
        if let Some(l) = &spec.logical_id {
            labels.insert(LOGICAL_ID_LABEL.to_string(), l.clone());
        }
        labels.insert(MARKER_LABEL.to_string(), "1".to_string());

        let (mut entrypoint, mut cmd) = (props.entrypoint.clone(), props.cmd.clone());
        if !spec.init.trim().is_empty() {
            // The script runs first, then `exec "$@"` becomes what the container would have run
            // without it, so we need the image's defaults for whatever the properties leave out.
            let image = self.inspect_image(&props.image).await?;
            let ep =
                entrypoint.unwrap_or_else(|| image.config.entrypoint.clone().unwrap_or_default());
            let c = cmd.unwrap_or_else(|| image.config.cmd.clone().unwrap_or_default());
            let shell = props.shell.clone().unwrap_or_else(|| "/bin/sh".to_string());
            let script = format!("{}\nexec \"$@\"", spec.init.trim_end());
            let mut args = vec![shell, "-c".to_string(), script, "infrakit-init".to_string()];
            args.extend(ep);
            entrypoint = Some(args);
            cmd = Some(c);
        }

        let mut exposed = serde_json::Map::new();
        let mut bindings = serde_json::Map::new();
        for p in &props.ports {
            let (container, host_ip, host_port) = properties::parse_port(p)?;
            exposed.insert(container.clone(), json!({}));
            let list = bindings.entry(container).or_insert_with(|| json!([]));
            if let Some(a) = list.as_array_mut() {
                a.push(json!({"HostIp": host_ip, "HostPort": host_port}));
            }
        }

        let mut host = json!({
            "Binds": props.binds,
            "Mounts": props.mounts,
            "Tmpfs": props.tmpfs,
            "PortBindings": bindings,
            "CapAdd": props.cap_add,
            "CapDrop": props.cap_drop,
            "ExtraHosts": props.extra_hosts,
            "Dns": props.dns,
            "Privileged": props.privileged,
            "ReadonlyRootfs": props.read_only,
        });
        if props.init_process {
            host["Init"] = json!(true);
        }
        if let Some(m) = &props.memory {
            host["Memory"] = json!(m.bytes()?);
        }
        if let Some(c) = props.cpus {
            host["NanoCpus"] = json!((c * 1e9) as i64);
        }
        if let Some(r) = &props.restart_policy {
            let (name, count) = properties::parse_restart_policy(r)?;
            host["RestartPolicy"] = json!({"Name": name, "MaximumRetryCount": count});
        }

        let mut body = json!({
            "Image": props.image,
            "Labels": labels,
            "ExposedPorts": exposed,
            "Tty": props.tty,
            "HostConfig": host,
        });
        let fields = [
            ("Cmd", cmd.map(|c| json!(c))),
            ("Entrypoint", entrypoint.map(|e| json!(e))),
            ("Env", props.env.as_ref().map(|e| json!(e.to_list()))),
            ("WorkingDir", props.working_dir.as_ref().map(|w| json!(w))),
            ("User", props.user.as_ref().map(|u| json!(u))),
            ("Hostname", props.hostname.as_ref().map(|h| json!(h))),
            ("StopTimeout", props.stop_timeout.map(|t| json!(t))),
            ("StopSignal", props.stop_signal.as_ref().map(|s| json!(s))),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                body[k] = v;
            }
        }
        if let Some(h) = &props.healthcheck {
            let mut hc = json!({"Test": h.test});
            for (k, d) in [
                ("Interval", &h.interval),
                ("Timeout", &h.timeout),
                ("StartPeriod", &h.start_period),
            ] {
                if let Some(d) = d {
                    hc[k] = json!(properties::parse_duration_ns(
                        &format!("Healthcheck.{k}"),
                        d
                    )?);
                }
            }
            if let Some(r) = h.retries {
                hc["Retries"] = json!(r);
            }
            body["Healthcheck"] = hc;
        }
        if let Some(net) = &props.network {
            body["HostConfig"]["NetworkMode"] = json!(net);
            let mut endpoint = json!({});
            if !props.network_aliases.is_empty() {
                endpoint["Aliases"] = json!(props.network_aliases);
            }
            if let Some(l) = &spec.logical_id {
                match self.static_ip(props, l).await? {
                    Some(IpAddr::V4(ip)) => {
                        endpoint["IPAMConfig"] = json!({"IPv4Address": ip.to_string()})
                    }
                    Some(IpAddr::V6(ip)) => {
                        endpoint["IPAMConfig"] = json!({"IPv6Address": ip.to_string()})
                    }
                    None => {}
                }
            }
            body["NetworkingConfig"] = json!({"EndpointsConfig": {net.as_str(): endpoint}});
        } else if let Some(l) = &spec.logical_id {
            // Same error as with a network, for an IP-shaped logical ID without one.
            self.static_ip(props, l).await?;
        }
        Ok(body)
    }

    /// Removes a container we could not start, so a failing start leaves nothing behind.
    async fn remove_quietly(&self, id: &str) {
        let path = format!("/containers/{}?force=1&v=1", path_escape(id));
        if let Err(e) = self.call(Method::DELETE, &path, None).await {
            tracing::warn!(
                container = id,
                "cannot remove a container that failed to start: {e}"
            );
        }
    }

    /// `GET /containers/ID/json`, None when it is gone.
    async fn inspect_container(&self, id: &str) -> Result<Option<ContainerInspect>> {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/containers/{}/json", path_escape(id)),
                None,
            )
            .await?;
        match status {
            200 => parse(&body, "container inspect").map(Some),
            404 => Ok(None),
            _ => Err(self.engine_error(&format!("inspecting container {id}"), status, &body)),
        }
    }
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
        let path = format!("/containers/create?name={}", query_escape(&name));
        let (status, reply) = self.call(Method::POST, &path, Some(&body)).await?;
        let id = match status {
            201 | 200 => parse::<Created>(&reply, "container create")?.id,
            404 if engine_message(&reply).contains("image") => {
                // Logged here too: the count of these lines is how a storm would show.
                tracing::info!(image = %props.image, container = %name, "provision refused: image not found");
                return Err(image_missing(&props.image));
            }
            409 => {
                return Err(Error::conflict(format!(
                    "a container named '{name}' already exists ({}); remove it or give the instance another logical ID",
                    engine_message(&reply)
                )))
            }
            _ => return Err(self.engine_error(&format!("creating container {name}"), status, &reply)),
        };
        let (status, reply) = self
            .call(Method::POST, &format!("/containers/{id}/start"), None)
            .await?;
        if !matches!(status, 204 | 304) {
            let err = self.engine_error(&format!("starting container {name}"), status, &reply);
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
        let have = c.config.labels.unwrap_or_default();
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
        let escaped = path_escape(id);
        // No `t`: the engine uses the container's own StopTimeout (the properties' StopTimeout).
        let (status, body) = self
            .call(Method::POST, &format!("/containers/{escaped}/stop"), None)
            .await?;
        match status {
            204 | 304 => {}
            404 => return Err(Error::not_found(format!("no container {id}"))),
            _ => return Err(self.engine_error(&format!("stopping container {id}"), status, &body)),
        }
        let (status, body) = self
            .call(
                Method::DELETE,
                &format!("/containers/{escaped}?force=1&v=1"),
                None,
            )
            .await?;
        match status {
            // 404: removed by someone else since the stop; 409: a removal is already under way.
            204 | 404 => Ok(()),
            409 if engine_message(&body).contains("in progress") => Ok(()),
            _ => Err(self.engine_error(&format!("removing container {id}"), status, &body)),
        }
    }

    async fn describe_instances(&self, tags: &Tags, properties: bool) -> Result<Vec<Description>> {
        let mut labels = vec![format!("{MARKER_LABEL}=1")];
        labels.extend(tags.iter().map(|(k, v)| format!("{k}={v}")));
        let filters = json!({"label": labels}).to_string();
        let path = format!("/containers/json?all=1&filters={}", query_escape(&filters));
        let (status, body) = self.call(Method::GET, &path, None).await?;
        if status != 200 {
            // Never "no instances" on an engine error: the controller would re-create everything.
            return Err(Error::unavailable(format!(
                "listing containers: the engine answered {status}: {}",
                engine_message(&body)
            )));
        }
        let listed: Vec<ListedContainer> = parse(&body, "container list")?;
        let mut out: Vec<Description> = listed
            .into_iter()
            .map(|c| {
                let mut tags = c.labels.unwrap_or_default();
                tags.remove(MARKER_LABEL);
                Description {
                    id: c.id,
                    logical_id: tags.get(LOGICAL_ID_LABEL).cloned(),
                    tags,
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
                    out[i].properties = Some(c.state_properties());
                }
            }
            // A container removed between the list and its inspect has no properties: drop it.
            out.retain(|d| d.properties.is_some());
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

fn image_missing(image: &str) -> Error {
    Error::invalid(format!(
        "image {image} not found on the engine; build or pull it first"
    ))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        Error::internal(format!(
            "the engine's {what} answer is not what we expect: {e}"
        ))
    })
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
        .config
        .iter()
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

/// Percent-encodes everything but unreserved characters (for a query value).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Like `query_escape` but keeps `/` and `:` (image references `registry:5000/a/b:tag` are path
/// segments the engine's router matches as they are).
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

// The engine's answers: only what we read, every field tolerant of absence.

#[derive(Deserialize)]
struct Created {
    #[serde(rename = "Id")]
    id: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ImageInspect {
    #[serde(default)]
    config: ImageConfig,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ImageConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct NetworkInspect {
    #[serde(default, rename = "IPAM")]
    ipam: Ipam,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Ipam {
    #[serde(default, deserialize_with = "null_default")]
    config: Vec<IpamConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct IpamConfig {
    #[serde(default)]
    subnet: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedContainer {
    id: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ContainerInspect {
    #[serde(default)]
    name: String,
    #[serde(default)]
    state: ContainerState,
    #[serde(default)]
    config: ContainerConfig,
    #[serde(default)]
    restart_count: u64,
    #[serde(default)]
    network_settings: NetworkSettings,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    image: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ContainerState {
    #[serde(default)]
    status: String,
    #[serde(default)]
    running: bool,
    #[serde(default)]
    exit_code: i64,
    #[serde(default)]
    error: String,
    #[serde(default)]
    started_at: String,
    #[serde(default)]
    finished_at: String,
    #[serde(default)]
    health: Option<HealthState>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct HealthState {
    #[serde(default)]
    status: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct NetworkSettings {
    #[serde(default, deserialize_with = "null_default")]
    networks: BTreeMap<String, Endpoint>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Endpoint {
    #[serde(default, rename = "IPAddress")]
    ip_address: String,
}

/// What `DescribeInstances` with `properties` says about a container.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct StateProperties<'a> {
    name: &'a str,
    image: &'a str,
    /// `created`, `running`, `restarting`, `exited`, `paused`, `dead`.
    state: &'a str,
    running: bool,
    exit_code: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
    /// Docker's health status (`starting`, `healthy`, `unhealthy`), `none` without a healthcheck.
    health: &'a str,
    started_at: &'a str,
    finished_at: &'a str,
    restart_count: u64,
    /// Network name → the container's address on it.
    #[serde(rename = "IPAddresses")]
    ip_addresses: BTreeMap<&'a str, &'a str>,
}

impl ContainerInspect {
    fn state_properties(&self) -> Value {
        let s = &self.state;
        let p = StateProperties {
            name: self.name.trim_start_matches('/'),
            image: &self.config.image,
            state: &s.status,
            running: s.running,
            exit_code: s.exit_code,
            error: &s.error,
            health: s
                .health
                .as_ref()
                .map(|h| h.status.as_str())
                .unwrap_or("none"),
            started_at: &s.started_at,
            finished_at: &s.finished_at,
            restart_count: self.restart_count,
            ip_addresses: self
                .network_settings
                .networks
                .iter()
                .filter(|(_, e)| !e.ip_address.is_empty())
                .map(|(n, e)| (n.as_str(), e.ip_address.as_str()))
                .collect(),
        };
        serde_json::to_value(p).unwrap_or(Value::Null)
    }
}

fn null_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn escapes() {
        assert_eq!(
            query_escape(r#"{"label":["a=b"]}"#),
            "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D"
        );
        assert_eq!(path_escape("reg:5000/a/b:1"), "reg:5000/a/b:1");
    }
}
