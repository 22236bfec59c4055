//! A plugin name to a usable plugin object.
//!
//! The group controller asks for "the instance plugin called X"; whether X is a process found through
//! discovery or a plugin living in the same process (as in `infrakit up`) is this module's business.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::discovery::Discovery;
use crate::rpc::client::{Endpoint, FlavorClient, InstanceClient};
use crate::spi::flavor::FlavorPlugin;
use crate::spi::instance::InstancePlugin;
use crate::Result;

#[async_trait]
pub trait PluginResolver: Send + Sync + 'static {
    async fn instance(&self, name: &str) -> Result<Arc<dyn InstancePlugin>>;
    async fn flavor(&self, name: &str) -> Result<Arc<dyn FlavorPlugin>>;
}

/// Resolves through [`Discovery`] and keeps one client per (name, socket), so keep-alive
/// connections are reused across calls. A plugin that moves (new socket) gets a new client.
pub struct DiscoveryResolver {
    discovery: Discovery,
    instances: Mutex<HashMap<Endpoint, Arc<InstanceClient>>>,
    flavors: Mutex<HashMap<Endpoint, Arc<FlavorClient>>>,
}

impl DiscoveryResolver {
    pub fn new(discovery: Discovery) -> DiscoveryResolver {
        DiscoveryResolver {
            discovery,
            instances: Mutex::new(HashMap::new()),
            flavors: Mutex::new(HashMap::new()),
        }
    }
}

fn cached<C>(
    map: &Mutex<HashMap<Endpoint, Arc<C>>>,
    ep: Endpoint,
    make: impl FnOnce(Endpoint) -> C,
) -> Arc<C> {
    let mut m = match map.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    m.entry(ep.clone())
        .or_insert_with(|| Arc::new(make(ep)))
        .clone()
}

#[async_trait]
impl PluginResolver for DiscoveryResolver {
    async fn instance(&self, name: &str) -> Result<Arc<dyn InstancePlugin>> {
        let ep = self.discovery.find(name).await?;
        let c: Arc<InstanceClient> = cached(&self.instances, ep, InstanceClient::new);
        Ok(c)
    }
    async fn flavor(&self, name: &str) -> Result<Arc<dyn FlavorPlugin>> {
        let ep = self.discovery.find(name).await?;
        let c: Arc<FlavorClient> = cached(&self.flavors, ep, FlavorClient::new);
        Ok(c)
    }
}

/// Plugins living in this process by name, and a fallback for every other name.
pub struct LocalResolver {
    instances: HashMap<String, Arc<dyn InstancePlugin>>,
    flavors: HashMap<String, Arc<dyn FlavorPlugin>>,
    fallback: Option<Arc<dyn PluginResolver>>,
}

impl LocalResolver {
    pub fn new(fallback: Option<Arc<dyn PluginResolver>>) -> LocalResolver {
        LocalResolver {
            instances: HashMap::new(),
            flavors: HashMap::new(),
            fallback,
        }
    }
    pub fn with_instance(mut self, name: &str, p: Arc<dyn InstancePlugin>) -> LocalResolver {
        self.instances.insert(name.to_string(), p);
        self
    }
    pub fn with_flavor(mut self, name: &str, p: Arc<dyn FlavorPlugin>) -> LocalResolver {
        self.flavors.insert(name.to_string(), p);
        self
    }
}

fn not_here(kind: &str, name: &str) -> crate::Error {
    crate::Error::not_found(format!("{kind} plugin '{name}' not found in this process"))
}

#[async_trait]
impl PluginResolver for LocalResolver {
    async fn instance(&self, name: &str) -> Result<Arc<dyn InstancePlugin>> {
        if let Some(p) = self.instances.get(name) {
            return Ok(p.clone());
        }
        match &self.fallback {
            Some(f) => f.instance(name).await,
            None => Err(not_here("instance", name)),
        }
    }
    async fn flavor(&self, name: &str) -> Result<Arc<dyn FlavorPlugin>> {
        if let Some(p) = self.flavors.get(name) {
            return Ok(p.clone());
        }
        match &self.fallback {
            Some(f) => f.flavor(name).await,
            None => Err(not_here("flavor", name)),
        }
    }
}
