//! `flavor-zookeeper`: each instance is a member of a ZooKeeper ensemble.
//!
//! A ZooKeeper ensemble is a fixed set of members, each known to all the others by address and
//! `myid`, so the group must allocate **pets**: `Allocation.LogicalIDs` lists the members' IPv4
//! addresses (the instance plugin gives each instance its logical ID as address, e.g.
//! `instance-docker` on a user-defined network). A member's `myid` is the 1-based position of its
//! address in that list, so **the order is the members' identity**: append new members, never
//! reorder.
//!
//! Properties, all optional (unknown fields are refused, so a typo is an error):
//!
//! ```json
//! {"ClientPort": 2181, "PeerPort": 2888, "ElectionPort": 3888,
//!  "TickTime": 2000, "InitLimit": 10, "SyncLimit": 5,
//!  "DataDir": "/var/lib/zookeeper", "ConfDir": "/etc/zookeeper/conf",
//!  "Java": "java", "JvmFlags": ["-Xmx256m"], "ClassPath": "",
//!  "Config": {"autopurge.purgeInterval": "24"}}
//! ```
//!
//! Prepare: the instance's `Init` becomes a shell script that writes `<ConfDir>/zoo.cfg` (every
//! member as `server.N=<ip>:<PeerPort>:<ElectionPort>`, the four-letter words `ruok,srvr,stat,mntr`
//! enabled) and `<DataDir>/myid`, then `exec`s `QuorumPeerMain` in the foreground (so ZooKeeper is
//! the container's main process and its logs are the container's). The class path is `ClassPath`
//! when set, else the image's `$ZOO_CLASSPATH` (set by `make zk-image`), else Debian's jar paths.
//! Tags: `zookeeper.myid` and `zookeeper.members` (the ensemble's size, which Healthy needs).
//!
//! Healthy: a TCP connection to `<logical ID>:<ClientPort>` (1 s for the whole exchange), `srvr`,
//! and its `Mode:` line. `leader`/`follower` → healthy (`standalone` only in a 1-member ensemble);
//! not reachable, or "not currently serving requests" (no quorum yet) → unknown; any other answer →
//! unhealthy. When the description carries instance-docker's properties, a container that has
//! exited or died is unhealthy at once (it will never answer). A server that refuses `srvr` (a
//! config not made here) is asked `ruok` instead; `imok` is then taken as healthy.
//!
//! Drain does nothing but log: see [`ZooKeeperFlavor::drain`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use infrakit_sdk::spi::backend::BackendState;
use infrakit_sdk::spi::flavor::{AllocationMethod, FlavorPlugin, Health, Index};
use infrakit_sdk::spi::instance::{Description, Spec};
use infrakit_sdk::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Tag holding a member's `myid`.
pub const TAG_MYID: &str = "zookeeper.myid";
/// Tag holding the number of members in the ensemble (whether `standalone` is right).
pub const TAG_MEMBERS: &str = "zookeeper.members";
/// The four-letter words the generated config enables (`srvr` and `ruok` for Healthy; `stat` and
/// `mntr` for people and monitoring).
pub const FOUR_LETTER_WORDS: &str = "ruok,srvr,stat,mntr";
/// The whole health exchange (connect, ask, read) must fit in this: a member that takes longer is
/// in no state to serve clients, and the controller checks many members per pass.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// ZooKeeper's documented range for `myid` is 1..=255.
const MAX_MEMBERS: usize = 255;
/// An answer to a four-letter word is a few hundred bytes; more is not ZooKeeper.
const MAX_ANSWER: u64 = 64 * 1024;
/// Debian's jars (libzookeeper-java's manifest names the other dependencies; logging is separate).
const DEBIAN_CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:\
/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar";
/// Config keys the flavor writes itself; `Config` may not set them (each has its own property).
const OWN_KEYS: [(&str, &str); 8] = [
    ("tickTime", "TickTime"),
    ("initLimit", "InitLimit"),
    ("syncLimit", "SyncLimit"),
    ("dataDir", "DataDir"),
    ("clientPort", "ClientPort"),
    ("4lw.commands.whitelist", "(fixed: Healthy needs srvr)"),
    ("standaloneEnabled", "(derived from the number of members)"),
    ("server.", "Allocation.LogicalIDs"),
];

fn default_client_port() -> u16 {
    2181
}
fn default_peer_port() -> u16 {
    2888
}
fn default_election_port() -> u16 {
    3888
}
fn default_tick_time() -> u32 {
    2000
}
fn default_init_limit() -> u32 {
    10
}
fn default_sync_limit() -> u32 {
    5
}
fn default_data_dir() -> String {
    "/var/lib/zookeeper".into()
}
fn default_conf_dir() -> String {
    "/etc/zookeeper/conf".into()
}
fn default_java() -> String {
    "java".into()
}

