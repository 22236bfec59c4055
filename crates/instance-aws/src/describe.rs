//! `DescribeInstances` as the plugin asks it: the plugin's marker tag and the caller's tags as
//! filters on EC2's side (so one request answers for a whole group, however many instances it
//! has), every page, only the live states (`terminated` and `shutting-down` are left out: a
//! group controller counting those would never replace them).

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, Instance, InstanceStateName};
use infrakit_sdk::spi::instance::{Description, Tags};
use infrakit_sdk::Result;
use serde_json::{json, Value};

use crate::ec2::{self, Ec2};
use crate::properties::Location;

/// The tag on every instance this plugin launches: describes list only those.
pub const MARKER_TAG: &str = "infrakit.instance-aws";
/// The tag naming the launch an instance came from (also its ClientToken): how a launch
/// interrupted by a crash is found again.
pub const LAUNCH_TAG: &str = "infrakit.instance-aws.launch";
/// Where the logical ID is kept (the group controller's tag for it).
pub const LOGICAL_ID_TAG: &str = infrakit_sdk::spi::tags::LOGICAL_ID;

/// The states a described instance may be in: alive, or stopped (a flavor judges those).
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];
/// Instances per page (EC2's maximum; moto pages by reservation regardless).
const PAGE: i32 = 1000;

/// One filter; `tag:` values are escaped so that `*` and `?` in a tag value match themselves.
fn filter(name: &str, values: impl IntoIterator<Item = String>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().collect()))
        .build()
}

fn escape(value: &str) -> String {
    if !value.contains(['*', '?', '\\']) {
        return value.to_string();
    }
    value
        .replace('\\', "\\\\")
        .replace('*', "\\*")
        .replace('?', "\\?")
}

/// The filters for the plugin's live instances carrying `tags` (and, if given, one of `ids`).
pub fn filters(tags: &Tags, ids: Option<&[String]>) -> Vec<Filter> {
    let mut out = vec![
        filter(&format!("tag:{MARKER_TAG}"), ["1".to_string()]),
        filter(
            "instance-state-name",
            LIVE_STATES.iter().map(|s| s.to_string()),
        ),
    ];
    for (k, v) in tags {
        out.push(filter(&format!("tag:{k}"), [escape(v)]));
    }
    if let Some(ids) = ids {
        out.push(filter("instance-id", ids.iter().cloned()));
    }
    out
}

/// Every live instance of the plugin in `location` that matches `filters`, all pages.
pub async fn instances(
    ec2: &Ec2,
    location: &Location,
    filters: Vec<Filter>,
) -> Result<Vec<Instance>> {
    let client = ec2.client(location);
    let mut pages = client
        .describe_instances()
        .set_filters(Some(filters))
        .max_results(PAGE)
        .into_paginator()
        .send();
    let mut out = Vec::new();
    loop {
        let page = {
            let _permit = ec2.permit().await;
            pages.next().await
        };
        match page {
            None => break,
            Some(Ok(page)) => {
                for r in page.reservations.unwrap_or_default() {
                    out.extend(r.instances.unwrap_or_default());
                }
            }
            Some(Err(e)) => return Err(ec2::error("DescribeInstances", location, e)),
        }
    }
    Ok(out)
}

/// An instance's tags as a map.
pub fn tags_of(instance: &Instance) -> Tags {
    instance
        .tags()
        .iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// Whether EC2 reports the instance alive (its filter is trusted, but an answer that raced a
/// termination is checked again here).
pub fn is_live(instance: &Instance) -> bool {
    !matches!(
        instance.state().and_then(|s| s.name()),
        Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
    )
}

/// An instance as InfraKit describes it: the plugin's own tags left out, the logical ID from its
/// tag, and with `properties` what a flavor or a user wants to see of it.
pub fn description(instance: &Instance, properties: bool) -> Description {
    let mut tags: BTreeMap<String, String> = tags_of(instance);
    tags.remove(MARKER_TAG);
    tags.remove(LAUNCH_TAG);
    let logical_id = tags.get(LOGICAL_ID_TAG).cloned();
    Description {
        id: instance.instance_id().unwrap_or_default().to_string(),
        logical_id,
        tags: tags.into(),
        properties: properties.then(|| state(instance)),
    }
}

fn state(i: &Instance) -> Value {
    let mut v = json!({
        "InstanceId": i.instance_id(),
        "State": i.state().and_then(|s| s.name()).map(|n| n.as_str()),
        "InstanceType": i.instance_type().map(|t| t.as_str()),
        "ImageId": i.image_id(),
        "PrivateIpAddress": i.private_ip_address(),
        "PublicIpAddress": i.public_ip_address(),
        "SubnetId": i.subnet_id(),
        "VpcId": i.vpc_id(),
        "AvailabilityZone": i.placement().and_then(|p| p.availability_zone()),
        "LaunchTime": i.launch_time().map(|t| t.to_string()),
    });
    if let Value::Object(m) = &mut v {
        m.retain(|_, v| !v.is_null());
    }
    v
}
