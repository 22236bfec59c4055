//! Clients for remote plugins. Each implements the same trait as a local plugin, so the group
//! controller (or flavor-combo) holds an `Arc<dyn FlavorPlugin>` and never knows the difference.
//!
//! At first use a client calls `Plugin.Activate` and checks that the plugin implements its interface
//! with the same major version; a mismatch is refused with a message naming both versions. A plugin
//! that answers `Plugin.Activate` with 404 or with a JSON-RPC reply is InfraKit v0.5's: the client
//! then asks v0.5's `Handshake.Implements` and speaks v0.5's protocol to it from then on
//! (see [`super::v05`]), behind the same traits.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::messages::*;
use super::transport::Transport;
use crate::spi::flavor::{AllocationMethod, FlavorPlugin, Health, Index};
use crate::spi::group::{
    CommitResult, EventBatch, GroupDescription, GroupPlugin, GroupSpec, UpdateCommand,
};
use crate::spi::instance::{
    Changes, Description, DestroyContext, InstanceId, InstancePlugin, Spec, Tags,
};
use crate::spi::{InterfaceSpec, FLAVOR, GROUP, INSTANCE};
use crate::{Error, ErrorKind, Result};

/// How long a call may take by default: long enough for a slow backend's provision.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a plugin listens and under which name it was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The plugin's name without the sub-type (`flavor-swarm`).
    pub name: String,
    /// The sub-type (`manager` in `flavor-swarm/manager`), empty for the default.
    pub sub_type: String,
    pub socket: PathBuf,
}

impl Endpoint {
    pub fn new(name: &str, socket: impl Into<PathBuf>) -> Endpoint {
        let (name, sub_type) = split_name(name);
        Endpoint {
            name: name.to_string(),
            sub_type: sub_type.to_string(),
            socket: socket.into(),
        }
    }

    /// `name/sub_type`, or just `name`.
    pub fn full_name(&self) -> String {
        if self.sub_type.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.name, self.sub_type)
        }
    }
}

/// Splits `flavor-swarm/manager` into (`flavor-swarm`, `manager`).
pub fn split_name(name: &str) -> (&str, &str) {
    name.split_once('/').unwrap_or((name, ""))
}

/// Which protocol a plugin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Protocol {
    /// Ours: Docker's plugin envelope, `POST /<Interface>.<Method>`.
    #[serde(rename = "infrakit")]
    Native,
    /// InfraKit v0.5's JSON-RPC 2.0 on `POST /`.
    #[serde(rename = "v0.5")]
    V05,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Native => "infrakit",
            Protocol::V05 => "v0.5",
        })
    }
}

/// A connection to one plugin socket, for one interface.
pub struct RpcClient {
    endpoint: Endpoint,
    interface: InterfaceSpec,
    transport: Arc<Transport>,
    /// Set once the plugin passed the interface check, to the protocol it passed it in.
    compatible: OnceCell<Protocol>,
}

impl RpcClient {
    pub fn new(endpoint: Endpoint, interface: InterfaceSpec) -> RpcClient {
        RpcClient::with_timeout(endpoint, interface, DEFAULT_TIMEOUT)
    }

