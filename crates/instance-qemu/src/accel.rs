//! KVM or TCG: which accelerator runs the guests, decided once at start.
//!
//! `/dev/kvm` existing is not enough: on a machine that is itself a guest, the host may offer a
//! paravirtual KVM (`kvm_pvm`) that opens and creates VMs but cannot run a stock kernel (QEMU stops
//! with "KVM internal error ... emulation failure"). A KVM that can run a stock kernel needs the
//! CPU's hardware virtualization, which the CPU advertises as the `vmx` (Intel) or `svm` (AMD)
//! flag. So KVM is chosen when `/dev/kvm` opens read-write AND the CPU has one of those flags;
//! otherwise TCG (software emulation, some 10x slower but always works).

use std::fs::OpenOptions;

use crate::properties::AccelChoice;

/// The accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The `-accel` argument.
    pub fn qemu_arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            // A 32 MiB translation cache instead of QEMU's default (up to a quarter of guest
            // memory... or 1 GiB on 64-bit hosts): a 128 MiB guest then costs ~150 MiB on the host.
            Accel::Tcg => "tcg,tb-size=32",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What this host can use, and why (for the one line logged at start).
#[derive(Debug, Clone)]
pub struct Detected {
    pub accel: Accel,
    pub why: String,
}

/// Looks at `/dev/kvm` and the CPU flags.
pub fn detect() -> Detected {
    let opened = OpenOptions::new().read(true).write(true).open("/dev/kvm");
    if let Err(e) = opened {
        return Detected {
            accel: Accel::Tcg,
            why: format!("/dev/kvm cannot be opened ({e})"),
        };
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let hardware = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    if hardware {
        Detected {
            accel: Accel::Kvm,
            why: "/dev/kvm opens and the CPU has hardware virtualization (vmx/svm)".into(),
        }
    } else {
        Detected {
            accel: Accel::Tcg,
            why: "/dev/kvm opens but the CPU has no vmx/svm flag (a paravirtual KVM, as inside a \
                  cloud VM, cannot run a stock kernel)"
                .into(),
        }
    }
}

/// The accelerator for one VM: its own choice, or what the host has.
pub fn choose(choice: AccelChoice, host: Accel) -> Accel {
    match choice {
        AccelChoice::Auto => host,
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => Accel::Tcg,
    }
}
