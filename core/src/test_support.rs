//! What the crate's own unit tests share: the seed of a randomized test,
//! and a probe of the largest single allocation a call makes on the
//! calling thread.
//!
//! The unit tests of this crate run in one binary, in parallel threads, so
//! a process-wide counter would see every other test's allocations too.
//! The counting allocator below keeps its count per thread instead: a
//! measurement sees what the measured call allocates on the thread that
//! makes it, and nothing any other test does at the same time.

/// Counts, per thread, the largest single allocation since the last reset.
#[allow(unsafe_code)]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        // A const-initialised `Cell<usize>` has no destructor and needs no
        // lazy initialisation, so reading it inside the allocator never
        // allocates and works at any point of a thread's life.
        pub(super) static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn record(size: usize) {
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    }

    pub(super) struct Counting;

    // SAFETY: every call is forwarded unchanged to the system allocator; the
    // wrapper only records sizes in a thread-local cell.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            record(layout.size());
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            record(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            record(new_size);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// Runs `f` and returns its result with the size of the largest single
/// allocation (or reallocation) it made on this thread. The result is
/// dropped by the caller, after the measurement.
pub(crate) fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    counting::LARGEST.with(|largest| largest.set(0));
    let out = std::hint::black_box(f());
    (out, counting::LARGEST.with(|largest| largest.get()))
}

// One seed rule for the unit tests and for the integration tests, which
// include the same file (`core/tests/common/mod.rs`).
#[path = "test_seed.rs"]
mod seed;
pub(crate) use seed::test_seed;
