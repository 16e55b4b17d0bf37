// SPDX-License-Identifier: GPL-2.0

//! A pool of freed [`Pages`] per order, for heaps that allocate the same sizes over and over.
//!
//! - A freed chunk goes on its order's dirty list; a worker on the system workqueue zeroes it
//!   and moves it to the clean list, so the zeroing is paid off the allocation path (a single
//!   page is zeroed as it is freed instead). Only clean chunks are handed out: a pooled page
//!   is always zero when a heap maps it.
//! - The pool holds at most `limit` base pages; what does not fit is freed at once.
//! - A shrinker hands the pool back to the page allocator under memory pressure (dirty chunks
//!   first: nobody paid to zero them yet).
//! - Every list lives under one spinlock and has its full capacity reserved up front, so no
//!   pool operation allocates memory (and none can recurse into the shrinker).
//!
//! C header: [`include/linux/shrinker.h`](srctree/include/linux/shrinker.h).

use super::*;
use crate::{
    alloc::flags::GFP_NOWAIT,
    alloc::KVVec,
    c_str, new_spinlock,
    sync::{Arc, SpinLock},
    workqueue::{self, impl_has_work, new_work, Work, WorkItem},
};
use core::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};

/// The chunks of one order.
struct OrderLists {
    order: u32,
    /// Zeroed, ready to hand out.
    clean: KVVec<Pages>,
    /// Freed by a buffer, not zeroed yet.
    dirty: KVVec<Pages>,
}

/// What the pool did, for a heap's statistics.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
    /// Base pages the pool holds (clean, dirty and being zeroed).
    pub pages: u64,
    /// Base pages waiting to be zeroed.
    pub dirty_pages: u64,
    /// Chunks handed out from the pool.
    pub hits: u64,
    /// Chunks asked for while the pool had none of that order clean.
    pub misses: u64,
    /// Base pages the worker zeroed.
    pub zeroed_pages: u64,
    /// Base pages the shrinker gave back to the page allocator.
    pub shrunk_pages: u64,
    /// Base pages freed at once because the pool was full or off.
    pub refused_pages: u64,
}

/// A page pool; see the module documentation.
///
/// # Invariants
///
/// - `pooled` is the number of base pages in the lists plus those the worker is zeroing.
/// - Every list's capacity is at least `limit >> order`, so a push under `lists` never
///   allocates.
/// - `shrinker`, when not null, is a registered shrinker whose `private_data` points to this
///   pool; it is freed before the pool is.
#[pin_data]
pub struct PagePool {
    /// First, so it is dropped (unregistered) before anything its callbacks read.
    shrinker: ShrinkerRegistration,
    #[pin]
    lists: SpinLock<KVec<OrderLists>>,
    #[pin]
    work: Work<PagePool>,
    limit: usize,
    enabled: AtomicBool,
    pooled: AtomicUsize,
    dirty: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    zeroed: AtomicU64,
    shrunk: AtomicU64,
    refused: AtomicU64,
}

/// The pool's shrinker, freed on drop.
///
/// # Invariants
///
/// The pointer is null or a shrinker registered by [`PagePool::register_shrinker`].
struct ShrinkerRegistration(AtomicPtr<bindings::shrinker>);

impl Drop for ShrinkerRegistration {
    fn drop(&mut self) {
        let s = self.0.swap(core::ptr::null_mut(), AcqRel);
        if !s.is_null() {
            // SAFETY: `s` is registered (type invariant); once `shrinker_free` returns no
            // callback runs or will run.
            unsafe { bindings::shrinker_free(s) };
        }
    }
}

/// Chunks up to this order are zeroed as they are freed, the rest by the worker: waking the
/// worker for one page cost more than clearing it (4 KiB alloc+close, perf kernel: 1.37x
/// the C heap with the worker, against 1.12x with no pool at all).
const ZERO_INLINE_MAX_ORDER: u32 = 0;

/// `SHRINK_STOP`: a scan that cannot make progress.
const SHRINK_STOP: crate::ffi::c_ulong = crate::ffi::c_ulong::MAX;

impl_has_work! {
    impl HasWork<Self> for PagePool { self.work }
}

/// Appends `p` to `v` without allocating; false if it did not fit (then `p` was freed).
/// The lists' reserved capacity (type invariant of [`PagePool`]) makes that unreachable.
fn push(v: &mut KVVec<Pages>, p: Pages) -> bool {
    if v.len() == v.capacity() {
        return false;
    }
    // Within capacity, `push` does not allocate, so the flags are never used.
    v.push(p, GFP_NOWAIT).is_ok()
}