    pub fn with_timeout(
        endpoint: Endpoint,
        interface: InterfaceSpec,
        timeout: Duration,
    ) -> RpcClient {
        let transport = Arc::new(Transport::new(&endpoint.socket, timeout));
        RpcClient {
            endpoint,
            interface,
            transport,
            compatible: OnceCell::new(),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn socket(&self) -> &Path {
        self.transport.socket()
    }

    /// Calls `Plugin.Activate` and returns what the plugin implements.
    pub async fn activate(&self) -> Result<Vec<String>> {
        let r: ActivateResponse = self
            .post("Plugin.Activate", Bytes::from_static(b"{}"))
            .await?;
        Ok(r.implements)
    }

    /// Which protocol the plugin speaks and what it implements, in that protocol's words
    /// (`infrakit.instance/1.0`, or v0.5's `Instance/0.5.0`): `Plugin.Activate`, and v0.5's
    /// `Handshake.Implements` when the plugin does not know Activate.
    pub async fn identify(&self) -> Result<(Protocol, Vec<String>)> {
        let (status, reply) = self
            .transport
            .post("Plugin.Activate", Bytes::from_static(b"{}"))
            .await?;
        let native = status == 200 && !super::v05::client::is_json_rpc(&reply);
        if native || (status != 404 && !super::v05::client::is_json_rpc(&reply)) {
            let r: ActivateResponse = self.read_reply("Plugin.Activate", status, &reply)?;
            return Ok((Protocol::Native, r.implements));
        }
        let name = self.endpoint.full_name();
        let apis = super::v05::client::implements(&self.transport, &name)
            .await
            .map_err(|e| {
                Error::new(
                    e.kind,
                    format!(
                        "plugin '{name}' answered Plugin.Activate with status {status}, and \
                         InfraKit v0.5's Handshake.Implements failed too: {}",
                        e.message
                    ),
                )
            })?;
        let names = apis.iter().map(ToString::to_string).collect();
        Ok((Protocol::V05, names))
    }

    /// POSTs `body` to `/<path>` exactly as given, without the version check, and returns the
    /// status and the reply body: for probing how a plugin answers a request no client would send
    /// (the conformance suite's malformed bodies).
    pub async fn post_raw(&self, path: &str, body: impl Into<Bytes>) -> Result<(u16, Bytes)> {
        self.transport.post(path, body.into()).await
    }

    /// Checks the interface once; a failure to connect is not remembered, a mismatch is re-checked
    /// (the plugin may have been upgraded meanwhile).
    async fn ensure_compatible(&self) -> Result<Protocol> {
        self.compatible
            .get_or_try_init(|| async {
                let name = self.endpoint.full_name();
                match self.identify().await? {
                    (Protocol::Native, implements) => self
                        .interface
                        .check(&name, &implements)
                        .map_err(|m| Error::new(ErrorKind::Incompatible, m))
                        .map(|_| Protocol::Native),
                    (Protocol::V05, _) => {
                        // Asked again for the structured list (identify gives it as text).
                        let apis = super::v05::client::implements(&self.transport, &name).await?;
                        super::v05::client::check(self.interface, &name, &apis)?;
                        tracing::info!(plugin = %name, "speaking InfraKit v0.5's protocol");
                        Ok(Protocol::V05)
                    }
                }
            })
            .await
            .copied()
    }

    /// The protocol the plugin speaks, after the interface check (which it makes at first use).
    pub async fn protocol(&self) -> Result<Protocol> {
        self.ensure_compatible().await
    }

    /// Calls `<Interface>.<method>` with `req`, after the version check.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp> {
        self.ensure_compatible().await?;
        let body = serde_json::to_vec(req)
            .map_err(|e| Error::internal(format!("cannot encode the request: {e}")))?;
        let path = format!("{}.{method}", self.interface.rpc_prefix);
        let started = std::time::Instant::now();
        let result = self.post(&path, Bytes::from(body)).await;
        crate::metrics::made(
            &self.endpoint.full_name(),
            &path,
            started.elapsed(),
            &result,
        );
        result
    }

    /// [`RpcClient::call`], with the reply read by `read` (given the plugin's name, the path and
    /// the reply's bytes) instead of as one value.
    async fn call_with<Req: Serialize, Resp>(
        &self,
        method: &str,
        req: &Req,
        read: impl FnOnce(&str, &str, &[u8]) -> Result<Resp>,
    ) -> Result<Resp> {
        self.ensure_compatible().await?;
        let body = serde_json::to_vec(req)
            .map_err(|e| Error::internal(format!("cannot encode the request: {e}")))?;
        let path = format!("{}.{method}", self.interface.rpc_prefix);
        let started = std::time::Instant::now();
        let result = match self.post_checked(&path, Bytes::from(body)).await {
            Ok(reply) => read(&self.endpoint.full_name(), &path, &reply),
            Err(e) => Err(e),
        };
        crate::metrics::made(
            &self.endpoint.full_name(),
            &path,
            started.elapsed(),
            &result,
        );
        result
    }

    async fn post<Resp: DeserializeOwned>(&self, path: &str, body: Bytes) -> Result<Resp> {
        let reply = self.post_checked(path, body).await?;
        let name = self.endpoint.full_name();
        serde_json::from_slice(&reply).map_err(|e| {
            Error::internal(format!(
                "plugin '{name}' sent a reply to {path} that does not parse: {e}"
            ))
        })
    }

    /// Posts and returns the reply's bytes when the plugin answered 200, else its error. To a
    /// v0.5 plugin the call goes as JSON-RPC, translated both ways.
    async fn post_checked(&self, path: &str, body: Bytes) -> Result<Bytes> {
        let name = self.endpoint.full_name();
        if self.compatible.get() == Some(&Protocol::V05) {
            return super::v05::client::call(&self.transport, &name, path, &body).await;
        }
        let (status, reply) = self.transport.post(path, body).await?;
        if status != 200 {
            let message = match serde_json::from_slice::<ErrResponse>(&reply) {
                Ok(e) => e.err,
                Err(_) => format!(
                    "plugin '{name}' answered {path} with status {status}: {}",
                    String::from_utf8_lossy(&reply).trim()
                ),
            };
            return Err(Error::new(ErrorKind::from_status(status), message));
        }
        Ok(reply)
    }

    /// Reads a native reply: the value when the status is 200, else the error it carries.
    fn read_reply<Resp: DeserializeOwned>(
        &self,
        path: &str,
        status: u16,
        reply: &[u8],
    ) -> Result<Resp> {
        let name = self.endpoint.full_name();
        if status != 200 {
            let message = match serde_json::from_slice::<ErrResponse>(reply) {
                Ok(e) => e.err,
                Err(_) => format!(
                    "plugin '{name}' answered {path} with status {status}: {}",
                    String::from_utf8_lossy(reply).trim()
                ),
            };
            return Err(Error::new(ErrorKind::from_status(status), message));
        }
        serde_json::from_slice(reply).map_err(|e| {
            Error::internal(format!(
                "plugin '{name}' sent a reply to {path} that does not parse: {e}"
            ))
        })
    }

    fn sub_type(&self) -> String {
        self.endpoint.sub_type.clone()
    }
}

/// Reads a `DescribeInstances` reply. One description that cannot be read must not cost the
/// whole list: a controller that cannot list a group decides nothing for it, so one hand-written
/// instance nested deeper than the JSON reader's 128 levels stopped the healing of every other.
///
/// The reply is read whole first (the usual case costs what it always did). Only when that fails
/// is it read again description by description: a description that cannot be read whole is kept
/// with its ID, logical ID and tags (its properties set aside, and tag [`UNREADABLE`] saying why),
/// so it still counts as the instance it is; one without even those is left out. Both are logged.
///
/// [`UNREADABLE`]: crate::spi::tags::UNREADABLE
fn read_descriptions(plugin: &str, path: &str, reply: &[u8]) -> Result<Vec<Description>> {
    let whole = match serde_json::from_slice::<DescribeInstancesResponse>(reply) {
        Ok(r) => return Ok(r.descriptions),
        Err(e) => e,
    };
    let does_not_parse = |e: &dyn std::fmt::Display| {
        Error::internal(format!(
            "plugin '{plugin}' sent a reply to {path} that does not parse: {e}"
        ))
    };
    /// The list with each description kept as text. Skipping over a value to keep its text has
    /// no depth limit (serde_json walks it without recursing).
    #[derive(serde::Deserialize)]
    struct Listed {
        #[serde(rename = "Descriptions", default)]
        descriptions: Option<Vec<Box<serde_json::value::RawValue>>>,
    }
    /// What identifies an instance; everything else (its properties) is skipped unread.
    #[derive(serde::Deserialize)]
    struct Bare {
        #[serde(rename = "ID")]
        id: InstanceId,
        #[serde(rename = "LogicalID", default)]
        logical_id: Option<String>,
        #[serde(rename = "Tags", default)]
        tags: Option<Tags>,
    }
    let listed: Listed = serde_json::from_slice(reply).map_err(|_| does_not_parse(&whole))?;
    let items = listed.descriptions.unwrap_or_default();
    Ok(crate::spi::shared_tags::interning(|| {
        items
            .iter()
            .filter_map(|item| {
                let e = match serde_json::from_str::<Description>(item.get()) {
                    Ok(d) => return Some(d),
                    Err(e) => e,
                };
                match serde_json::from_str::<Bare>(item.get()) {
                    Ok(bare) => {
                        tracing::warn!(
                            plugin,
                            instance = %bare.id,
                            "the description of instance {} cannot be read ({e}): counted by its ID \
                             and tags, its properties set aside",
                            bare.id
                        );
                        let mut tags = bare.tags.unwrap_or_default();
                        tags.insert(
                            crate::spi::tags::UNREADABLE.to_string(),
                            format!("its description cannot be read: {e}"),
                        );
                        Some(Description {
                            id: bare.id,
                            logical_id: bare.logical_id,
                            tags: tags.into(),
                            properties: None,
                        })
                    }
                    Err(bare) => {
                        let text = item.get();
                        let start: String = text.chars().take(120).collect();
                        tracing::warn!(
                            plugin,
                            "a description cannot be read and is left out ({e}; {bare}): {start}..."
                        );
                        None
                    }
                }
            })
            .collect()
    }))
}

/// A remote instance plugin.
pub struct InstanceClient(RpcClient);

impl InstanceClient {
    pub fn new(endpoint: Endpoint) -> InstanceClient {
        InstanceClient(RpcClient::new(endpoint, INSTANCE))
    }
    pub fn rpc(&self) -> &RpcClient {
        &self.0
    }
}

#[async_trait]
impl InstancePlugin for InstanceClient {
    async fn validate(&self, properties: &Value) -> Result<()> {
        let req = InstanceValidateRequest {
            properties: properties.clone(),
            allocation: None,
            r#type: self.0.sub_type(),
        };
        self.0
            .call::<_, OkResponse>("Validate", &req)
            .await
            .map(|_| ())
    }

