//! Starting one VM: its overlay disk, what the guest reads over fw_cfg, the QEMU command line,
//! QEMU itself (daemonized, so it outlives the plugin) and its tap on the bridge.
//!
//! QEMU runs with `-daemonize`: it forks, starts a new session (so a signal to the plugin's process
//! group or session never reaches it), and the process we started exits 0 only once the VM is set
//! up (or non-zero with the reason on stderr). The pid file and the QMP socket in the VM's
//! directory are how the plugin finds it again.
//!
//! The tap is QEMU's own (`-netdev tap,ifname=...` without `script`): the kernel removes it when
//! QEMU exits, however it exits, so a killed VM leaves no interface behind.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use infrakit_sdk::{Error, Result};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::accel::Accel;
use crate::properties::{mac_prefix_bytes, parse_size, BootFiles, Properties};
use crate::record::{self, VmDir};

/// The programs the plugin runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub ip: PathBuf,
}

impl Default for Tools {
    fn default() -> Tools {
        Tools {
            qemu: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            ip: "ip".into(),
        }
    }
}

/// Everything about one VM that is decided before QEMU starts.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    pub dir: VmDir,
    pub props: Properties,
    pub boot: BootFiles,
    pub accel: Accel,
    pub tap: Option<String>,
    pub mac: Option<String>,
    pub address: Option<Ipv4Addr>,
    pub hostname: String,
    pub logical_id: Option<String>,
}

/// The tap's name: `ik` and 12 hex digits of the ID's hash (15 characters at most, as Linux
/// wants, and unique per VM).
pub fn tap_name(id: &str) -> String {
    let hash = Sha256::digest(id.as_bytes());
    format!("ik{}", &hex::encode(hash)[..12])
}

/// The MAC address: the prefix and three bytes of the hash of the LogicalID, or else the ID, so a
/// pet re-created at the same logical ID keeps its MAC (and the neighbours' ARP caches stay right).
pub fn mac_address(prefix: &str, logical_id: Option<&str>, id: &str) -> Result<String> {
    let p = mac_prefix_bytes(prefix)?;
    let hash = Sha256::digest(logical_id.unwrap_or(id).as_bytes());
    Ok(format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        p[0], p[1], p[2], hash[0], hash[1], hash[2]
    ))
}

/// A host name for the guest: the LogicalID when it is one, else the ID.
pub fn hostname(logical_id: Option<&str>, id: &str) -> String {
    match logical_id {
        Some(l)
            if !l.is_empty()
                && l.len() <= 63
                && l.parse::<Ipv4Addr>().is_err()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            l.to_string()
        }
        _ => id.to_string(),
    }
}

/// Quotes `s` for a POSIX shell (the guest sources `meta`).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `meta`: shell variables the guest's init sources (`INFRAKIT_IP`, ...).
pub fn meta_file(plan: &Plan) -> String {
    let mut out = String::new();
    let mut var = |k: &str, v: &str| {
        out.push_str(&format!("{k}={}\n", shell_quote(v)));
    };
    var("INFRAKIT_ID", &plan.id);
    var("INFRAKIT_HOSTNAME", &plan.hostname);
    if let Some(l) = &plan.logical_id {
        var("INFRAKIT_LOGICAL_ID", l);
    }
    if let Some(a) = plan.address {
        var("INFRAKIT_IP", &a.to_string());
        if let Some(net) = &plan.props.network {
            var("INFRAKIT_PREFIX", &net.prefix.to_string());
            if let Some(g) = net.gateway {
                var("INFRAKIT_GATEWAY", &g.to_string());
            }
        }
    }
    out
}

