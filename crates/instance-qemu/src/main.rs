//! `infrakit-instance-qemu`: serves the QEMU instance plugin on a unix socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use infrakit_instance_qemu::accel::Accel;
use infrakit_instance_qemu::launch::Tools;
use infrakit_instance_qemu::{properties, Config, QemuPlugin};
use infrakit_sdk::prelude::*;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AccelArg {
    /// KVM when /dev/kvm can run a stock guest here, else TCG.
    Auto,
    Kvm,
    Tcg,
}

/// An InfraKit instance plugin whose instances are QEMU virtual machines (see docs/vm.md).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The plugin's name (its socket is <name>.sock in the plugins directory).
    #[arg(long, default_value = "instance-qemu")]
    name: String,
    /// The socket to listen on (default: $INFRAKIT_PLUGINS_DIR/<name>.sock).
    #[arg(long, env = "INFRAKIT_PLUGIN_SOCKET")]
    socket: Option<PathBuf>,
    /// Where each VM's directory (record, QMP socket, overlay disk, console log) is kept.
    #[arg(
        long,
        env = "INFRAKIT_QEMU_STATE_DIR",
        default_value = "/var/lib/infrakit/instance-qemu"
    )]
    state_dir: PathBuf,
    /// The accelerator for VMs whose properties say `auto`.
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelArg,
    /// The QEMU system emulator.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// qemu-img (makes each VM's overlay disk).
    #[arg(long, default_value = "qemu-img")]
    qemu_img: PathBuf,
    /// iproute2's `ip` (puts each VM's tap on its bridge).
    #[arg(long, default_value = "ip")]
    ip: PathBuf,
    /// Print the JSON Schema of the instance properties and exit.
    #[arg(long)]
    schema: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.schema {
        match serde_json::to_string_pretty(&properties::schema()) {
            Ok(s) => {
                println!("{s}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut options = RunOptions::new(args.name.clone());
    if let Some(socket) = &args.socket {
        options = options.socket(socket);
    }
    let config = Config {
        state_dir: args.state_dir,
        tools: Tools {
            qemu: args.qemu,
            qemu_img: args.qemu_img,
            ip: args.ip,
        },
        accel: match args.accel {
            AccelArg::Auto => None,
            AccelArg::Kvm => Some(Accel::Kvm),
            AccelArg::Tcg => Some(Accel::Tcg),
        },
    };
    infrakit_sdk::run::main(options, move || async move {
        Ok(Plugins::new().instance(QemuPlugin::open(config)?))
    })
}