    async fn validate_with_allocation(
        &self,
        properties: &Value,
        allocation: &AllocationMethod,
    ) -> Result<()> {
        let req = InstanceValidateRequest {
            properties: properties.clone(),
            allocation: Some(allocation.clone()),
            r#type: self.0.sub_type(),
        };
        self.0
            .call::<_, OkResponse>("Validate", &req)
            .await
            .map(|_| ())
    }

    async fn provision(&self, spec: Spec) -> Result<InstanceId> {
        let req = ProvisionRequest {
            spec,
            r#type: self.0.sub_type(),
        };
        let r: ProvisionResponse = self.0.call("Provision", &req).await?;
        r.id.filter(|id| !id.is_empty()).ok_or_else(|| {
            Error::internal(format!(
                "plugin '{}' provisioned an instance but returned no ID",
                self.0.endpoint.full_name()
            ))
        })
    }

    async fn label(&self, id: &str, labels: Tags) -> Result<()> {
        let req = LabelRequest {
            instance: id.to_string(),
            labels,
            r#type: self.0.sub_type(),
        };
        self.0
            .call::<_, OkResponse>("Label", &req)
            .await
            .map(|_| ())
    }

    async fn destroy(&self, id: &str, context: DestroyContext) -> Result<()> {
        let req = DestroyRequest {
            instance: id.to_string(),
            context,
            r#type: self.0.sub_type(),
        };
        self.0
            .call::<_, OkResponse>("Destroy", &req)
            .await
            .map(|_| ())
    }

