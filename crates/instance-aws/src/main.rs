//! The `infrakit-instance-aws` binary: the EC2 instance plugin as a process.
//!
//! It listens on `$INFRAKIT_PLUGIN_SOCKET`, else `$INFRAKIT_PLUGINS_DIR/instance-aws.sock`
//! (default `~/.infrakit/plugins`). Configuration is the AWS SDK's environment (AWS_REGION,
//! AWS_ENDPOINT_URL, AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_MAX_ATTEMPTS, ...)
//! plus INFRAKIT_AWS_STATE_DIR and INFRAKIT_AWS_POLL_SECONDS; see docs/ec2.md.

use std::process::ExitCode;

use infrakit_instance_aws::{AwsInstancePlugin, NAME};
use infrakit_sdk::prelude::*;

fn main() -> ExitCode {
    if std::env::args()
        .nth(1)
        .is_some_and(|a| a == "--help" || a == "-h")
    {
        println!(
            "infrakit-instance-aws: the InfraKit instance plugin for Amazon EC2.\n\
             Serves on $INFRAKIT_PLUGIN_SOCKET or $INFRAKIT_PLUGINS_DIR/{NAME}.sock.\n\
             Configured by the AWS SDK's environment (AWS_REGION, AWS_ENDPOINT_URL, AWS_PROFILE, ...)\n\
             and INFRAKIT_AWS_STATE_DIR; see docs/ec2.md."
        );
        return ExitCode::SUCCESS;
    }
    drop_empty_settings();
    infrakit_sdk::run::main(RunOptions::new(NAME), || async {
        let plugin = AwsInstancePlugin::from_env().await?;
        Ok(Plugins::new().instance(plugin))
    })
}

/// A managed plugin's settable variables exist even when nobody set them (`AWS_REGION=`); the SDK
/// would take an empty one as a region, endpoint or profile named "". Unset, they mean "not set".
/// Runs first thing, while the process has one thread.
fn drop_empty_settings() {
    let empty: Vec<String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
        .filter(|(k, v)| (k.starts_with("AWS_") || k.starts_with("INFRAKIT_AWS_")) && v.is_empty())
        .map(|(k, _)| k)
        .collect();
    for k in empty {
        std::env::remove_var(k);
    }
}