/// QEMU's arguments for `plan`.
pub fn qemu_args(plan: &Plan, has_init: bool) -> Vec<String> {
    let d = &plan.dir;
    let path = |name: &str| d.path(name).display().to_string();
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!("infrakit-{},process=qemu-{}", plan.id, plan.id),
        "-accel".into(),
        plan.accel.qemu_arg().into(),
        "-m".into(),
        plan.props.memory.to_string(),
        "-smp".into(),
        plan.props.cpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        // A guest that powers off or panics ends QEMU (the kernel is told panic=-1: reboot at once).
        "-no-reboot".into(),
        "-serial".into(),
        format!("file:{}", path(record::CONSOLE)),
        "-drive".into(),
        format!("file={},if=none,id=disk0,format=qcow2", path(record::DISK)),
        "-device".into(),
        "virtio-blk-pci,drive=disk0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", path(record::QMP_SOCKET)),
        "-pidfile".into(),
        path(record::PID_FILE),
        "-fw_cfg".into(),
        format!("name=opt/infrakit/meta,file={}", path(record::META)),
        "-fw_cfg".into(),
        format!("name=opt/infrakit/tags,file={}", path(record::TAGS)),
    ];
    if has_init {
        args.push("-fw_cfg".into());
        args.push(format!(
            "name=opt/infrakit/init,file={}",
            path(record::INIT)
        ));
    }
    if let Some(kernel) = &plan.boot.kernel {
        args.push("-kernel".into());
        args.push(kernel.display().to_string());
        if let Some(initrd) = &plan.boot.initrd {
            args.push("-initrd".into());
            args.push(initrd.display().to_string());
        }
        let mut append = format!(
            "console=ttyS0 root=/dev/vda rw quiet panic=-1 infrakit.id={}",
            plan.id
        );
        if !plan.props.kernel_args.is_empty() {
            append.push(' ');
            append.push_str(&plan.props.kernel_args);
        }
        args.push("-append".into());
        args.push(append);
    }
    if let (Some(tap), Some(mac)) = (&plan.tap, &plan.mac) {
        args.push("-netdev".into());
        args.push(format!("tap,id=net0,ifname={tap},script=no,downscript=no"));
        args.push("-device".into());
        // No option ROM: the guest does not boot from the network, and QEMU would otherwise
        // refuse to start where iPXE's ROMs (package ipxe-qemu, a recommendation only) are absent,
        // as in the managed plugin's rootfs.
        args.push(format!("virtio-net-pci,netdev=net0,mac={mac},romfile="));
    }
    args.push("-daemonize".into());
    args
}

/// Runs a program to its end; a failure says what ran and what it printed.
async fn run(program: &Path, args: &[String]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            Error::unavailable(format!(
                "cannot run {}: {e}; install it (scripts/setup-vm.sh) or point the plugin at it",
                program.display()
            ))
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(Error::internal(format!(
        "{} {} failed ({}): {}",
        program.display(),
        args.join(" "),
        out.status,
        stderr.trim()
    )))
}

/// The base image's format, from its first bytes (qcow2 files start with `QFI\xfb`).
fn image_format(image: &Path) -> Result<&'static str> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(image)
        .map_err(|e| Error::invalid(format!("Image {} cannot be read: {e}", image.display())))?;
    let n = f.read(&mut magic).unwrap_or(0);
    Ok(if n == 4 && magic == *b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    })
}

/// Writes everything the VM needs into its directory and starts QEMU; returns QEMU's pid.
pub async fn launch(tools: &Tools, plan: &Plan, init: &str, tags_json: &[u8]) -> Result<i32> {
    let d = &plan.dir;
    if let Some(net) = &plan.props.network {
        let bridge = Path::new("/sys/class/net").join(&net.bridge).join("bridge");
        if !bridge.exists() {
            return Err(Error::invalid(format!(
                "Network.Bridge {} is not a bridge in the plugin's network namespace; create it \
                 (ip link add {} type bridge) or name another",
                net.bridge, net.bridge
            )));
        }
    }
    let format = image_format(&plan.boot.image)?;
    let mut img_args = vec![
        "create".to_string(),
        "-q".into(),
        "-f".into(),
        "qcow2".into(),
        "-b".into(),
        plan.boot.image.display().to_string(),
        "-F".into(),
        format.into(),
        d.path(record::DISK).display().to_string(),
    ];
    if let Some(size) = &plan.props.disk_size {
        img_args.push(parse_size(size)?.to_string());
    }
    run(&tools.qemu_img, &img_args).await?;
    d.write(record::META, meta_file(plan).as_bytes())?;
    d.write(record::TAGS, tags_json)?;
    if !init.is_empty() {
        d.write(record::INIT, init.as_bytes())?;
    }
    run(&tools.qemu, &qemu_args(plan, !init.is_empty())).await?;
    let pid = d.pid().ok_or_else(|| {
        Error::internal(format!(
            "QEMU started but wrote no pid file in {}",
            d.0.display()
        ))
    })?;
    if let (Some(tap), Some(net)) = (&plan.tap, &plan.props.network) {
        let args: Vec<String> = ["link", "set", "dev", tap, "master", &net.bridge, "up"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        run(&tools.ip, &args).await?;
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_stable_and_quoted() {
        assert_eq!(tap_name("vm-1").len(), 14);
        assert_eq!(tap_name("vm-1"), tap_name("vm-1"));
        assert_ne!(tap_name("vm-1"), tap_name("vm-2"));
        let a = mac_address("52:54:00", Some("10.0.0.2"), "vm-1").unwrap();
        let b = mac_address("52:54:00", Some("10.0.0.2"), "vm-2").unwrap();
        assert_eq!(a, b, "a pet keeps its MAC");
        assert!(a.starts_with("52:54:00:"));
        assert_eq!(hostname(Some("zk-1"), "vm-1"), "zk-1");
        assert_eq!(hostname(Some("10.0.0.2"), "vm-1"), "vm-1");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
