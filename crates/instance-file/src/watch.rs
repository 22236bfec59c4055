//! Learning which names in the instance directory changed, from Linux inotify, so a describe
//! re-reads those files only instead of listing and stat-ing the whole directory.
//!
//! The kernel queues an event from within the system call that changes a directory entry or
//! writes a file (before that call returns), so an event for every change made before a describe
//! started is already queued when the describe drains the queue. A [`Watch`] therefore vouches
//! for every name it did not report, until it says it cannot ([`Watch::changes`] fails): events
//! were lost, or the path no longer names the directory that is watched.
//!
//! What inotify cannot see, and how that is handled:
//! - changes made on another machine (network file systems) or behind a FUSE server: only file
//!   systems known to be local are watched ([`local_file_system`]); elsewhere every describe stats
//!   every file, as it did before;
//! - a file changed through another hard link (a name outside the directory): reported for that
//!   other directory only, so the caller keeps stat-checking files that have more than one link
//!   (a link made elsewhere only after the file was read is not noticed: making it sends no event
//!   here, so such a change waits for the file's next event or the next scan);
//! - writes through a shared memory mapping: no event at all (nor, until the page is written
//!   back, a new modification time); nobody edits instance records that way.

use std::collections::BTreeSet;
use std::path::Path;

/// A live inotify watch on one directory.
#[cfg(target_os = "linux")]
pub(super) struct Watch {
    /// The inotify instance, non-blocking; dropping it closes it, which removes the watch.
    fd: rustix::fd::OwnedFd,
    /// The watched directory's (device, inode) when the watch was set.
    identity: (u64, u64),
    /// Where events are read into; kept so a describe does not allocate it each time.
    buffer: Vec<std::mem::MaybeUninit<u8>>,
}

/// No inotify on this system: [`Watch::start`] always fails, so every describe stats every file.
#[cfg(not(target_os = "linux"))]
pub(super) enum Watch {}

#[cfg(target_os = "linux")]
mod linux {
    use std::mem::MaybeUninit;
    use std::os::unix::fs::MetadataExt;

    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    use rustix::io::Errno;

    use super::*;

    /// Room for at least 64 events with the longest names; one read takes as many as fit.
    const BUFFER_BYTES: usize = 64 * (16 + 256);

    impl Watch {
        /// Starts watching `dir`; the error says why it cannot be watched (the caller then stats
        /// every file, which is slower but complete).
        pub(in super::super) fn start(dir: &Path) -> Result<Watch, String> {
            let fs = rustix::fs::statfs(dir)
                .map_err(|e| format!("cannot tell the file system of {}: {e}", dir.display()))?;
            // `f_type` is a C long on most targets; the magic numbers are all 32-bit.
            let magic = fs.f_type as u32;
            if !local_file_system(magic) {
                return Err(format!(
                    "{} is on a file system (type {magic:#x}) where change notifications may \
                     miss changes made elsewhere; every describe will stat every file",
                    dir.display()
                ));
            }
            // The identity is taken before the watch is set: if the path changes to another
            // directory in between, the next describe sees a different identity and rescans,
            // rather than trusting a watch on a directory the path no longer names.
            let identity = identity(dir)?;
            let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).map_err(|e| {
                format!(
                    "cannot create an inotify instance: {e} (if the limit is reached, raise \
                     fs.inotify.max_user_instances); every describe will stat every file"
                )
            })?;
            let events = WatchFlags::CREATE
                | WatchFlags::DELETE
                | WatchFlags::MODIFY
                | WatchFlags::CLOSE_WRITE
                | WatchFlags::MOVED_FROM
                | WatchFlags::MOVED_TO
                | WatchFlags::ATTRIB
                | WatchFlags::DELETE_SELF
                | WatchFlags::MOVE_SELF
                | WatchFlags::ONLYDIR;
            inotify::add_watch(&fd, dir, events).map_err(|e| {
                let hint = if e == Errno::NOSPC {
                    " (the watch limit is reached: raise fs.inotify.max_user_watches)"
                } else {
                    ""
                };
                format!(
                    "cannot watch {} for changes: {e}{hint}; every describe will stat every file",
                    dir.display()
                )
            })?;
            Ok(Watch {
                fd,
                identity,
                buffer: vec![MaybeUninit::uninit(); BUFFER_BYTES],
            })
        }