/// The zookeeper flavor's properties (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ZooKeeperProperties {
    /// Clients (and Healthy) connect here.
    #[serde(default = "default_client_port")]
    pub client_port: u16,
    /// Followers connect to the leader here.
    #[serde(default = "default_peer_port")]
    pub peer_port: u16,
    /// Leader election.
    #[serde(default = "default_election_port")]
    pub election_port: u16,
    /// ZooKeeper's time unit, in milliseconds.
    #[serde(default = "default_tick_time")]
    pub tick_time: u32,
    /// Ticks a follower may take to connect and sync to the leader.
    #[serde(default = "default_init_limit")]
    pub init_limit: u32,
    /// Ticks a follower may lag behind the leader.
    #[serde(default = "default_sync_limit")]
    pub sync_limit: u32,
    /// Snapshots, logs and `myid` (mount a volume here to keep data across re-creation).
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
    /// Where `zoo.cfg` is written.
    #[serde(default = "default_conf_dir")]
    pub conf_dir: String,
    /// The java command.
    #[serde(default = "default_java")]
    pub java: String,
    /// Extra JVM arguments, one per element (e.g. `["-Xmx256m"]`).
    #[serde(default)]
    pub jvm_flags: Vec<String>,
    /// The class path; empty: the image's `$ZOO_CLASSPATH`, else Debian's jar paths.
    #[serde(default)]
    pub class_path: String,
    /// More `zoo.cfg` settings, written as `key=value` lines (sorted by key).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl Default for ZooKeeperProperties {
    fn default() -> Self {
        ZooKeeperProperties {
            client_port: default_client_port(),
            peer_port: default_peer_port(),
            election_port: default_election_port(),
            tick_time: default_tick_time(),
            init_limit: default_init_limit(),
            sync_limit: default_sync_limit(),
            data_dir: default_data_dir(),
            conf_dir: default_conf_dir(),
            java: default_java(),
            jvm_flags: Vec::new(),
            class_path: String::new(),
            config: BTreeMap::new(),
        }
    }
}

fn invalid(msg: impl std::fmt::Display) -> Error {
    Error::invalid(format!("flavor-zookeeper: {msg}"))
}

impl ZooKeeperProperties {
    /// Parses and checks a group's `Flavor.Properties`; `null` means all defaults.
    pub fn parse(properties: &Value) -> Result<ZooKeeperProperties> {
        let p = if properties.is_null() {
            ZooKeeperProperties::default()
        } else {
            ZooKeeperProperties::deserialize(properties).map_err(|e| {
                // serde_json names an unknown field but not the field whose value has the wrong
                // type: find it by reading the fields one at a time.
                let field = properties.as_object().and_then(|o| {
                    o.iter().find_map(|(k, v)| {
                        let one = Value::Object([(k.clone(), v.clone())].into_iter().collect());
                        ZooKeeperProperties::deserialize(&one).err().map(|_| k)
                    })
                });
                match field {
                    Some(k) => invalid(format_args!("properties: {k}: {e}")),
                    None => invalid(format_args!("properties: {e}")),
                }
            })?
        };
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<()> {
        let ports = [
            ("ClientPort", self.client_port),
            ("PeerPort", self.peer_port),
            ("ElectionPort", self.election_port),
        ];
        for (i, (name, port)) in ports.iter().enumerate() {
            if *port == 0 {
                return Err(invalid(format_args!("{name} must not be 0")));
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                return Err(invalid(format_args!(
                    "{name} and {other} are both {port}; each needs a port of its own"
                )));
            }
        }
        for (name, value) in [
            ("TickTime", self.tick_time),
            ("InitLimit", self.init_limit),
            ("SyncLimit", self.sync_limit),
        ] {
            if value == 0 {
                return Err(invalid(format_args!("{name} must be at least 1")));
            }
        }
        for (name, dir) in [("DataDir", &self.data_dir), ("ConfDir", &self.conf_dir)] {
            if !dir.starts_with('/') {
                return Err(invalid(format_args!(
                    "{name} '{dir}' must be an absolute path"
                )));
            }
            no_newline(name, dir)?;
        }
        if self.java.is_empty() {
            return Err(invalid("Java must not be empty"));
        }
        no_newline("Java", &self.java)?;
        no_newline("ClassPath", &self.class_path)?;
        for flag in &self.jvm_flags {
            no_newline("JvmFlags", flag)?;
        }
        for (key, value) in &self.config {
            let bad_key = key.is_empty()
                || key.contains(['=', '\n', '\r', '#'])
                || key.trim() != key.as_str();
            if bad_key {
                return Err(invalid(format_args!(
                    "Config key '{key}' is not a zoo.cfg key (no '=', '#', spaces or newlines)"
                )));
            }
            no_newline(&format!("Config value of '{key}'"), value)?;
            let owned = OWN_KEYS
                .iter()
                .find(|(own, _)| key == own || (own.ends_with('.') && key.starts_with(own)));
            if let Some((_, instead)) = owned {
                return Err(invalid(format_args!(
                    "Config may not set '{key}': the flavor writes it; use {instead}"
                )));
            }
        }
        Ok(())
    }
}

fn no_newline(name: &str, value: &str) -> Result<()> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(invalid(format_args!("{name} must be one line: {value:?}")));
    }
    Ok(())
}

