//! Which pages of a linear memory were written since the last look, from the kernel: the
//! memory is registered with userfaultfd in asynchronous write-protect mode, and the
//! `PAGEMAP_SCAN` ioctl (Linux 6.7+) lists the written pages and protects them again in one
//! call. A pre-copy round then costs a scan and the hashing of what changed, not a hash of the
//! whole memory; that is what keeps the freeze short for large states.
//!
//! Anything that fails here (an older kernel, a seccomp filter, a non-Linux host) makes
//! [`WriteTracker::new`] return an error, and the caller falls back to hashing every page.
//! No crate covers `PAGEMAP_SCAN` yet, so the few kernel structures are declared here.

use crate::hash::PAGE_SIZE;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// <linux/userfaultfd.h>
const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

const fn iowr(ty: u8, nr: u8, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

const UFFDIO_API: u64 = iowr(0xAA, 0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = iowr(0xAA, 0x00, size_of::<UffdioRegister>());
const UFFDIO_WRITEPROTECT: u64 = iowr(0xAA, 0x06, size_of::<UffdioWriteprotect>());

// <linux/fs.h>
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

const PAGEMAP_SCAN: u64 = iowr(b'f', 16, size_of::<PmScanArg>());

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Tracks writes to one memory region `[base, base + len)`; the region may grow.
pub struct WriteTracker {
    uffd: OwnedFd,
    pagemap: File,
    base: usize,
    /// Bytes registered so far.
    len: usize,
    regions: Vec<PageRegion>,
}

impl WriteTracker {
    /// Start tracking: from now on every write to the region is recorded. `base` must be
    /// page-aligned and stay mapped while the tracker lives.
    pub fn new(base: *mut u8, len: usize) -> io::Result<WriteTracker> {
        let base = base as usize;
        if !base.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(io::Error::other("region is not page-aligned"));
        }
        // SAFETY: plain syscall; the fd it returns is ours to own.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC
                | UFFD_FEATURE_WP_UNPOPULATED
                | UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
            ioctls: 0,
        };
        // SAFETY: the ioctl reads and writes `api`, a live struct of the declared layout.
        check(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API as _, &mut api) })?;
        let mut t = WriteTracker {
            uffd,
            pagemap: File::open("/proc/self/pagemap")?,
            base,
            len: 0,
            regions: vec![PageRegion::default(); 512],
        };
        t.grow(len)?;
        Ok(t)
    }

    /// Register and write-protect `[base + self.len, base + len)`.
    fn grow(&mut self, len: usize) -> io::Result<()> {
        if len <= self.len {
            return Ok(());
        }
        let range = UffdioRange {
            start: (self.base + self.len) as u64,
            len: (len - self.len) as u64,
        };
        let mut reg = UffdioRegister {
            range,
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: the ioctls read (and for REGISTER write) live structs of the declared layout;
        // the range is mapped memory of this process.
        check(unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_REGISTER as _, &mut reg) })?;
        let mut wp = UffdioWriteprotect {
            range,
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        check(unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_WRITEPROTECT as _, &mut wp) })?;
        self.len = len;
        Ok(())
    }

    /// The pages (indexes from `base`) written since the last call or since tracking began,
    /// protected again as they are reported. `base` and `len` are where the region is now:
    /// pages it grew by count as written; if it moved (a memory that grows by moving, as on
    /// 32-bit hosts, where Wasmtime reserves little address space), the tracker no longer
    /// sees it and says so, and the caller hashes every page.
    pub fn take_written(&mut self, base: *const u8, len: usize) -> io::Result<Vec<u32>> {
        if base as usize != self.base {
            return Err(io::Error::other("the memory moved since tracking began"));
        }
        let mut written = Vec::new();
        let end = self.base + self.len;
        let mut start = self.base;
        while start < end {
            let mut arg = PmScanArg {
                size: size_of::<PmScanArg>() as u64,
                flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                start: start as u64,
                end: end as u64,
                walk_end: 0,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: PAGE_IS_WRITTEN,
                category_anyof_mask: 0,
                return_mask: PAGE_IS_WRITTEN,
            };
            // SAFETY: the kernel writes at most `vec_len` regions into `self.regions`.
            let n = unsafe { libc::ioctl(self.pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            for r in &self.regions[..n as usize] {
                let first = (r.start as usize - self.base) / PAGE_SIZE;
                let last = (r.end as usize - self.base) / PAGE_SIZE;
                written.extend(first as u32..last as u32);
            }
            if arg.walk_end as usize <= start {
                break;
            }
            start = arg.walk_end as usize;
        }
        let old = self.len;
        if len > old {
            written.extend((old / PAGE_SIZE) as u32..(len / PAGE_SIZE) as u32);
            self.grow(len)?;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_exactly_the_pages_written_then_starts_over() {
        let len = 64 * PAGE_SIZE;
        let mut mem = vec![0u8; len + PAGE_SIZE];
        let off = mem.as_ptr().align_offset(PAGE_SIZE);
        let region = &mut mem[off..off + len];
        let mut t = match WriteTracker::new(region.as_mut_ptr(), len) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("no kernel write tracking here ({e}); the fallback is tested elsewhere");
                return;
            }
        };
        region[3 * PAGE_SIZE + 7] = 1;
        region[40 * PAGE_SIZE] = 2;
        region[41 * PAGE_SIZE + 100] = 3;
        let base = region.as_ptr();
        assert_eq!(t.take_written(base, len).unwrap(), vec![3, 40, 41]);
        assert_eq!(t.take_written(base, len).unwrap(), Vec::<u32>::new());
        region[3 * PAGE_SIZE] = 9;
        assert_eq!(t.take_written(base, len).unwrap(), vec![3]);
        // A memory that moved is not one this tracker sees.
        assert!(t.take_written(base.wrapping_add(PAGE_SIZE), len).is_err());
    }
}