impl PagePool {
    /// A pool for chunks of the given orders holding at most `limit` base pages, on, with
    /// its shrinker registered under `name`.
    pub fn new(name: &'static CStr, orders: &[u32], limit: usize) -> Result<Arc<Self>> {
        let mut lists = KVec::with_capacity(orders.len(), GFP_KERNEL)?;
        for &order in orders {
            let cap = limit >> order;
            lists.push(
                OrderLists {
                    order,
                    clean: KVVec::with_capacity(cap, GFP_KERNEL)?,
                    dirty: KVVec::with_capacity(cap, GFP_KERNEL)?,
                },
                GFP_KERNEL,
            )?;
        }
        // INVARIANT: the lists are empty and have their capacity; no shrinker yet.
        let pool = Arc::pin_init(
            pin_init!(PagePool {
                lists <- new_spinlock!(lists, "PagePool::lists"),
                work <- new_work!("PagePool::work"),
                limit,
                enabled: AtomicBool::new(true),
                pooled: AtomicUsize::new(0),
                dirty: AtomicUsize::new(0),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                zeroed: AtomicU64::new(0),
                shrunk: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                shrinker: ShrinkerRegistration(AtomicPtr::new(core::ptr::null_mut())),
            }),
            GFP_KERNEL,
        )?;
        pool.register_shrinker(name)?;
        Ok(pool)
    }

    fn register_shrinker(&self, name: &'static CStr) -> Result {
        // SAFETY: "%s" with one C string argument matches the format.
        let s = unsafe {
            bindings::shrinker_alloc(0, c_str!("%s").as_char_ptr(), compat::c_str_ptr(name))
        };
        if s.is_null() {
            return Err(ENOMEM);
        }
        // SAFETY: `s` is a freshly allocated, unregistered shrinker we may fill in. The pool
        // is pinned in an `Arc` and frees the shrinker before anything else of it
        // (`ShrinkerRegistration` is its first field), so `private_data` stays valid for
        // every callback.
        unsafe {
            (*s).count_objects = Some(Self::count_objects);
            (*s).scan_objects = Some(Self::scan_objects);
            (*s).seeks = bindings::DEFAULT_SEEKS as _;
            (*s).private_data = (self as *const Self).cast_mut().cast();
            bindings::shrinker_register(s);
        }
        // INVARIANT: `s` is registered and points to this pool.
        self.shrinker.0.store(s, Release);
        Ok(())
    }

    /// A clean chunk of `order`, if the pool is on and has one.
    pub fn take(&self, order: u32) -> Option<Pages> {
        if !self.enabled.load(Relaxed) {
            return None;
        }
        let got = {
            let mut lists = self.lists.lock();
            lists
                .iter_mut()
                .find(|l| l.order == order)
                .and_then(|l| compat::kvvec_pop(&mut l.clean))
        };
        match &got {
            Some(p) => {
                self.pooled.fetch_sub(p.count(), Relaxed);
                self.hits.fetch_add(1, Relaxed);
            }
            None => {
                self.misses.fetch_add(1, Relaxed);
            }
        }
        got
    }

    /// Takes `pages` back: onto its order's dirty list if the pool is on and has room (the
    /// worker zeroes it later), freed at once otherwise.
    pub fn give(self: &Arc<Self>, mut pages: Pages) {
        let n = pages.count();
        if self.enabled.load(Relaxed) && self.reserve(n) {
            // A single page costs less to clear here than waking the worker for it.
            let clean = pages.order() <= ZERO_INLINE_MAX_ORDER;
            if clean {
                pages.zero();
                self.zeroed.fetch_add(n as u64, Relaxed);
            }
            let placed = {
                let mut lists = self.lists.lock();
                match lists.iter_mut().find(|l| l.order == pages.order()) {
                    Some(l) if clean => push(&mut l.clean, pages),
                    Some(l) => {
                        // Counted under the lock, so the worker never takes it off first.
                        self.dirty.fetch_add(n, Relaxed);
                        let placed = push(&mut l.dirty, pages);
                        if !placed {
                            self.dirty.fetch_sub(n, Relaxed);
                        }
                        placed
                    }
                    None => false,
                }
            };
            if placed {
                if !clean {
                    // Already queued is fine: the queued run zeroes this chunk too.
                    let _ = workqueue::system().enqueue(self.clone());
                }
                return;
            }
            self.pooled.fetch_sub(n, Relaxed);
        }
        // Not pooled (off, full, or an order the pool does not keep): `pages` was dropped
        // (freed) above or is freed here.
        self.refused.fetch_add(n as u64, Relaxed);
    }