        /// Adds to `changed` every name in the directory that was created, removed, renamed,
        /// written or had its attributes changed since the last call (names that are not UTF-8
        /// are left out: they are never instances). Fails, saying why, when the watch can no
        /// longer vouch for the directory; the caller must then drop it and list the directory.
        pub(in super::super) fn changes(
            &mut self,
            dir: &Path,
            changed: &mut BTreeSet<String>,
        ) -> Result<(), String> {
            let mut reader = inotify::Reader::new(&self.fd, &mut self.buffer);
            loop {
                let event = match reader.next() {
                    Ok(event) => event,
                    // Drained: everything that happened before this call has been seen.
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(format!("cannot read change events: {e}")),
                };
                let flags = event.events();
                if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                    return Err("change events were lost (the inotify queue overflowed)".into());
                }
                if flags.intersects(
                    ReadFlags::DELETE_SELF
                        | ReadFlags::MOVE_SELF
                        | ReadFlags::UNMOUNT
                        | ReadFlags::IGNORED,
                ) {
                    return Err("the directory was removed, moved or unmounted".into());
                }
                match event.file_name() {
                    Some(name) => {
                        if let Ok(name) = name.to_str() {
                            changed.insert(name.to_string());
                        }
                    }
                    // Any other event without a name is about the directory itself (its
                    // permissions, say): rather than reason about what that hides, list it again.
                    None => return Err("the directory's attributes changed".into()),
                }
            }
            // Events cover the watched inode only: a renamed parent, a re-pointed symlink or a
            // mount on top make the path name another directory without any event here.
            if identity(dir)? != self.identity {
                return Err("the path now names another directory".into());
            }
            Ok(())
        }
    }

    /// So the change feed can wait for the watch's events on the async runtime.
    impl std::os::fd::AsRawFd for Watch {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            std::os::fd::AsRawFd::as_raw_fd(&self.fd)
        }
    }

    fn identity(dir: &Path) -> Result<(u64, u64), String> {
        let meta = std::fs::metadata(dir)
            .map_err(|e| format!("cannot stat the directory {}: {e}", dir.display()))?;
        Ok((meta.dev(), meta.ino()))
    }
}

/// File systems where every change to a directory is made through this kernel, so inotify sees
/// it. Network and cluster file systems (NFS, SMB, Ceph, 9p, ...) and FUSE are not on the list:
/// changes made by another client or by the FUSE server produce no event here. Unknown types are
/// not trusted: they are only slower (every describe stats every file), never wrong.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn local_file_system(magic: u32) -> bool {
    const LOCAL: &[u32] = &[
        0xEF53,      // ext2, ext3, ext4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x8584_58F6, // ramfs
        0x794C_7630, // overlayfs (container root file systems; changes made through the overlay)
        0xF2F5_2010, // f2fs
        0x2FC1_2FC1, // zfs
        0xCA45_1A4E, // bcachefs
        0x3153_464A, // jfs
        0x5265_4973, // reiserfs
        0x3434,      // nilfs
        0x4D44,      // vfat, msdos
        0x2011_BAB0, // exfat
        0x7366_746E, // ntfs3
    ];
    LOCAL.contains(&magic)
}

#[cfg(not(target_os = "linux"))]
impl std::os::fd::AsRawFd for Watch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match *self {}
    }
}

#[cfg(not(target_os = "linux"))]
impl Watch {
    pub(super) fn start(_dir: &Path) -> Result<Watch, String> {
        Err("change notification needs Linux inotify; every describe will stat every file".into())
    }

    pub(super) fn changes(
        &mut self,
        _dir: &Path,
        _changed: &mut BTreeSet<String>,
    ) -> Result<(), String> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_file_systems_are_trusted() {
        assert!(local_file_system(0xEF53));
        assert!(local_file_system(0x0102_1994));
        // NFS, SMB2, FUSE, 9p, Ceph.
        for remote in [0x6969, 0xFE53_4D42, 0x6573_5546, 0x0102_1997, 0x00C3_6400] {
            assert!(!local_file_system(remote), "{remote:#x}");
        }
    }
}