    async fn describe_instances(&self, tags: &Tags, properties: bool) -> Result<Vec<Description>> {
        let req = DescribeInstancesRequest {
            tags: tags.clone(),
            properties,
            ids: None,
            r#type: self.0.sub_type(),
        };
        self.0
            .call_with("DescribeInstances", &req, read_descriptions)
            .await
    }

    /// Sends the IDs; a plugin that does not know them answers every instance (see the trait).
    async fn describe_instances_by_id(
        &self,
        tags: &Tags,
        properties: bool,
        ids: &[InstanceId],
    ) -> Result<Vec<Description>> {
        let req = DescribeInstancesRequest {
            tags: tags.clone(),
            properties,
            ids: Some(ids.to_vec()),
            r#type: self.0.sub_type(),
        };
        self.0
            .call_with("DescribeInstances", &req, read_descriptions)
            .await
    }

    /// A plugin that does not know `Instance.Changes` (InfraKit v0.5's, or ours before it) answers
    /// 404: that is `Unsupported`, and the caller keeps polling.
    async fn changes(&self, cursor: &str, timeout: Duration) -> Result<Changes> {
        let req = ChangesRequest {
            cursor: cursor.to_string(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            r#type: self.0.sub_type(),
        };
        self.0.call("Changes", &req).await.map_err(|e| {
            if e.kind == ErrorKind::NotFound {
                Error::unsupported(format!(
                    "plugin '{}' does not report changes (Instance.Changes: {})",
                    self.0.endpoint.full_name(),
                    e.message
                ))
            } else {
                e
            }
        })
    }
}

/// `Flavor.HealthyMany` and `Flavor.Leading`'s request (`HealthyManyRequest` on the wire),
/// borrowing what it sends: a request about thousands of instances is not copied to be sent.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InstancesRequest<'a> {
    properties: &'a Value,
    instances: &'a [Description],
    #[serde(skip_serializing_if = "String::is_empty")]
    r#type: String,
}

/// A remote flavor plugin.
/// The flags remember which optional methods the plugin answered 404 to (`HealthyMany`,
/// `Leading`): they are not asked again.
pub struct FlavorClient(RpcClient, AtomicBool, AtomicBool);

impl FlavorClient {
    pub fn new(endpoint: Endpoint) -> FlavorClient {
        FlavorClient(
            RpcClient::new(endpoint, FLAVOR),
            AtomicBool::new(false),
            AtomicBool::new(false),
        )
    }
    pub fn rpc(&self) -> &RpcClient {
        &self.0
    }
}

#[async_trait]
impl FlavorPlugin for FlavorClient {
    async fn validate(&self, properties: &Value, allocation: &AllocationMethod) -> Result<()> {
        let req = FlavorValidateRequest {
            properties: properties.clone(),
            allocation: allocation.clone(),
            r#type: self.0.sub_type(),
        };
        self.0
            .call::<_, OkResponse>("Validate", &req)
            .await
            .map(|_| ())
    }

