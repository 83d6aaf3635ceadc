//! Touching fresh memory one 4 KiB page fault at a time costs more than copying into it (about
//! a microsecond a fault: 25 ms for 64 MiB). Where we are about to fill a large region, ask
//! the kernel to back it with huge pages and populate it in one call instead.

/// Below this, faults are cheap enough and the system calls are not worth it.
const MIN: usize = 2 << 20;

/// A zeroed buffer, populated up front when large: for a caller about to fill it.
pub fn zeroed(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    populate(&mut v);
    v
}

/// Populate the pages under `region` (its contents do not change). Best effort: on kernels or
/// platforms without the advice, pages fault in as usual.
pub(crate) fn populate(region: &mut [u8]) {
    if region.len() < MIN {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let page = 4096usize;
        let start = (region.as_mut_ptr() as usize).next_multiple_of(page);
        let end = (region.as_mut_ptr() as usize + region.len()) / page * page;
        if end > start {
            // SAFETY: the range lies inside `region`, which we borrow mutably; both advices
            // leave the contents as they are (MADV_POPULATE_WRITE faults pages in as a write of
            // their current contents would).
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
                libc::madvise(
                    start as *mut libc::c_void,
                    end - start,
                    libc::MADV_POPULATE_WRITE,
                );
            }
        }
    }
}
