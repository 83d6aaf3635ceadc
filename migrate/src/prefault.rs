//! Touching fresh memory one 4 KiB page fault at a time costs more than copying into it (about
//! a microsecond a fault: 25 ms for 64 MiB). Where we are about to fill a large region, ask
//! the kernel to back it with huge pages, and fault them in from user space, one huge page a
//! fault. Not with `MADV_POPULATE_WRITE`: that populates the whole region in one system call,
//! and a kernel built without preemption (as many are) runs it to its end, tens of milliseconds
//! for 64 MiB, while every thread woken on that core waits (BENCHMARKS.md, 2026-12-07).

/// Below this, faults are cheap enough and the system calls are not worth it.
const MIN: usize = 2 << 20;

/// A zeroed buffer, populated up front when large: for a caller about to fill it.
pub fn zeroed(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    populate(&mut v);
    v
}

/// Ask for huge pages under `region`, unused yet (best effort).
pub(crate) fn advise<T>(region: &mut [T]) {
    let len = std::mem::size_of_val(region);
    if len < MIN {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let page = 4096usize;
        let start = (region.as_mut_ptr() as usize).next_multiple_of(page);
        let end = (region.as_mut_ptr() as usize + len) / page * page;
        if end > start {
            // SAFETY: the range lies inside `region`, which we borrow mutably; the advice
            // leaves its contents as they are.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}

/// Populate the pages under `region` (its contents do not change). Best effort: on kernels or
/// platforms without huge pages, pages fault in as usual.
pub(crate) fn populate(region: &mut [u8]) {
    if region.len() < MIN {
        return;
    }
    advise(region);
    // One write per huge page (where there are none, the others fault in as they are filled);
    // each fault returns to user space, where the thread can be preempted.
    let step = 2 << 20;
    let first = region.as_ptr().align_offset(step);
    let mut at = first;
    while at < region.len() {
        // SAFETY: in bounds; a volatile write of the byte already there changes nothing but
        // keeps the compiler from dropping the store.
        unsafe {
            let p = region.as_mut_ptr().add(at);
            std::ptr::write_volatile(p, std::ptr::read_volatile(p));
        }
        at += step;
    }
}
