//! Is the NanoPix root on a network share? Native file events are unreliable there, so the
//! watcher polls instead.
//!
//! Linux reads `/proc/mounts` (the mount with the longest matching mount point wins); Windows
//! treats a UNC path (`\\server\share`) as network, and so a mapped drive, which resolves to
//! one. This module only reads; it never mounts, resolves names or touches the share.

use std::path::Path;

/// Filesystem types whose files another machine, or Windows under WSL, writes: inotify never
/// hears of those writes.
#[cfg(target_os = "linux")]
const NETWORK_FILESYSTEMS: [&str; 18] = [
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "fuse.sshfs",
    "9p",
    "ceph",
    "glusterfs",
    "fuse.glusterfs",
    "afs",
    "lustre",
    "fuse.rclone",
    "fuse.gvfsd-fuse",
    "fuse.smbnetfs",
    "davfs",
    "ncpfs",
    "drvfs",
];

/// The network filesystem type `root` sits on, or `None` for a local folder (or when unknown).
#[cfg(target_os = "linux")]
pub(super) fn network_filesystem(root: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    mount_type(&mounts, &root).filter(|kind| NETWORK_FILESYSTEMS.contains(kind)).map(str::to_owned)
}

/// The network filesystem type `root` sits on, or `None` for a local folder.
#[cfg(windows)]
pub(super) fn network_filesystem(root: &Path) -> Option<String> {
    use std::path::{Component, Prefix};
    // A mapped drive (`Z:\PatientData`) resolves to the share behind it (`\\?\UNC\server\share`).
    let resolved = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    match resolved.components().next() {
        Some(Component::Prefix(prefix)) if matches!(prefix.kind(), Prefix::UNC(..) | Prefix::VerbatimUNC(..)) => {
            Some("UNC share".into())
        }
        _ => None,
    }
}

/// No network detection on this platform: native events are tried, and polling is the fallback.
#[cfg(not(any(target_os = "linux", windows)))]
pub(super) fn network_filesystem(_root: &Path) -> Option<String> {
    None
}

/// The filesystem type of the mount in `mounts` (`/proc/mounts` format) that holds `path`.
#[cfg(any(target_os = "linux", test))]
fn mount_type<'a>(mounts: &'a str, path: &Path) -> Option<&'a str> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let mount_point = unescape(fields.nth(1)?);
            let kind = fields.next()?;
            path.starts_with(&mount_point).then_some((mount_point.len(), kind))
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, kind)| kind)
}

/// Decodes the octal escapes `/proc/mounts` uses for spaces, tabs and backslashes (`\040`).
#[cfg(any(target_os = "linux", test))]
fn unescape(field: &str) -> String {
    let mut decoded = Vec::with_capacity(field.len());
    let mut rest = field.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        let escape = tail.split_at_checked(3).and_then(|(digits, after)| Some((octal_byte(digits)?, after)));
        rest = match escape {
            Some((byte, after)) if first == b'\\' => {
                decoded.push(byte);
                after
            }
            _ => {
                decoded.push(first);
                tail
            }
        };
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The byte written as three octal digits, if `digits` is that.
#[cfg(any(target_os = "linux", test))]
fn octal_byte(digits: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(digits).ok()?;
    u8::from_str_radix(text, 8).ok().filter(|_| digits.iter().all(u8::is_ascii_digit))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
server:/export /mnt/clinic nfs4 rw,relatime 0 0
/dev/sdb1 /mnt/clinic/local ext4 rw 0 0
//nas/x-ray /mnt/x-ray\\040share cifs rw 0 0
gluster1:/images /mnt/images fuse.glusterfs rw 0 0
C:\\134 /mnt/c drvfs rw,noatime 0 0
gvfsd-fuse /run/user/1000/gvfs fuse.gvfsd-fuse rw 0 0
";

    #[test]
    fn the_longest_mount_point_decides() {
        assert_eq!(mount_type(MOUNTS, Path::new("/mnt/clinic/PatientData")), Some("nfs4"));
        assert_eq!(mount_type(MOUNTS, Path::new("/mnt/clinic/local/PatientData")), Some("ext4"));
        assert_eq!(mount_type(MOUNTS, Path::new("/home/clinic/PatientData")), Some("ext4"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_cluster_filesystem_mounted_through_fuse_counts_as_network() {
        let kind = mount_type(MOUNTS, Path::new("/mnt/images/PatientData"));
        assert!(kind.is_some_and(|kind| NETWORK_FILESYSTEMS.contains(&kind)), "{kind:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_windows_drive_under_wsl_and_a_share_opened_in_the_desktop_count_as_network() {
        for path in ["/mnt/c/NanoPix/PatientData", "/run/user/1000/gvfs/smb-share:server=nas,share=x-ray"] {
            let kind = mount_type(MOUNTS, Path::new(path));
            assert!(kind.is_some_and(|kind| NETWORK_FILESYSTEMS.contains(&kind)), "{path}: {kind:?}");
        }
    }

    #[test]
    fn a_mount_point_matches_whole_components_only() {
        assert_eq!(mount_type(MOUNTS, Path::new("/mnt/clinicals/PatientData")), Some("ext4"));
    }

    #[test]
    fn escaped_spaces_in_mount_points_are_decoded() {
        assert_eq!(unescape("/mnt/x-ray\\040share"), "/mnt/x-ray share");
        assert_eq!(mount_type(MOUNTS, Path::new("/mnt/x-ray share/PatientData")), Some("cifs"));
        assert_eq!(unescape("/odd\\9x"), "/odd\\9x");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_local_temporary_folder_is_not_network() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(network_filesystem(dir.path()), None);
    }
}