/// The members' addresses, in `myid` order, after checking the allocation is a valid ensemble.
pub fn members(allocation: &AllocationMethod) -> Result<Vec<Ipv4Addr>> {
    if allocation.logical_ids.is_empty() {
        return Err(invalid(format_args!(
            "a ZooKeeper ensemble needs pets: list the members' IPv4 addresses in \
             Allocation.LogicalIDs (each member's address and myid are in every member's config, \
             so members cannot be anonymous cattle{})",
            if allocation.size > 0 {
                format!("; got Size {}", allocation.size)
            } else {
                String::new()
            }
        )));
    }
    if allocation.logical_ids.len() > MAX_MEMBERS {
        return Err(invalid(format_args!(
            "{} members: ZooKeeper's myid goes from 1 to {MAX_MEMBERS}",
            allocation.logical_ids.len()
        )));
    }
    let mut out: Vec<Ipv4Addr> = Vec::with_capacity(allocation.logical_ids.len());
    for id in &allocation.logical_ids {
        let ip: Ipv4Addr = id.parse().map_err(|_| {
            invalid(format_args!(
                "logical ID '{id}' is not an IPv4 address; each member's logical ID is its \
                 address (e.g. 172.30.0.11)"
            ))
        })?;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return Err(invalid(format_args!(
                "logical ID '{id}' cannot be a member's address"
            )));
        }
        if out.contains(&ip) {
            return Err(invalid(format_args!(
                "logical ID '{id}' is listed twice; each member needs an address of its own"
            )));
        }
        out.push(ip);
    }
    Ok(out)
}

/// `s` as one shell word (single quotes; a `'` inside becomes `'\''`).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `zoo.cfg` text for an ensemble.
pub fn zoo_cfg(p: &ZooKeeperProperties, members: &[Ipv4Addr]) -> String {
    let mut cfg = format!(
        "tickTime={}\ninitLimit={}\nsyncLimit={}\ndataDir={}\nclientPort={}\n\
         4lw.commands.whitelist={FOUR_LETTER_WORDS}\n",
        p.tick_time, p.init_limit, p.sync_limit, p.data_dir, p.client_port
    );
    // With more than one member, a member must never decide to serve alone (split brain).
    if members.len() > 1 {
        cfg.push_str("standaloneEnabled=false\n");
    }
    for (key, value) in &p.config {
        cfg.push_str(&format!("{key}={value}\n"));
    }
    for (i, ip) in members.iter().enumerate() {
        cfg.push_str(&format!(
            "server.{}={ip}:{}:{}\n",
            i + 1,
            p.peer_port,
            p.election_port
        ));
    }
    cfg
}

/// The heredoc terminator; no zoo.cfg line can equal it (every line is `key=value`).
const HEREDOC_END: &str = "INFRAKIT_ZOO_CFG";

/// The boot script of member `myid`: writes zoo.cfg and myid, then runs the server in the
/// foreground as the process that replaces the shell.
pub fn init_script(p: &ZooKeeperProperties, members: &[Ipv4Addr], myid: usize) -> String {
    let cfg_path = format!("{}/zoo.cfg", p.conf_dir.trim_end_matches('/'));
    let myid_path = format!("{}/myid", p.data_dir.trim_end_matches('/'));
    let class_path = if p.class_path.is_empty() {
        // The image's own class path when it has one (ours does), Debian's otherwise.
        format!("\"${{ZOO_CLASSPATH:-{DEBIAN_CLASSPATH}}}\"")
    } else {
        shell_quote(&p.class_path)
    };
    let mut java = vec![shell_quote(&p.java)];
    java.extend(p.jvm_flags.iter().map(|f| shell_quote(f)));
    java.extend([
        "-cp".to_string(),
        class_path,
        "org.apache.zookeeper.server.quorum.QuorumPeerMain".to_string(),
        shell_quote(&cfg_path),
    ]);
    format!(
        "# flavor-zookeeper: member {myid} of {n}\n\
         set -e\n\
         mkdir -p {conf} {data}\n\
         cat > {cfg} <<'{HEREDOC_END}'\n{body}{HEREDOC_END}\n\
         echo {myid} > {myid_file}\n\
         exec {java}",
        n = members.len(),
        conf = shell_quote(&p.conf_dir),
        data = shell_quote(&p.data_dir),
        cfg = shell_quote(&cfg_path),
        body = zoo_cfg(p, members),
        myid_file = shell_quote(&myid_path),
        java = java.join(" "),
    )
}

