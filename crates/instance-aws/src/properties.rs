//! The instance properties: EC2's `RunInstances` request in AWS's own field names, plus where to
//! send it (`Region`, `Endpoint`). Parsed once at the boundary into [`Properties`]; everything
//! inward works on the typed value. Unknown fields are refused with the list of known ones, and
//! the fields the plugin sets itself (`UserData`, `MinCount`, ...) with a message saying where they
//! come from instead.

use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{
    BlockDeviceMapping as SdkBlockDeviceMapping, CreditSpecificationRequest, EbsBlockDevice,
    HttpTokensState, IamInstanceProfileSpecification, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceType, LaunchTemplateSpecification,
    Placement as SdkPlacement, RunInstancesMonitoringEnabled, ShutdownBehavior, Tenancy,
    VolumeType,
};
use infrakit_sdk::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Fields of `RunInstances` the plugin fills in itself, and where their value comes from.
const SET_BY_THE_PLUGIN: [(&str, &str); 6] = [
    (
        "UserData",
        "the flavor's Init (the plugin base64-encodes it)",
    ),
    (
        "TagSpecifications",
        "the instance's tags (the flavor's and the group controller's)",
    ),
    (
        "MinCount",
        "the group's Allocation (one instance per provision)",
    ),
    (
        "MaxCount",
        "the group's Allocation (one instance per provision)",
    ),
    (
        "ClientToken",
        "the plugin (one per provision, for idempotent retries)",
    ),
    (
        "PrivateIpAddress",
        "a LogicalID that is an IP address (Allocation.LogicalIDs)",
    ),
];

/// Where the requests go: a region, and optionally an endpoint other than AWS's (an emulator, a
/// VPC endpoint). Credentials are never part of it: they come from the SDK's standard chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Location {
    #[serde(rename = "Region")]
    pub region: String,
    #[serde(rename = "Endpoint", default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.endpoint {
            Some(e) => write!(f, "region {} at {e}", self.region),
            None => write!(f, "region {}", self.region),
        }
    }
}

