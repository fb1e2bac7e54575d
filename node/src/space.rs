//! Free space on the file system that holds the data directory (ADR 010).
//!
//! It owns one question, "how many bytes may still be written there?", asked with `statvfs`
//! and answered from a cache at most [`MAX_AGE`] old, so that checking on every upload request
//! and every metadata write costs no syscall storm. It knows nothing of blobs or metadata:
//! the blob store applies the upload reserve ([`Reserve`]) and `meta` its write floor.
//!
//! Invariants:
//! - Only bytes available to an unprivileged writer count (`f_bavail`): the blocks a file
//!   system keeps for root are not counted on, even though berth may run as root.
//! - A failed `statvfs` is reported, never guessed: callers decide (and both let the write go
//!   ahead, since a wrong refusal would be an outage of its own).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How old a cached answer may be.
pub const MAX_AGE: Duration = Duration::from_millis(100);

/// Space on one file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes a new write may still take.
    pub available: u64,
    /// Size of the file system.
    pub total: u64,
}

/// `statvfs` of the file system holding `path`.
pub fn statvfs(path: &Path) -> io::Result<Usage> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `st` points to writable memory of
    // the right type; statvfs writes only into it.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    Ok(Usage {
        available: st.f_bavail.saturating_mul(st.f_frsize),
        total: st.f_blocks.saturating_mul(st.f_frsize),
    })
}

/// The free space of one directory's file system, cached for [`MAX_AGE`].
#[derive(Debug)]
pub struct DiskSpace {
    path: PathBuf,
    cached: Mutex<Option<(Instant, Usage)>>,
}

impl DiskSpace {
    /// Watches the file system that holds `path` (which must exist when asked).
    pub fn new(path: impl Into<PathBuf>) -> DiskSpace {
        DiskSpace {
            path: path.into(),
            cached: Mutex::new(None),
        }
    }

    /// The directory this watches.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The space now, or as measured at most [`MAX_AGE`] ago.
    ///
    /// Errors: the `statvfs` error (the cache is not used then).
    pub fn usage(&self) -> io::Result<Usage> {
        let mut cached = self.cached.lock().expect("disk space cache poisoned");
        if let Some((at, usage)) = *cached
            && at.elapsed() < MAX_AGE
        {
            return Ok(usage);
        }
        let usage = statvfs(&self.path)?;
        *cached = Some((Instant::now(), usage));
        Ok(usage)
    }
}

/// Free space kept back from blob uploads, so that metadata (manifests, tags, the Raft log)
/// can still be written when blobs have filled the disk.
///
/// The reserve of a file system of `total` bytes is the larger of `bytes` and `percent` % of
/// `total`, but never more than half of `total` (a small disk still takes uploads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserve {
    /// Bytes kept free at least.
    pub bytes: u64,
    /// Share of the file system kept free at least, in percent.
    pub percent: u8,
}

impl Reserve {
    /// No reserve: uploads may fill the disk.
    pub const NONE: Reserve = Reserve {
        bytes: 0,
        percent: 0,
    };

    /// The reserve in bytes on a file system of `total` bytes.
    pub fn of(&self, total: u64) -> u64 {
        let share = (total as u128 * u128::from(self.percent) / 100) as u64;
        self.bytes.max(share).min(total / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_the_larger_rule_capped_at_half_the_disk() {
        const GIB: u64 = 1024 * 1024 * 1024;
        let r = Reserve {
            bytes: GIB,
            percent: 5,
        };
        assert_eq!(r.of(100 * GIB), 5 * GIB);
        assert_eq!(r.of(10 * GIB), GIB);
        assert_eq!(r.of(GIB), GIB / 2, "capped at half a small disk");
        assert_eq!(r.of(0), 0);
        assert_eq!(Reserve::NONE.of(100 * GIB), 0);
        let huge = Reserve {
            bytes: u64::MAX,
            percent: 100,
        };
        assert_eq!(huge.of(u64::MAX), u64::MAX / 2, "no overflow");
    }

    #[test]
    fn usage_is_measured_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::new(dir.path());
        let asked = Instant::now();
        let first = space.usage().unwrap();
        assert!(
            first.total > 0 && first.available <= first.total,
            "{first:?}"
        );
        // Within MAX_AGE the same answer comes back without asking the kernel again.
        std::fs::write(dir.path().join("f"), vec![0u8; 1 << 20]).unwrap();
        let again = space.usage().unwrap();
        if asked.elapsed() < MAX_AGE {
            assert_eq!(again, first);
        }
        assert!(DiskSpace::new(dir.path().join("missing")).usage().is_err());
    }
}