/// The zookeeper flavor. It has no state; one value serves every group.
#[derive(Debug, Clone)]
pub struct ZooKeeperFlavor {
    timeout: Duration,
}

impl Default for ZooKeeperFlavor {
    fn default() -> Self {
        ZooKeeperFlavor::new()
    }
}

impl ZooKeeperFlavor {
    pub fn new() -> ZooKeeperFlavor {
        ZooKeeperFlavor {
            timeout: HEALTH_TIMEOUT,
        }
    }

    /// The same flavor with another limit on one health exchange.
    pub fn with_timeout(timeout: Duration) -> ZooKeeperFlavor {
        ZooKeeperFlavor { timeout }
    }
}

/// Why the answer of a member was read the way it was (for the log and the tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub health: Health,
    pub reason: String,
}

fn verdict(health: Health, reason: impl Into<String>) -> Verdict {
    Verdict {
        health,
        reason: reason.into(),
    }
}

/// Sends a four-letter word and reads the answer until the server closes the connection.
async fn ask(addr: SocketAddr, word: &str, limit: Duration) -> std::io::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(word.as_bytes()).await?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {limit:?}"),
        )),
    }
}

/// The `Mode:` value of a `srvr`/`stat` answer.
fn mode_of(answer: &str) -> Option<&str> {
    answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("Mode:"))
        .map(str::trim)
}

/// Reads a `srvr` answer. `None`: the answer says nothing about the mode (ask `ruok` instead).
pub fn judge_srvr(answer: &str, members: Option<usize>) -> Option<Verdict> {
    if answer.contains("not currently serving requests") {
        // Running, but without a quorum yet (starting, or electing a leader).
        return Some(verdict(Health::Unknown, "not serving requests yet"));
    }
    let mode = mode_of(answer)?;
    Some(match mode {
        "leader" | "follower" => verdict(Health::Healthy, mode),
        "standalone" if members == Some(1) => verdict(Health::Healthy, mode),
        "standalone" => verdict(
            Health::Unhealthy,
            format!(
                "standalone, but the ensemble has {} members: it is serving alone",
                members.map_or_else(|| "several".to_string(), |n| n.to_string())
            ),
        ),
        other => verdict(Health::Unhealthy, format!("unexpected mode '{other}'")),
    })
}

/// What instance-docker's properties (when present) say about the container, if they settle it.
fn judge_container(properties: Option<&Value>) -> Option<Verdict> {
    let backend = BackendState::read(properties);
    let state = backend.state?;
    match state {
        // These never answer again by themselves; replacing them is the only way back.
        "exited" | "dead" => Some(verdict(
            Health::Unhealthy,
            format!(
                "container {state} (exit code {})",
                backend
                    .exit_code
                    .map_or_else(|| "?".to_string(), |c| c.to_string())
            ),
        )),
        _ => None,
    }
}

impl ZooKeeperFlavor {
    /// Judges one member at `addr`; see the module documentation for the rules.
    pub async fn check(&self, addr: SocketAddr, members: Option<usize>) -> Verdict {
        let srvr = match ask(addr, "srvr", self.timeout).await {
            Ok(answer) => answer,
            Err(e) => return verdict(Health::Unknown, format!("{addr}: {e}")),
        };
        if let Some(v) = judge_srvr(&srvr, members) {
            return v;
        }
        // No mode in the answer: srvr is not whitelisted (a config not made by this flavor), or
        // the server closed without a word. `ruok` says at least that it runs.
        match ask(addr, "ruok", self.timeout).await {
            Ok(answer) if answer.trim() == "imok" => {
                verdict(Health::Healthy, "imok (srvr gave no mode)")
            }
            Ok(answer) if answer.trim().is_empty() && srvr.trim().is_empty() => {
                verdict(Health::Unknown, format!("{addr}: closed without answering"))
            }
            Ok(answer) => verdict(
                Health::Unhealthy,
                format!(
                    "{addr} does not answer like ZooKeeper: srvr {:?}, ruok {:?}",
                    clip(&srvr),
                    clip(&answer)
                ),
            ),
            Err(e) => verdict(Health::Unknown, format!("{addr}: {e}")),
        }
    }
}

