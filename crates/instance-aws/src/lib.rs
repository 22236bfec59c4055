//! `instance-aws`: an InfraKit instance plugin for Amazon EC2, on the official AWS SDK for Rust.
//! Its own crate and binary, so that the bundle's other plugins do not carry the SDK.
//!
//! - **Properties** are EC2's `RunInstances` request in AWS's own field names (`ImageId`,
//!   `InstanceType`, `SubnetId`, `SecurityGroupIds`, ...), plus `Region` and `Endpoint`
//!   ([`properties`]). Credentials come only from the SDK's standard chain (environment, profile,
//!   instance role): never from a spec, never logged.
//! - **Provision** → `RunInstances`: `Init` as base64 `UserData`, tags as EC2 tags (plus a marker
//!   tag, `infrakit.instance-aws=1`), a LogicalID that is an IPv4 address as the private IP. Equal
//!   cattle provisions share one request; every launch is idempotent across a crash ([`launch`]).
//! - **DescribeInstances** → `DescribeInstances` filtered by tags on EC2's side, every page,
//!   terminated and shutting-down instances left out ([`describe`]).
//! - **Destroy** → `TerminateInstances`, batched ([`terminate`]); **Label** → `CreateTags`.
//! - **Changes** → a state poll while someone listens ([`changes`]).
//! - The SDK's standard retries (with backoff, throttling included), bounded requests in flight,
//!   and a count of requests by operation on `GET /metrics` ([`ec2`]).
//!
//! Not for: anything but EC2 instances (no VPCs, volumes or load balancers are made); SSO profiles
//! (built without the SDK's `sso` feature, to keep the binary small). See docs/ec2.md.

pub mod changes;
pub mod describe;
pub mod ec2;
pub mod launch;
pub mod plugin;
pub mod properties;
pub mod state;
pub mod terminate;

pub use plugin::AwsInstancePlugin;

/// The name the plugin is found by, and its socket's (`instance-aws.sock`).
pub const NAME: &str = "instance-aws";