/// Instance properties as written in a group spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Properties {
    /// Default: the plugin's own region (AWS_REGION or the profile's).
    pub region: Option<String>,
    /// Default: the plugin's own (AWS_ENDPOINT_URL), else AWS's endpoint for the region.
    pub endpoint: Option<String>,
    pub image_id: String,
    pub instance_type: Option<String>,
    pub subnet_id: Option<String>,
    pub security_group_ids: Option<Vec<String>>,
    /// Security group names (EC2-Classic and default VPC only; prefer SecurityGroupIds).
    pub security_groups: Option<Vec<String>>,
    pub key_name: Option<String>,
    pub iam_instance_profile: Option<IamInstanceProfile>,
    pub block_device_mappings: Option<Vec<BlockDeviceMapping>>,
    pub placement: Option<Placement>,
    pub ebs_optimized: Option<bool>,
    pub monitoring: Option<Monitoring>,
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    pub instance_initiated_shutdown_behavior: Option<String>,
    pub metadata_options: Option<MetadataOptions>,
    pub credit_specification: Option<CreditSpecification>,
    pub launch_template: Option<LaunchTemplate>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct IamInstanceProfile {
    pub arn: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct BlockDeviceMapping {
    pub device_name: String,
    pub virtual_name: Option<String>,
    pub no_device: Option<String>,
    pub ebs: Option<Ebs>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Ebs {
    pub delete_on_termination: Option<bool>,
    pub iops: Option<i32>,
    pub snapshot_id: Option<String>,
    pub volume_size: Option<i32>,
    pub volume_type: Option<String>,
    pub kms_key_id: Option<String>,
    pub throughput: Option<i32>,
    pub encrypted: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Placement {
    pub availability_zone: Option<String>,
    pub group_name: Option<String>,
    pub tenancy: Option<String>,
    pub host_id: Option<String>,
    pub partition_number: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Monitoring {
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct MetadataOptions {
    pub http_tokens: Option<String>,
    pub http_put_response_hop_limit: Option<i32>,
    pub http_endpoint: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct CreditSpecification {
    pub cpu_credits: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct LaunchTemplate {
    pub launch_template_id: Option<String>,
    pub launch_template_name: Option<String>,
    pub version: Option<String>,
}

impl Properties {
    /// Parses and checks instance properties; the error names the field and what to do.
    pub fn parse(value: &Value) -> Result<Properties> {
        let Value::Object(fields) = value else {
            return Err(Error::invalid(format!(
                "instance-aws properties must be a JSON object such as \
                 {{\"ImageId\": \"ami-0123456789abcdef0\", \"InstanceType\": \"t3.micro\"}}, not {value}"
            )));
        };
        for (field, source) in SET_BY_THE_PLUGIN {
            if fields.contains_key(field) {
                return Err(Error::invalid(format!(
                    "instance-aws properties: remove '{field}': the plugin sets it from {source}"
                )));
            }
        }
        for field in [
            "AccessKeyId",
            "SecretAccessKey",
            "SessionToken",
            "Credentials",
        ] {
            if fields.contains_key(field) {
                return Err(Error::invalid(format!(
                    "instance-aws properties: remove '{field}': credentials never go in a spec; the \
                     plugin takes them from the AWS SDK's standard chain (AWS_ACCESS_KEY_ID/\
                     AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the instance's IAM role)"
                )));
            }
        }
        let properties: Properties = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." {
                String::new()
            } else {
                format!(" at {path}")
            };
            Error::invalid(format!(
                "instance-aws properties{at}: {} (field names are EC2 RunInstances' own, e.g. \
                     ImageId, InstanceType, SubnetId, SecurityGroupIds; plus Region and Endpoint)",
                e.into_inner()
            ))
        })?;
        properties.check()?;
        Ok(properties)
    }

    fn check(&self) -> Result<()> {
        if self.image_id.trim().is_empty() {
            return Err(Error::invalid(
                "instance-aws properties: ImageId is empty; name an AMI such as ami-0123456789abcdef0",
            ));
        }
        if let Some(r) = &self.region {
            if r.trim().is_empty() || r.contains(char::is_whitespace) {
                return Err(Error::invalid(format!(
                    "instance-aws properties: Region '{r}' is not a region name such as us-east-1"
                )));
            }
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(Error::invalid(format!(
                    "instance-aws properties: Endpoint '{e}' must be a URL starting with https:// \
                     (or http:// for a local emulator)"
                )));
            }
        }
        if let Some(IamInstanceProfile {
            arn: None,
            name: None,
        }) = &self.iam_instance_profile
        {
            return Err(Error::invalid(
                "instance-aws properties: IamInstanceProfile needs an Arn or a Name",
            ));
        }
        Ok(())
    }

    /// The `RunInstances` request these properties describe (without count, tags, user data).
    pub fn apply(&self, mut run: RunInstancesFluentBuilder) -> RunInstancesFluentBuilder {
        run = run.image_id(&self.image_id);
        if let Some(t) = &self.instance_type {
            run = run.instance_type(InstanceType::from(t.as_str()));
        }
        run = run
            .set_subnet_id(self.subnet_id.clone())
            .set_security_group_ids(self.security_group_ids.clone())
            .set_security_groups(self.security_groups.clone())
            .set_key_name(self.key_name.clone())
            .set_kernel_id(self.kernel_id.clone())
            .set_ramdisk_id(self.ramdisk_id.clone())
            .set_ebs_optimized(self.ebs_optimized);
        if let Some(p) = &self.iam_instance_profile {
            run = run.iam_instance_profile(
                IamInstanceProfileSpecification::builder()
                    .set_arn(p.arn.clone())
                    .set_name(p.name.clone())
                    .build(),
            );
        }
        for m in self.block_device_mappings.iter().flatten() {
            let ebs = m.ebs.as_ref().map(|e| {
                EbsBlockDevice::builder()
                    .set_delete_on_termination(e.delete_on_termination)
                    .set_iops(e.iops)
                    .set_snapshot_id(e.snapshot_id.clone())
                    .set_volume_size(e.volume_size)
                    .set_volume_type(e.volume_type.as_deref().map(VolumeType::from))
                    .set_kms_key_id(e.kms_key_id.clone())
                    .set_throughput(e.throughput)
                    .set_encrypted(e.encrypted)
                    .build()
            });
            run = run.block_device_mappings(
                SdkBlockDeviceMapping::builder()
                    .device_name(&m.device_name)
                    .set_virtual_name(m.virtual_name.clone())
                    .set_no_device(m.no_device.clone())
                    .set_ebs(ebs)
                    .build(),
            );
        }
        if let Some(p) = &self.placement {
            run = run.placement(
                SdkPlacement::builder()
                    .set_availability_zone(p.availability_zone.clone())
                    .set_group_name(p.group_name.clone())
                    .set_tenancy(p.tenancy.as_deref().map(Tenancy::from))
                    .set_host_id(p.host_id.clone())
                    .set_partition_number(p.partition_number)
                    .build(),
            );
        }
        if let Some(m) = &self.monitoring {
            run = run.monitoring(
                RunInstancesMonitoringEnabled::builder()
                    .enabled(m.enabled)
                    .build(),
            );
        }
        if let Some(b) = &self.instance_initiated_shutdown_behavior {
            run = run.instance_initiated_shutdown_behavior(ShutdownBehavior::from(b.as_str()));
        }
        if let Some(m) = &self.metadata_options {
            run = run.metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .set_http_tokens(m.http_tokens.as_deref().map(HttpTokensState::from))
                    .set_http_put_response_hop_limit(m.http_put_response_hop_limit)
                    .set_http_endpoint(
                        m.http_endpoint
                            .as_deref()
                            .map(InstanceMetadataEndpointState::from),
                    )
                    .build(),
            );
        }
        if let Some(c) = &self.credit_specification {
            run = run.credit_specification(
                CreditSpecificationRequest::builder()
                    .cpu_credits(&c.cpu_credits)
                    .build(),
            );
        }
        if let Some(t) = &self.launch_template {
            run = run.launch_template(
                LaunchTemplateSpecification::builder()
                    .set_launch_template_id(t.launch_template_id.clone())
                    .set_launch_template_name(t.launch_template_name.clone())
                    .set_version(t.version.clone())
                    .build(),
            );
        }
        run
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_aws_field_names() {
        let p = Properties::parse(&json!({
            "Region": "eu-west-1",
            "ImageId": "ami-1",
            "InstanceType": "t3.micro",
            "SecurityGroupIds": ["sg-1"],
            "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 20}}],
            "Placement": {"AvailabilityZone": "eu-west-1a"}
        }))
        .expect("valid");
        assert_eq!(p.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            p.block_device_mappings.expect("bdm")[0]
                .ebs
                .as_ref()
                .and_then(|e| e.volume_size),
            Some(20)
        );
    }

    #[test]
    fn refuses_unknown_and_plugin_owned_fields_clearly() {
        let e = Properties::parse(&json!({"ImageId": "ami-1", "InstanceTyp": "t3.micro"}))
            .expect_err("typo");
        assert!(
            e.message.contains("InstanceTyp") && e.message.contains("InstanceType"),
            "{e}"
        );
        let e = Properties::parse(&json!({"ImageId": "ami-1", "Placement": {"Zone": "a"}}))
            .expect_err("nested typo");
        assert!(e.message.contains("Placement"), "{e}");
        let e = Properties::parse(&json!({"ImageId": "ami-1", "UserData": "x"})).expect_err("ud");
        assert!(e.message.contains("Init"), "{e}");
        let e = Properties::parse(&json!({"ImageId": "ami-1", "SecretAccessKey": "x"}))
            .expect_err("creds");
        assert!(e.message.contains("credentials never go in a spec"), "{e}");
        let e = Properties::parse(&json!({"InstanceType": "t3.micro"})).expect_err("no image");
        assert!(e.message.contains("ImageId"), "{e}");
        let e = Properties::parse(&json!({"ImageId": "ami-1", "Endpoint": "localhost:5000"}))
            .expect_err("endpoint");
        assert!(e.message.contains("http://"), "{e}");
    }
}