    async fn prepare(
        &self,
        properties: &Value,
        spec: Spec,
        allocation: &AllocationMethod,
        index: &Index,
    ) -> Result<Spec> {
        let req = PrepareRequest {
            properties: properties.clone(),
            spec,
            allocation: allocation.clone(),
            index: index.clone(),
            r#type: self.0.sub_type(),
        };
        let r: PrepareResponse = self.0.call("Prepare", &req).await?;
        Ok(r.spec)
    }

    async fn healthy(&self, properties: &Value, instance: &Description) -> Result<Health> {
        let req = FlavorInstanceRequest {
            properties: properties.clone(),
            instance: instance.clone(),
            r#type: self.0.sub_type(),
        };
        let r: HealthyResponse = self.0.call("Healthy", &req).await?;
        Ok(r.health)
    }

    /// A plugin that does not know `Flavor.HealthyMany` (InfraKit v0.5's, or ours before it)
    /// answers 404: that is `Unsupported` (remembered: it is not asked again), and the caller asks
    /// one instance at a time.
    async fn healthy_many(
        &self,
        properties: &Value,
        instances: &[Description],
    ) -> Result<Vec<Health>> {
        let unsupported = || {
            Error::unsupported(format!(
                "flavor plugin '{}' judges one instance per call (no Flavor.HealthyMany)",
                self.0.endpoint.full_name()
            ))
        };
        if self.1.load(Ordering::Relaxed) {
            return Err(unsupported());
        }
        let req = InstancesRequest {
            properties,
            instances,
            r#type: self.0.sub_type(),
        };
        let r: HealthyManyResponse = match self.0.call("HealthyMany", &req).await {
            Ok(r) => r,
            Err(e) if e.kind == ErrorKind::NotFound => {
                self.1.store(true, Ordering::Relaxed);
                return Err(unsupported());
            }
            Err(e) => return Err(e),
        };
        if r.health.len() != instances.len() {
            return Err(Error::internal(format!(
                "flavor plugin '{}' answered HealthyMany for {} instances with {} verdicts",
                self.0.endpoint.full_name(),
                instances.len(),
                r.health.len()
            )));
        }
        Ok(r.health)
    }

