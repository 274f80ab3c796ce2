//! Allocation failure as an astro error: one `error:` line and exit status 1, instead of Rust's
//! default (a `memory allocation of N bytes failed` abort, exit 134).
//!
//! Hand-written because stable Rust has no hook for allocation failure (`set_alloc_error_hook` is
//! unstable) and no crate provides one: the global allocator itself reports a null result before
//! the standard library would abort. It must not allocate, so the message is formatted into a
//! stack buffer and written with `write(2)`. Most oversized runs never get here: the memory check
//! before a model is built (`astro_model::memory`) refuses them with the estimate and its keys.

use std::alloc::{GlobalAlloc, Layout};
use std::fmt::Write as _;

/// Wraps an allocator; a failed allocation ends the process with an astro error.
pub struct ExitOnOom<A>(pub A);

// SAFETY: every method forwards to the inner allocator unchanged; a null result never returns.
unsafe impl<A: GlobalAlloc> GlobalAlloc for ExitOnOom<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        checked(unsafe { self.0.alloc(layout) }, layout.size())
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        checked(unsafe { self.0.alloc_zeroed(layout) }, layout.size())
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        checked(unsafe { self.0.realloc(ptr, layout, new_size) }, new_size)
    }
}

fn checked(ptr: *mut u8, size: usize) -> *mut u8 {
    if ptr.is_null() && size > 0 {
        out_of_memory(size);
    }
    ptr
}

/// A fixed buffer that `write!` fills without allocating (overflow is cut off).
struct StackText {
    buf: [u8; 512],
    len: usize,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[cold]
fn out_of_memory(size: usize) -> ! {
    let mut text = StackText { buf: [0; 512], len: 0 };
    let (mut value, mut unit) = (size as f64, 0);
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    let _ = writeln!(
        text,
        "error: out of memory: allocating {value:.1} {} failed; this work needs more memory than the machine \
         gives it. Lower the model's size, the batch or the context (astro's memory estimate passed: if \
         ASTRO_MEMORY is set, it may be larger than what is really available)",
        units[unit]
    );
    // SAFETY: writing a valid buffer to stderr and ending the process; no allocation, no unwinding.
    #[cfg(unix)]
    unsafe {
        libc::write(2, text.buf.as_ptr().cast(), text.len);
        libc::_exit(1);
    }
    #[cfg(not(unix))]
    {
        std::process::abort();
    }
}