fn clip(s: &str) -> &str {
    let s = s.trim();
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The member's address: its logical ID (instance plugins copy it from the
/// `infrakit.logical_id` tag; the tag itself is the fallback).
fn member_ip(instance: &Description) -> Result<Ipv4Addr> {
    let id = instance
        .logical_id
        .as_deref()
        .or_else(|| {
            instance
                .tags
                .get(infrakit_sdk::spi::tags::LOGICAL_ID)
                .map(String::as_str)
        })
        .ok_or_else(|| {
            invalid(format_args!(
                "instance {} has no logical ID: cannot tell which member it is",
                instance.id
            ))
        })?;
    id.parse().map_err(|_| {
        invalid(format_args!(
            "instance {}'s logical ID '{id}' is not an IPv4 address",
            instance.id
        ))
    })
}

#[async_trait]
impl FlavorPlugin for ZooKeeperFlavor {
    async fn validate(&self, properties: &Value, allocation: &AllocationMethod) -> Result<()> {
        ZooKeeperProperties::parse(properties)?;
        members(allocation)?;
        Ok(())
    }

    async fn prepare(
        &self,
        properties: &Value,
        mut spec: Spec,
        allocation: &AllocationMethod,
        _index: &Index,
    ) -> Result<Spec> {
        let p = ZooKeeperProperties::parse(properties)?;
        let members = members(allocation)?;
        let id = spec.logical_id.as_deref().ok_or_else(|| {
            invalid(
                "the instance spec has no LogicalID: each member is one of the group's LogicalIDs",
            )
        })?;
        let ip: Ipv4Addr = id
            .parse()
            .map_err(|_| invalid(format_args!("LogicalID '{id}' is not an IPv4 address")))?;
        let myid = members.iter().position(|m| *m == ip).ok_or_else(|| {
            invalid(format_args!(
                "LogicalID '{id}' is not one of the allocation's LogicalIDs"
            ))
        })? + 1;
        let script = init_script(&p, &members, myid);
        // An existing init runs first: ours ends by exec'ing the server, nothing after it would run.
        spec.init = if spec.init.is_empty() {
            script
        } else {
            format!("{}\n{script}", spec.init)
        };
        spec.tags.insert(TAG_MYID.into(), myid.to_string());
        spec.tags
            .insert(TAG_MEMBERS.into(), members.len().to_string());
        Ok(spec)
    }

    async fn healthy(&self, properties: &Value, instance: &Description) -> Result<Health> {
        let p = ZooKeeperProperties::parse(properties)?;
        if let Some(v) = judge_container(instance.properties.as_ref()) {
            tracing::debug!(instance = %instance.id, health = %v.health, "{}", v.reason);
            return Ok(v.health);
        }
        let ip = member_ip(instance)?;
        let members = instance
            .tags
            .get(TAG_MEMBERS)
            .and_then(|n| n.parse::<usize>().ok());
        let v = self
            .check(SocketAddr::from((ip, p.client_port)), members)
            .await;
        tracing::debug!(instance = %instance.id, health = %v.health, "{}", v.reason);
        Ok(v.health)
    }

    /// Nothing to do but log. A member leaving is what a ZooKeeper ensemble is built to survive:
    /// the others keep serving while a majority remains, and the member comes back under the same
    /// address and myid (pets), syncing from the leader. ZooKeeper has no "leave" for a static
    /// ensemble; dynamic reconfiguration (`reconfig -remove`) would shrink the ensemble for good,
    /// which is wrong for a member about to be re-created, and 3.8 cannot hand leadership over.
    /// Keeping a majority up during a rolling update is the group controller's job: it replaces one
    /// member at a time and waits until the new one is healthy (a leader or follower again).
    async fn drain(&self, _properties: &Value, instance: &Description) -> Result<()> {
        tracing::info!(
            instance = %instance.id,
            member = instance.logical_id.as_deref().unwrap_or("?"),
            myid = instance.tags.get(TAG_MYID).map(String::as_str).unwrap_or("?"),
            "zookeeper member leaving; the rest of the ensemble keeps the quorum"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infrakit_sdk::ErrorKind;
    use serde_json::json;
    use std::net::IpAddr;
    use tokio::net::TcpListener;

    fn pets(ids: &[&str]) -> AllocationMethod {
        AllocationMethod {
            size: 0,
            logical_ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    const ENSEMBLE: [&str; 3] = ["172.30.0.11", "172.30.0.12", "172.30.0.13"];

    async fn validate(props: Value, alloc: AllocationMethod) -> Result<()> {
        ZooKeeperFlavor::new().validate(&props, &alloc).await
    }

    #[tokio::test]
    async fn validate_needs_pets_with_ipv4_addresses() {
        validate(Value::Null, pets(&ENSEMBLE)).await.unwrap();
        let cattle = AllocationMethod {
            size: 3,
            logical_ids: vec![],
        };
        let err = validate(Value::Null, cattle).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(err.message.contains("needs pets"), "{err}");
        assert!(err.message.contains("Size 3"), "{err}");
        let err = validate(Value::Null, pets(&["172.30.0.11", "zk-2"]))
            .await
            .unwrap_err();
        assert!(
            err.message.contains("'zk-2' is not an IPv4 address"),
            "{err}"
        );
        let err = validate(Value::Null, pets(&["fd00::1"])).await.unwrap_err();
        assert!(err.message.contains("not an IPv4"), "{err}");
        let err = validate(Value::Null, pets(&["10.0.0.1", "10.0.0.1"]))
            .await
            .unwrap_err();
        assert!(err.message.contains("listed twice"), "{err}");
        let err = validate(Value::Null, pets(&["0.0.0.0"])).await.unwrap_err();
        assert!(err.message.contains("cannot be a member"), "{err}");
    }

    #[tokio::test]
    async fn validate_refuses_bad_properties_by_name() {
        let alloc = pets(&ENSEMBLE);
        let cases = [
            (json!({"ClientPorts": 1}), "ClientPorts"),
            (json!({"ClientPort": "x"}), "ClientPort"),
            (
                json!({"PeerPort": 3888}),
                "ElectionPort and PeerPort are both 3888",
            ),
            (json!({"ClientPort": 0}), "ClientPort must not be 0"),
            (json!({"TickTime": 0}), "TickTime must be at least 1"),
            (json!({"DataDir": "data"}), "absolute path"),
            (json!({"JvmFlags": ["-Xmx1g\nrm -rf /"]}), "one line"),
            (json!({"Config": {"clientPort": "1"}}), "use ClientPort"),
            (
                json!({"Config": {"server.4": "x"}}),
                "Allocation.LogicalIDs",
            ),
            (json!({"Config": {"a=b": "1"}}), "not a zoo.cfg key"),
        ];
        for (props, needle) in cases {
            let err = validate(props.clone(), alloc.clone()).await.unwrap_err();
            assert_eq!(err.kind, ErrorKind::Invalid, "{props}");
            assert!(err.message.starts_with("flavor-zookeeper: "), "{err}");
            assert!(err.message.contains(needle), "{props}: {err}");
        }
        validate(
            json!({"ClientPort": 2182, "JvmFlags": ["-Xmx256m"],
                   "Config": {"autopurge.purgeInterval": "24"}}),
            alloc,
        )
        .await
        .unwrap();
    }

    async fn prepare_member(props: Value, id: &str, init: &str) -> Result<Spec> {
        let spec = Spec {
            logical_id: Some(id.to_string()),
            init: init.to_string(),
            ..Spec::default()
        };
        ZooKeeperFlavor::new()
            .prepare(&props, spec, &pets(&ENSEMBLE), &Index::default())
            .await
    }

    #[tokio::test]
    async fn prepare_gives_myid_by_position_and_lists_every_member() {
        let spec = prepare_member(Value::Null, "172.30.0.12", "")
            .await
            .unwrap();
        assert_eq!(spec.tags.get(TAG_MYID).map(String::as_str), Some("2"));
        assert_eq!(spec.tags.get(TAG_MEMBERS).map(String::as_str), Some("3"));
        let init = &spec.init;
        assert!(
            init.starts_with("# flavor-zookeeper: member 2 of 3\n"),
            "{init}"
        );
        for line in [
            "server.1=172.30.0.11:2888:3888",
            "server.2=172.30.0.12:2888:3888",
            "server.3=172.30.0.13:2888:3888",
            "4lw.commands.whitelist=ruok,srvr,stat,mntr",
            "clientPort=2181",
            "dataDir=/var/lib/zookeeper",
            "standaloneEnabled=false",
            "echo 2 > '/var/lib/zookeeper/myid'",
            "cat > '/etc/zookeeper/conf/zoo.cfg' <<'INFRAKIT_ZOO_CFG'",
        ] {
            assert!(
                init.lines().any(|l| l == line),
                "missing {line:?} in\n{init}"
            );
        }
        let last = init.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("exec 'java' -cp \"${ZOO_CLASSPATH:-"),
            "{last}"
        );
        assert!(
            last.ends_with(
                "org.apache.zookeeper.server.quorum.QuorumPeerMain '/etc/zookeeper/conf/zoo.cfg'"
            ),
            "{last}"
        );

        let first = prepare_member(Value::Null, "172.30.0.11", "echo before")
            .await
            .unwrap();
        assert_eq!(first.tags.get(TAG_MYID).map(String::as_str), Some("1"));
        assert!(first
            .init
            .starts_with("echo before\n# flavor-zookeeper: member 1 of 3"));

        let err = prepare_member(Value::Null, "172.30.0.99", "")
            .await
            .unwrap_err();
        assert!(err.message.contains("not one of the allocation's"), "{err}");
        let no_id = ZooKeeperFlavor::new()
            .prepare(
                &Value::Null,
                Spec::default(),
                &pets(&ENSEMBLE),
                &Index::default(),
            )
            .await
            .unwrap_err();
        assert!(no_id.message.contains("no LogicalID"), "{no_id}");
    }

    #[tokio::test]
    async fn prepare_uses_properties_and_quotes_for_the_shell() {
        let props = json!({"ClientPort": 2182, "PeerPort": 2889, "ElectionPort": 3889,
                           "DataDir": "/data/it's", "JvmFlags": ["-Xmx256m", "-Dx=a b"],
                           "ClassPath": "/opt/zk/*", "Config": {"maxClientCnxns": "100"}});
        let spec = prepare_member(props, "172.30.0.13", "").await.unwrap();
        let init = &spec.init;
        assert!(
            init.contains("\nserver.3=172.30.0.13:2889:3889\n"),
            "{init}"
        );
        assert!(init.contains("\nclientPort=2182\n"), "{init}");
        assert!(init.contains("\nmaxClientCnxns=100\n"), "{init}");
        assert!(init.contains("echo 3 > '/data/it'\\''s/myid'"), "{init}");
        assert!(
            init.ends_with(
                "exec 'java' '-Xmx256m' '-Dx=a b' -cp '/opt/zk/*' \
                 org.apache.zookeeper.server.quorum.QuorumPeerMain '/etc/zookeeper/conf/zoo.cfg'"
            ),
            "{init}"
        );
    }

    #[tokio::test]
    async fn init_script_writes_the_files_a_shell_reads_back() {
        // Run the script for real with `java` replaced by `cat`: zoo.cfg and myid land where the
        // server is told to read them.
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        let data = dir.path().join("data with space");
        let props = json!({"ConfDir": conf, "DataDir": data, "Java": "cat",
                           "ClassPath": "/dev/null"});
        let spec = prepare_member(props, "172.30.0.11", "").await.unwrap();
        // Everything but the final exec (there is no java here): the files are what matters.
        let (script, exec) = spec.init.rsplit_once("\nexec ").unwrap();
        assert!(exec.starts_with("'cat' -cp '/dev/null' "), "{exec}");
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}\n{script}");
        let cfg = std::fs::read_to_string(conf.join("zoo.cfg")).unwrap();
        assert!(cfg.contains("server.1=172.30.0.11:2888:3888\n"), "{cfg}");
        assert!(cfg.ends_with("server.3=172.30.0.13:2888:3888\n"), "{cfg}");
        let myid = std::fs::read_to_string(data.join("myid")).unwrap();
        assert_eq!(myid, "1\n");
    }

    /// A fake member: answers each connection's four-letter word from `answers` and closes.
    async fn fake_member(
        ip: &str,
        port: u16,
        answers: &'static [(&'static str, &'static str)],
    ) -> Option<SocketAddr> {
        let addr = SocketAddr::new(ip.parse::<IpAddr>().ok()?, port);
        let listener = TcpListener::bind(addr).await.ok()?;
        let addr = listener.local_addr().ok()?;
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut word = [0u8; 4];
                if conn.read_exact(&mut word).await.is_err() {
                    continue;
                }
                let word = String::from_utf8_lossy(&word).into_owned();
                let answer = answers
                    .iter()
                    .find(|(w, _)| *w == word)
                    .map_or("", |(_, a)| a);
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        Some(addr)
    }

    fn srvr(mode: &str) -> String {
        format!(
            "Zookeeper version: 3.8.0-debian\nLatency min/avg/max: 0/0.0/0\nReceived: 3\n\
             Sent: 2\nConnections: 1\nOutstanding: 0\nZxid: 0x100000002\nMode: {mode}\n\
             Node count: 5\n"
        )
    }

    fn member(ip: &str, members: usize) -> Description {
        Description {
            id: format!("zk-{ip}"),
            logical_id: Some(ip.to_string()),
            tags: [(TAG_MEMBERS.to_string(), members.to_string())]
                .into_iter()
                .collect(),
            properties: None,
        }
    }

    async fn health(port: u16, d: &Description) -> Health {
        ZooKeeperFlavor::new()
            .healthy(&json!({"ClientPort": port}), d)
            .await
            .unwrap()
    }

    const NOT_SERVING: &str = "This ZooKeeper instance is not currently serving requests\n";
    const NOT_WHITELISTED: &str = "srvr is not executed because it is not in the whitelist.\n";

    #[tokio::test]
    async fn ensemble_members_are_judged_at_their_own_address() {
        let leader: &'static str = Box::leak(srvr("leader").into_boxed_str());
        let follower: &'static str = Box::leak(srvr("follower").into_boxed_str());
        let leaked = |a: &'static str| -> &'static [(&'static str, &'static str)] {
            Box::leak(vec![("srvr", a), ("ruok", "imok")].into_boxed_slice())
        };
        // One port on three loopback addresses, each answering as a different member: the flavor
        // must talk to each member's own logical ID. (Retry if the port is taken on another one.)
        for _ in 0..20 {
            let Some(first) = fake_member("127.0.0.11", 0, leaked(leader)).await else {
                continue;
            };
            let port = first.port();
            let (Some(_), Some(_)) = (
                fake_member("127.0.0.12", port, leaked(follower)).await,
                fake_member("127.0.0.13", port, leaked(NOT_SERVING)).await,
            ) else {
                continue;
            };
            assert_eq!(
                health(port, &member("127.0.0.11", 3)).await,
                Health::Healthy
            );
            assert_eq!(
                health(port, &member("127.0.0.12", 3)).await,
                Health::Healthy
            );
            assert_eq!(
                health(port, &member("127.0.0.13", 3)).await,
                Health::Unknown
            );
            // Nobody listens there: unknown, quickly.
            let started = std::time::Instant::now();
            assert_eq!(
                health(port, &member("127.0.0.14", 3)).await,
                Health::Unknown
            );
            assert!(started.elapsed() < Duration::from_secs(2));
            return;
        }
        panic!("no free port on 127.0.0.11-13");
    }

    #[tokio::test]
    async fn standalone_is_healthy_only_alone_and_odd_answers_are_unhealthy() {
        let standalone: &'static str = Box::leak(srvr("standalone").into_boxed_str());
        let observer: &'static str = Box::leak(srvr("observer").into_boxed_str());
        let a = fake_member("127.0.0.21", 0, Box::leak(Box::new([("srvr", standalone)])))
            .await
            .unwrap();
        assert_eq!(
            health(a.port(), &member("127.0.0.21", 1)).await,
            Health::Healthy
        );
        assert_eq!(
            health(a.port(), &member("127.0.0.21", 3)).await,
            Health::Unhealthy
        );
        let b = fake_member("127.0.0.22", 0, Box::leak(Box::new([("srvr", observer)])))
            .await
            .unwrap();
        assert_eq!(
            health(b.port(), &member("127.0.0.22", 3)).await,
            Health::Unhealthy
        );
        // Something else listening on the port (an HTTP server, say).
        let c = fake_member(
            "127.0.0.23",
            0,
            &[
                ("srvr", "HTTP/1.1 400 Bad Request\r\n\r\n"),
                ("ruok", "HTTP/1.1 400"),
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            health(c.port(), &member("127.0.0.23", 3)).await,
            Health::Unhealthy
        );
    }

    #[tokio::test]
    async fn without_srvr_ruok_decides() {
        let a = fake_member(
            "127.0.0.31",
            0,
            &[("srvr", NOT_WHITELISTED), ("ruok", "imok")],
        )
        .await
        .unwrap();
        assert_eq!(
            health(a.port(), &member("127.0.0.31", 3)).await,
            Health::Healthy
        );
        // Accepts and closes without a word: starting up, or not ZooKeeper: cannot tell.
        let b = fake_member("127.0.0.32", 0, &[]).await.unwrap();
        assert_eq!(
            health(b.port(), &member("127.0.0.32", 3)).await,
            Health::Unknown
        );
    }

    #[tokio::test]
    async fn a_member_that_never_answers_is_unknown_within_the_timeout() {
        // Accepts, reads, never answers, never closes.
        let listener = TcpListener::bind("127.0.0.41:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let flavor = ZooKeeperFlavor::with_timeout(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let h = flavor
            .healthy(&json!({"ClientPort": port}), &member("127.0.0.41", 3))
            .await
            .unwrap();
        assert_eq!(h, Health::Unknown);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn an_exited_container_is_unhealthy_without_asking() {
        let mut d = member("127.0.0.51", 3);
        d.properties = Some(json!({"State": "exited", "ExitCode": 1, "Running": false}));
        assert_eq!(health(2181, &d).await, Health::Unhealthy);
        // Running: the answer on the port decides (nobody there: unknown).
        d.properties = Some(json!({"State": "running", "Running": true}));
        assert_eq!(health(1, &d).await, Health::Unknown);
    }

    #[tokio::test]
    async fn health_needs_a_logical_id_and_drain_is_ok() {
        let flavor = ZooKeeperFlavor::new();
        let d = Description {
            id: "c1".into(),
            ..Description::default()
        };
        let err = flavor.healthy(&Value::Null, &d).await.unwrap_err();
        assert!(err.message.contains("no logical ID"), "{err}");
        flavor.drain(&Value::Null, &d).await.unwrap();
    }

    #[test]
    fn srvr_answers() {
        assert_eq!(
            judge_srvr(&srvr("leader"), Some(3)).map(|v| v.health),
            Some(Health::Healthy)
        );
        assert_eq!(judge_srvr(NOT_WHITELISTED, Some(3)), None);
        assert_eq!(
            judge_srvr(NOT_SERVING, Some(3)).map(|v| v.health),
            Some(Health::Unknown)
        );
        assert_eq!(
            judge_srvr(&srvr("standalone"), None).map(|v| v.health),
            Some(Health::Unhealthy)
        );
    }
}
