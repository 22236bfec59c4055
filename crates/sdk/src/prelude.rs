//! Everything a plugin author needs, in one `use infrakit_sdk::prelude::*;`: the traits and their
//! types, the error, the `#[async_trait]` macro and `serde_json`'s `Value` and `json!` (so a
//! plugin needs no dependency but this crate), and the run call.

pub use async_trait::async_trait;
pub use serde_json::{json, Value};

pub use crate::rpc::server::Plugins;
pub use crate::spi::flavor::{properties_or_empty, AllocationMethod, FlavorPlugin, Health, Index};
pub use crate::spi::instance::{
    tags_match, Attachment, Description, DestroyContext, DestroyReason, InstanceId, InstancePlugin,
    LogicalId, SharedTags, Spec, Tags,
};
pub use crate::{Error, ErrorKind, Result};

#[cfg(feature = "run")]
pub use crate::run::RunOptions;