    /// A plugin that does not know `Flavor.Leading` answers 404: it names no leader (remembered).
    async fn leading(
        &self,
        properties: &Value,
        instances: &[Description],
    ) -> Result<Vec<InstanceId>> {
        if self.2.load(Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        let req = InstancesRequest {
            properties,
            instances,
            r#type: self.0.sub_type(),
        };
        match self.0.call::<_, LeadingResponse>("Leading", &req).await {
            Ok(r) => Ok(r.ids),
            Err(e) if e.kind == ErrorKind::NotFound => {
                self.2.store(true, Ordering::Relaxed);
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    async fn drain(&self, properties: &Value, instance: &Description) -> Result<()> {
        let req = FlavorInstanceRequest {
            properties: properties.clone(),
            instance: instance.clone(),
            r#type: self.0.sub_type(),
        };
        self.0
            .call::<_, OkResponse>("Drain", &req)
            .await
            .map(|_| ())
    }
}

/// A remote group plugin.
pub struct GroupClient(RpcClient);

impl GroupClient {
    pub fn new(endpoint: Endpoint) -> GroupClient {
        GroupClient(RpcClient::new(endpoint, GROUP))
    }
    pub fn rpc(&self) -> &RpcClient {
        &self.0
    }
    async fn commit(&self, spec: GroupSpec, pretend: bool, expect: String) -> Result<CommitResult> {
        let req = CommitGroupRequest {
            spec,
            pretend,
            expect,
            r#type: self.0.sub_type(),
        };
        let r: CommitGroupResponse = self.0.call("CommitGroup", &req).await?;
        Ok(CommitResult {
            details: r.details,
            plan: r.plan,
        })
    }

    fn id_request(&self, id: &str) -> GroupIdRequest {
        GroupIdRequest {
            id: id.to_string(),
            r#type: self.0.sub_type(),
        }
    }
}

#[async_trait]
impl GroupPlugin for GroupClient {
    async fn commit_group(&self, spec: GroupSpec, pretend: bool) -> Result<CommitResult> {
        self.commit(spec, pretend, String::new()).await
    }

    async fn commit_group_expecting(
        &self,
        spec: GroupSpec,
        pretend: bool,
        expect: &str,
    ) -> Result<CommitResult> {
        self.commit(spec, pretend, expect.to_string()).await
    }

    async fn update_command(&self, id: &str, command: UpdateCommand) -> Result<String> {
        let req = UpdateCommandRequest {
            id: id.to_string(),
            command,
            r#type: self.0.sub_type(),
        };
        let r: DetailsResponse = self.0.call("UpdateCommand", &req).await?;
        Ok(r.details)
    }

    /// A group plugin without `Group.Events` answers 404: that is `Unsupported`.
    async fn events(
        &self,
        cursor: u64,
        group: Option<&str>,
        timeout: Duration,
    ) -> Result<EventBatch> {
        let req = EventsRequest {
            cursor,
            id: group.unwrap_or_default().to_string(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            r#type: self.0.sub_type(),
        };
        self.0.call("Events", &req).await.map_err(|e| {
            if e.kind == ErrorKind::NotFound && e.message.contains("Events") {
                Error::unsupported(format!(
                    "group plugin '{}' has no event stream (Group.Events: {})",
                    self.0.endpoint.full_name(),
                    e.message
                ))
            } else {
                e
            }
        })
    }

    async fn free_group(&self, id: &str) -> Result<()> {
        self.0
            .call::<_, OkResponse>("FreeGroup", &self.id_request(id))
            .await
            .map(|_| ())
    }

    async fn describe_group(&self, id: &str) -> Result<GroupDescription> {
        let r: DescribeGroupResponse = self.0.call("DescribeGroup", &self.id_request(id)).await?;
        Ok(r.description)
    }

    async fn destroy_group(&self, id: &str) -> Result<()> {
        self.0
            .call::<_, OkResponse>("DestroyGroup", &self.id_request(id))
            .await
            .map(|_| ())
    }

    async fn inspect_groups(&self) -> Result<Vec<GroupSpec>> {
        let r: InspectGroupsResponse = self.0.call("InspectGroups", &self.id_request("")).await?;
        Ok(r.groups)
    }

    async fn destroy_instances(&self, id: &str, instances: &[InstanceId]) -> Result<()> {
        let req = DestroyInstancesRequest {
            id: id.to_string(),
            instances: instances.to_vec(),
            r#type: self.0.sub_type(),
        };
        self.0
            .call::<_, OkResponse>("DestroyInstances", &req)
            .await
            .map(|_| ())
    }

    async fn size(&self, id: &str) -> Result<u64> {
        let r: SizeResponse = self.0.call("Size", &self.id_request(id)).await?;
        Ok(r.size)
    }

    async fn set_size(&self, id: &str, size: u64) -> Result<()> {
        let req = SetSizeRequest {
            id: id.to_string(),
            size,
            r#type: self.0.sub_type(),
        };
        self.0
            .call::<_, OkResponse>("SetSize", &req)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"Deep": [[...1...]]}`, `depth` levels in all.
    fn nested(depth: usize) -> String {
        format!(
            "{{\"Deep\": {}1{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    }

    #[test]
    fn one_description_too_deep_to_read_costs_only_its_properties() {
        let reply = format!(
            r#"{{"Descriptions": [
                {{"ID": "a", "Tags": {{"infrakit.group": "g"}}}},
                {{"ID": "deep", "LogicalID": "l", "Tags": {{"infrakit.group": "g"}}, "Properties": {}}},
                {{"ID": "fine", "Tags": {{"infrakit.group": "g"}}, "Properties": {}}},
                {{"Tags": {{"no": "id"}}, "Properties": {}}}
            ]}}"#,
            nested(127),
            nested(100),
            nested(127)
        );
        // Read whole, the reply is too deep (this is what stopped a group's healing).
        assert!(serde_json::from_str::<DescribeInstancesResponse>(&reply).is_err());
        let list = read_descriptions("p", "/Instance.DescribeInstances", reply.as_bytes())
            .expect("the readable part");
        let ids: Vec<&str> = list.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            ["a", "deep", "fine"],
            "the one without an ID is left out"
        );
        let deep = &list[1];
        assert_eq!(deep.logical_id.as_deref(), Some("l"));
        assert_eq!(
            deep.tags.get("infrakit.group").map(String::as_str),
            Some("g")
        );
        assert!(deep.properties.is_none());
        let why = deep.tags.get(crate::spi::tags::UNREADABLE).expect("marked");
        assert!(why.contains("recursion limit"), "{why}");
        assert!(
            list[2].properties.is_some(),
            "a deep but readable one is whole"
        );
        assert!(!list[0].tags.contains_key(crate::spi::tags::UNREADABLE));
        // A reply that is not a list at all is still an error.
        let e = read_descriptions("p", "/I", b"{\"Descriptions\": 3}").expect_err("bad");
        assert!(e.to_string().contains("does not parse"), "{e}");
    }
}