    /// Counts `n` more pages in the pool if they fit under the limit.
    fn reserve(&self, n: usize) -> bool {
        self.pooled
            .fetch_update(AcqRel, Acquire, |p| {
                p.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Turns the pool on or off; off gives every pooled page back to the page allocator.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Relaxed);
        if !on {
            self.release(usize::MAX);
        }
    }

    /// Whether the pool is on.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Frees up to `want` base pages from the lists, dirty chunks first; returns how many.
    fn release(&self, want: usize) -> usize {
        let mut freed = 0;
        while freed < want {
            let (chunk, was_dirty) = {
                let mut lists = self.lists.lock();
                let mut found = None;
                // Smallest orders first: they free the fewest pages per chunk, so a small
                // request is not paid with a whole 1 MiB chunk.
                for l in lists.iter_mut().rev() {
                    if let Some(p) = compat::kvvec_pop(&mut l.dirty) {
                        found = Some((p, true));
                        break;
                    }
                }
                if found.is_none() {
                    for l in lists.iter_mut().rev() {
                        if let Some(p) = compat::kvvec_pop(&mut l.clean) {
                            found = Some((p, false));
                            break;
                        }
                    }
                }
                match found {
                    Some(f) => f,
                    None => break,
                }
            };
            let n = chunk.count();
            if was_dirty {
                self.dirty.fetch_sub(n, Relaxed);
            }
            self.pooled.fetch_sub(n, Relaxed);
            freed += n;
            drop(chunk);
        }
        freed
    }

    /// Zeroes dirty chunks until none is left.
    fn zero_dirty(&self) {
        loop {
            let next = {
                let mut lists = self.lists.lock();
                lists
                    .iter_mut()
                    .find_map(|l| compat::kvvec_pop(&mut l.dirty))
            };
            let Some(mut chunk) = next else {
                return;
            };
            let n = chunk.count();
            self.dirty.fetch_sub(n, Relaxed);
            chunk.zero();
            self.zeroed.fetch_add(n as u64, Relaxed);
            let placed = self.enabled.load(Relaxed) && {
                let mut lists = self.lists.lock();
                match lists.iter_mut().find(|l| l.order == chunk.order()) {
                    Some(l) => push(&mut l.clean, chunk),
                    None => false,
                }
            };
            if !placed {
                // Turned off while it was being zeroed: freed (by `push` or just below).
                self.pooled.fetch_sub(n, Relaxed);
            }
            cond_resched();
        }
    }

    /// What the pool has done so far.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            pages: self.pooled.load(Relaxed) as u64,
            dirty_pages: self.dirty.load(Relaxed) as u64,
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            zeroed_pages: self.zeroed.load(Relaxed),
            shrunk_pages: self.shrunk.load(Relaxed),
            refused_pages: self.refused.load(Relaxed),
        }
    }

    /// # Safety
    ///
    /// `s` must be a shrinker this pool registered (its `private_data` is the pool).
    unsafe fn from_shrinker<'a>(s: *mut bindings::shrinker) -> &'a Self {
        // SAFETY: by the caller's contract `private_data` is the pool, which outlives its
        // registered shrinker (type invariant).
        unsafe { &*(*s).private_data.cast::<Self>() }
    }

    /// # Safety
    ///
    /// Called by the shrinker core with a shrinker this pool registered.
    unsafe extern "C" fn count_objects(
        s: *mut bindings::shrinker,
        _sc: *mut bindings::shrink_control,
    ) -> crate::ffi::c_ulong {
        // SAFETY: the core passes our own shrinker.
        let pool = unsafe { Self::from_shrinker(s) };
        pool.pooled.load(Relaxed) as _
    }

    /// # Safety
    ///
    /// Called by the shrinker core with a shrinker this pool registered and a valid
    /// `shrink_control`.
    unsafe extern "C" fn scan_objects(
        s: *mut bindings::shrinker,
        sc: *mut bindings::shrink_control,
    ) -> crate::ffi::c_ulong {
        // SAFETY: the core passes our own shrinker and a valid control block.
        let (pool, want) = unsafe { (Self::from_shrinker(s), (*sc).nr_to_scan as usize) };
        let freed = pool.release(want);
        pool.shrunk.fetch_add(freed as u64, Relaxed);
        if freed == 0 {
            SHRINK_STOP
        } else {
            freed as _
        }
    }
}

impl WorkItem for PagePool {
    type Pointer = Arc<PagePool>;

    fn run(this: Arc<PagePool>) {
        this.zero_dirty();
    }
}
