//! Concurrency and process boundaries: threads allocating, mapping and syncing at once;
//! kernel vmaps racing user SYNC brackets and the close of the original fd; dma-buf fds
//! passed between processes with SCM_RIGHTS; mappings inherited across fork.
//!
//! Every test is bounded in iterations and in wall time (the guest runs under TCG), and
//! leaves no thread, process, fd, mapping or importer hold behind when it returns: the
//! runner checks for leaked dma-bufs once the test's process is gone.

use std::fmt::Display;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::ensure;
use crate::harness::{Context, Ctx, Outcome, Stop};
use crate::uapi::importer::{checksum, IMPORTER_HOLD, IMPORTER_VMAP, OP_CHECKSUM};
use crate::uapi::{Access, DmaBuf, Heap, Importer, Mapping};

use super::{KIB, MIB};

const PAGE: usize = 4 * KIB as usize;

/// Length of one racing phase; with the iteration caps it keeps each test at a few seconds
/// under TCG (2 vCPUs).
const PHASE: Duration = Duration::from_secs(2);
/// How long a forked child may take to exit once its work is done, before it is killed.
const CHILD_EXIT_LIMIT: Duration = Duration::from_secs(5);
/// How long the parent waits for each reply from a forked child.
const REPLY_LIMIT: Duration = Duration::from_secs(5);
/// A forked child's own alarm, in case its parent hangs or dies without killing it.
const CHILD_ALARM_SECS: libc::c_uint = 10;
/// Exit code of a forked child whose body panicked.
const CHILD_PANICKED: i32 = 101;
/// Exit code of a forked child that lost its socket to the parent.
const CHILD_SOCKET_FAILED: i32 = 102;

// ---------------------------------------------------------------------------------------
// Content patterns

/// The byte at offset `i` of a buffer written with `seed`. Hashed, so it differs by offset
/// within a page, by page and by seed: a stale, shifted or foreign page shows.
fn pattern(seed: u32, i: usize) -> u8 {
    let mut x = (i as u32) ^ seed.wrapping_mul(0x9e37_79b9);
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 16;
    (x ^ (x >> 8)) as u8
}

/// Writes the pattern of `seed` into `bytes`, which start at offset `base` of their buffer.
fn fill(bytes: &mut [u8], base: usize, seed: u32) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = pattern(seed, base + i);
    }
}

/// The first byte of `bytes` (at offset `base`) that is not the pattern of `seed`:
/// (offset, read, expected).
fn first_mismatch(bytes: &[u8], base: usize, seed: u32) -> Option<(usize, u8, u8)> {
    bytes.iter().enumerate().find_map(|(i, &b)| {
        let want = pattern(seed, base + i);
        (b != want).then_some((base + i, b, want))
    })
}

/// Checks `bytes` (at offset `base`) against the pattern of `seed`; says where it first
/// differs and how much differs.
fn check(bytes: &[u8], base: usize, seed: u32) -> Result<(), String> {
    let Some((at, got, want)) = first_mismatch(bytes, base, seed) else {
        return Ok(());
    };
    let bad = bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b != pattern(seed, base + i))
        .count();
    Err(format!(
        "byte {at} reads {got:#04x}, expected {want:#04x} (pattern {seed:#x}); \
         {bad} of {} bytes differ",
        bytes.len()
    ))
}

/// A number that differs from run to run, to vary when the racing close happens.
fn jitter() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos ^ std::process::id().rotate_left(16))
}

// ---------------------------------------------------------------------------------------
// The test importer

use crate::expect::{importer as importer_or_skip, optional_importer as importer_if_present};

/// `IMPORTER_VMAP` with `OP_CHECKSUM` on a raw fd: (checksum, bytes mapped).
fn vmap_checksum(imp: &Importer, fd: RawFd) -> io::Result<(u64, u64)> {
    let a = imp.on_fd(IMPORTER_VMAP, fd, OP_CHECKSUM, 0)?;
    Ok((a.checksum, a.pages))
}

/// A vmap the importer holds. Holds belong to the importer device, not to the open file, so
/// one a failing test forgot would pin its buffer for good: drop releases it.
struct Hold<'a> {
    imp: &'a Importer,
    handle: Option<u64>,
}

impl<'a> Hold<'a> {
    fn take(imp: &'a Importer, fd: RawFd) -> io::Result<Hold<'a>> {
        let a = imp.on_fd(IMPORTER_HOLD, fd, OP_CHECKSUM, 0)?;
        Ok(Hold {
            imp,
            handle: Some(a.handle),
        })
    }

    /// Releases the hold: (checksum of the held mapping, bytes it covered).
    fn release(mut self) -> io::Result<(u64, u64)> {
        let handle = self.handle.take().unwrap_or_default();
        Self::release_handle(self.imp, handle)
    }

    fn release_handle(imp: &Importer, handle: u64) -> io::Result<(u64, u64)> {
        let a = imp.release(handle)?;
        Ok((a.checksum, a.pages))
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = Self::release_handle(self.imp, handle);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Forked children

enum Fork {
    Child,
    Parent(Kid),
}

/// Forks. The child must end in `child_main`, never return into the caller: the test
/// runner's process must not continue twice.
fn fork() -> Result<Fork, Stop> {
    // Anything buffered would otherwise be written once per process.
    let _ = io::stdout().flush();
    // SAFETY: each test runs in its own single-threaded process (the threaded tests join
    // their threads before returning and do not fork), so the child may run any code.
    let pid = unsafe { libc::fork() };
    match pid {
        p if p < 0 => Err(Stop::Fail(format!("fork: {}", io::Error::last_os_error()))),
        0 => Ok(Fork::Child),
        p => Ok(Fork::Parent(Kid {
            pid: p,
            reaped: false,
        })),
    }
}

/// Runs a forked child's body under its own alarm and exits with the body's code; a panic
/// exits with `CHILD_PANICKED` instead of unwinding into the runner.
fn child_main(body: impl FnOnce() -> i32) -> ! {
    // SAFETY: alarm has no memory-safety preconditions.
    unsafe { libc::alarm(CHILD_ALARM_SECS) };
    let code = catch_unwind(AssertUnwindSafe(body)).unwrap_or(CHILD_PANICKED);
    // SAFETY: _exit ends this process only, running no destructors or atexit handlers that
    // belong to the parent's state.
    unsafe { libc::_exit(code) }
}

/// A forked child; killed with SIGKILL and reaped on drop unless already reaped, so no
/// early return leaves a process (and the dma-buf references it holds) behind.
struct Kid {
    pid: libc::pid_t,
    reaped: bool,
}

impl Kid {
    /// Waits up to `limit` for the child to exit and returns its exit code; a child that
    /// overruns is killed, and one killed by a signal is reported as such.
    fn wait(&mut self, limit: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + limit;
        loop {
            let mut status = 0;
            // SAFETY: `pid` is our unreaped child and `status` a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                self.reaped = true;
                if libc::WIFEXITED(status) {
                    return Ok(libc::WEXITSTATUS(status));
                }
                let sig = libc::WTERMSIG(status);
                let why = if sig == libc::SIGALRM {
                    " (its own alarm: it hung)"
                } else {
                    ""
                };
                return Err(format!("child {} killed by signal {sig}{why}", self.pid));
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // ECHILD: nothing left to reap.
                self.reaped = true;
                return Err(format!("waitpid({}): {e}", self.pid));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "child {} still running after {limit:?}; killed it with SIGKILL",
                    self.pid
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: `pid` is our child and not yet reaped, so it names no other process.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        loop {
            let mut status = 0;
            // SAFETY: as above; `status` is a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        self.reaped = true;
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// SCM_RIGHTS

/// Control buffer for SCM_RIGHTS, aligned for `cmsghdr`; room for a few fds, so a peer
/// that sends more than one is detected rather than truncated.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// Sends all of `data` over a connected Unix stream socket, with `fd` attached to its first
/// byte as SCM_RIGHTS when given. MSG_NOSIGNAL: a dead peer is an EPIPE, not a SIGPIPE.
fn send_with_fd(sock: RawFd, data: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: msghdr is plain data, and all zeroes is an empty header (on every libc,
    // including padding fields some have).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        let one = std::mem::size_of::<RawFd>() as libc::c_uint;
        // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
        let (space, len) = unsafe { (libc::CMSG_SPACE(one), libc::CMSG_LEN(one)) };
        if space as usize > cbuf.0.len() {
            return Err(io::Error::other("control buffer too small for one fd"));
        }
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg_control` points at `space` zeroed bytes of `cbuf`, aligned for
        // cmsghdr and large enough for one header carrying one int, so CMSG_FIRSTHDR
        // returns a pointer to a header inside `cbuf` (checked for null anyway), and
        // CMSG_DATA points at the int's room after it; it may be unaligned, hence the
        // unaligned write.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            if c.is_null() {
                return Err(io::Error::other("CMSG_FIRSTHDR found no room"));
            }
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = len as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: `msg` points only at `iov` (which points at `data`) and `cbuf`, all of which
    // outlive the call; sendmsg only reads them.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut sent = n as usize;
    // A stream socket may take the record in pieces; the fd went with the first one.
    while sent < data.len() {
        let rest = &data[sent..];
        // SAFETY: `rest` is valid for reads of `rest.len()` bytes for the call.
        let n = unsafe { libc::send(sock, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

/// Receives exactly `buf.len()` bytes from a connected Unix stream socket, and the fd sent
/// with them if any (close-on-exec). The protocols here are lockstep (one record in flight
/// per direction), so the rest of a short read can never belong to a record carrying an fd.
fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<Option<OwnedFd>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: as in `send_with_fd`, an all-zero msghdr is an empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.0.len() as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (which points at `buf`) and `cbuf`, both writable
        // and alive for the call, with their true lengths.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            // SO_RCVTIMEO expired.
            io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no reply in time"))
            }
            _ => return Err(e),
        }
    };
    // Own every fd that arrived before anything can fail, so none leaks.
    let mut fds = Vec::new();
    // SAFETY: the kernel wrote `msg_controllen` bytes of well-formed control headers into
    // `cbuf`; CMSG_FIRSTHDR/CMSG_NXTHDR stay within them. An SCM_RIGHTS payload is ints
    // (read unaligned, as CMSG_DATA need not be aligned for int) that the kernel has just
    // installed in our fd table and that nothing else owns.
    unsafe {
        let header = libc::CMSG_LEN(0) as usize;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count =
                    ((*c).cmsg_len as usize).saturating_sub(header) / std::mem::size_of::<RawFd>();
                for k in 0..count {
                    let fd = std::ptr::read_unaligned(data.add(k));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("SCM_RIGHTS control data truncated"));
    }
    if n == 0 && !buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the socket",
        ));
    }
    let mut got = n;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes for the call.
        let n = unsafe { libc::recv(sock, rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the socket mid-record",
            ));
        }
        got += n as usize;
    }
    if fds.len() > 1 {
        return Err(io::Error::other(format!(
            "{} fds arrived with one record, expected at most one",
            fds.len()
        )));
    }
    Ok(fds.pop())
}

// =======================================================================================
// 1. threads_alloc_map_sync

const THREADS: usize = 4;
const THREAD_SIZES: [usize; 3] = [4 * KIB as usize, 64 * KIB as usize, MIB as usize];
/// Per-thread iteration cap; the deadline usually ends the loop first under TCG.
const THREAD_ITERS: u64 = 48;

/// Four threads each allocate, map, write, sync and verify buffers of 4 KiB, 64 KiB and
/// 1 MiB in turn, each with its own pattern, all at once.
pub fn threads_alloc_map_sync(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let started = Instant::now();
    let deadline = started + PHASE;
    let results: Vec<Result<u64, String>> = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                thread::Builder::new()
                    .name(format!("alloc-{t}"))
                    .spawn_scoped(s, move || alloc_map_sync_worker(heap, t, deadline))
            })
            .collect();
        workers
            .into_iter()
            .enumerate()
            .map(|(t, w)| match w {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(format!("thread {t} panicked"))),
                Err(e) => Err(format!("spawning thread {t}: {e}")),
            })
            .collect()
    });
    let failed = results.iter().filter(|r| r.is_err()).count();
    let mut iterations = Vec::with_capacity(THREADS);
    for r in results {
        match r {
            Ok(n) => iterations.push(n),
            Err(e) => {
                return Err(Stop::Fail(format!(
                    "{e} ({failed} of {THREADS} threads failed)"
                )))
            }
        }
    }
    ctx.diag(format!(
        "iterations per thread: {iterations:?} in {} ms",
        started.elapsed().as_millis()
    ));
    ctx.fact("threads", "4 x alloc/mmap/write/sync/verify: ok");
    Ok(())
}

/// One thread of `threads_alloc_map_sync`: returns how many buffers it checked.
fn alloc_map_sync_worker(heap: &Heap, t: usize, deadline: Instant) -> Result<u64, String> {
    for iter in 0..THREAD_ITERS {
        // Every thread covers each size once before the deadline may stop it.
        if iter >= THREAD_SIZES.len() as u64 && Instant::now() >= deadline {
            return Ok(iter);
        }
        let len = THREAD_SIZES[(t + iter as usize) % THREAD_SIZES.len()];
        let seed = ((t as u32) << 16) | iter as u32;
        let at = |step: &str, e: &dyn Display| {
            format!("thread {t}, iteration {iter}, {len}-byte buffer: {step}: {e}")
        };
        let buf = heap.alloc(len as u64).map_err(|e| at("alloc", &e))?;
        let mut map = buf.mmap(0, len).map_err(|e| at("mmap", &e))?;
        buf.sync_start(Access::Write)
            .map_err(|e| at("SYNC START|WRITE", &e))?;
        fill(map.as_mut_slice(), 0, seed);
        buf.sync_end(Access::Write)
            .map_err(|e| at("SYNC END|WRITE", &e))?;
        buf.sync_start(Access::Read)
            .map_err(|e| at("SYNC START|READ", &e))?;
        let seen = check(map.as_slice(), 0, seed);
        buf.sync_end(Access::Read)
            .map_err(|e| at("SYNC END|READ", &e))?;
        seen.map_err(|e| at("reading back what it wrote", &e))?;
    }
    Ok(THREAD_ITERS)
}

// =======================================================================================
// 2. vmap_sync_close_race

const RACE_LEN: usize = MIB as usize;
const RACE_SEED: u32 = 0x2ace;
/// Iteration caps per worker; each also stops at the end of the phase.
const RACE_VMAP_ITERS: u64 = 64;
const RACE_SYNC_ITERS: u64 = 2000;
const RACE_HOLD_ITERS: u64 = 64;

/// What the racing threads share.
struct Race {
    start: Instant,
    deadline: Instant,
    /// Set once the original fd is closed.
    closed: AtomicBool,
    /// Set by the first worker that fails, so the others stop early.
    failed: AtomicBool,
    /// Iterations done by all workers together (the closer waits for some).
    progress: AtomicU64,
}

/// How much one racing worker did.
#[derive(Debug)]
struct Ran {
    iterations: u64,
    after_close: u64,
}

impl Race {
    /// Runs `step` until `cap` iterations or the end of the phase, but always at least once
    /// after the original fd was closed, so every worker races the close. The closer fires
    /// by mid-phase, so a phase and a half is only a backstop.
    fn run(
        &self,
        who: &str,
        cap: u64,
        mut step: impl FnMut(u64) -> Result<(), String>,
    ) -> Result<Ran, String> {
        let backstop = self.deadline + PHASE / 2;
        let mut ran = Ran {
            iterations: 0,
            after_close: 0,
        };
        loop {
            if self.failed.load(Ordering::Relaxed) {
                return Ok(ran);
            }
            let closed = self.closed.load(Ordering::Acquire);
            if let Err(e) = step(ran.iterations) {
                self.failed.store(true, Ordering::Relaxed);
                let when = if closed { "after" } else { "before" };
                return Err(format!(
                    "{who}, iteration {} ({when} the original fd was closed): {e}",
                    ran.iterations
                ));
            }
            ran.iterations += 1;
            ran.after_close += u64::from(closed);
            self.progress.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            let done = ran.iterations >= cap || now >= self.deadline;
            if ran.after_close > 0 && done {
                return Ok(ran);
            }
            if now >= backstop {
                // A worker that never ran after the close did not race it: not a pass.
                return Err(format!(
                    "{who}: no iteration after the original fd was closed ({} before it, \
                     stopped at the backstop)",
                    ran.iterations
                ));
            }
        }
    }

    /// Closes the original fd after a varying amount of the workers' progress (or at
    /// mid-phase, whichever comes first); returns the progress at the close.
    fn close_mid_run<T>(&self, buf: T) -> u64 {
        let target = 8 + jitter() % 56;
        let latest = self.start + PHASE / 2;
        while self.progress.load(Ordering::Relaxed) < target
            && Instant::now() < latest
            && !self.failed.load(Ordering::Relaxed)
        {
            thread::sleep(Duration::from_micros(200));
        }
        let at = self.progress.load(Ordering::Relaxed);
        drop(buf);
        self.closed.store(true, Ordering::Release);
        at
    }
}

/// Kernel vmaps (one-shot and held), user SYNC brackets on other fds and the close of the
/// original fd, all at once on one buffer; then a held vmap outlives the last fd.
pub fn vmap_sync_close_race(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let imp = importer_or_skip()?;
    let buf = heap.alloc(RACE_LEN as u64).context("alloc 1 MiB")?;
    let sum = {
        let mut map = buf.mmap(0, RACE_LEN).context("mmap")?;
        buf.sync_start(Access::Write).context("SYNC START|WRITE")?;
        fill(map.as_mut_slice(), 0, RACE_SEED);
        buf.sync_end(Access::Write).context("SYNC END|WRITE")?;
        buf.sync_start(Access::Read).context("SYNC START|READ")?;
        let sum = checksum(map.as_slice());
        buf.sync_end(Access::Read).context("SYNC END|READ")?;
        sum
    };
    // Every worker gets its own fd before any thread starts: closing the original can then
    // never hand its number to something a worker uses.
    let dup_for = |who: &str| buf.try_clone().context(format!("dup for {who}"));
    let vmap_fd = dup_for("the vmap thread")?;
    let sync_fds = [dup_for("sync thread 0")?, dup_for("sync thread 1")?];
    let hold_fd = dup_for("the hold thread")?;
    let final_fd = dup_for("the final phase")?;

    let start = Instant::now();
    let race = Race {
        start,
        deadline: start + PHASE,
        closed: AtomicBool::new(false),
        failed: AtomicBool::new(false),
        progress: AtomicU64::new(0),
    };
    let (race, imp) = (&race, &imp);
    let results: Vec<Result<String, String>> = thread::scope(|s| {
        let mut spawned = Vec::new();
        spawned.push(
            thread::Builder::new()
                .name("closer".into())
                .spawn_scoped(s, move || {
                    let at = race.close_mid_run(buf);
                    Ok(format!("closer: closed the original fd at progress {at}"))
                }),
        );
        spawned.push(
            thread::Builder::new()
                .name("vmap".into())
                .spawn_scoped(s, move || {
                    let ran = race.run("vmap thread", RACE_VMAP_ITERS, |_| {
                        let (got, len) = vmap_checksum(imp, vmap_fd.raw_fd())
                            .map_err(|e| format!("IMPORTER_VMAP: {e}"))?;
                        expect_checksum("IMPORTER_VMAP", got, len, sum)
                    })?;
                    Ok(format!("vmap: {ran:?}"))
                }),
        );
        for (k, fd) in sync_fds.into_iter().enumerate() {
            spawned.push(
                thread::Builder::new()
                    .name(format!("sync-{k}"))
                    .spawn_scoped(s, move || {
                        let who = format!("sync thread {k}");
                        let ran = sync_reader(race, &who, fd)?;
                        Ok(format!("{who}: {ran:?}"))
                    }),
            );
        }
        spawned.push(
            thread::Builder::new()
                .name("hold".into())
                .spawn_scoped(s, move || {
                    let ran = race.run("hold thread", RACE_HOLD_ITERS, |_| {
                        let hold = Hold::take(imp, hold_fd.raw_fd())
                            .map_err(|e| format!("IMPORTER_HOLD: {e}"))?;
                        let (got, len) = hold
                            .release()
                            .map_err(|e| format!("IMPORTER_RELEASE: {e}"))?;
                        expect_checksum("IMPORTER_RELEASE", got, len, sum)
                    })?;
                    Ok(format!("hold: {ran:?}"))
                }),
        );
        spawned
            .into_iter()
            .map(|w| match w {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err("a racing thread panicked".to_string())),
                Err(e) => {
                    // The threads already running must not wait for the closer.
                    race.failed.store(true, Ordering::Relaxed);
                    Err(format!("spawning a racing thread: {e}"))
                }
            })
            .collect()
    });
    let mut report = Vec::new();
    for r in results {
        report.push(r.map_err(Stop::Fail)?);
    }
    ctx.diag(format!(
        "race ({} ms): {}",
        start.elapsed().as_millis(),
        report.join("; ")
    ));
    ctx.fact(
        "race",
        "vmap + hold/release + 2 x SYNC READ + close of the original fd: content ok",
    );

    // The last fd closes while the importer holds a vmap: the hold alone keeps the buffer.
    let hold = Hold::take(imp, final_fd.raw_fd()).context("IMPORTER_HOLD (final phase)")?;
    drop(final_fd);
    let (got, len) = hold
        .release()
        .context("IMPORTER_RELEASE after the last fd was closed")?;
    expect_checksum(
        "IMPORTER_RELEASE after the last fd was closed",
        got,
        len,
        sum,
    )
    .map_err(Stop::Fail)?;
    ctx.fact("held vmap after the last fd closed", "content intact");
    Ok(())
}

/// A kernel checksum must cover the whole racing buffer and equal what user space wrote.
fn expect_checksum(what: &str, got: u64, len: u64, want: u64) -> Result<(), String> {
    if len != RACE_LEN as u64 {
        return Err(format!("{what} covered {len} bytes, expected {RACE_LEN}"));
    }
    if got != want {
        return Err(format!(
            "{what} checksum {got:#018x}, expected {want:#018x} (what user space wrote)"
        ));
    }
    Ok(())
}

/// A racing SYNC READ thread: brackets on its own fd, checking one page (a different one
/// each time) through its own mapping inside each bracket.
fn sync_reader(race: &Race, who: &str, buf: DmaBuf) -> Result<Ran, String> {
    let map = buf
        .mmap(0, RACE_LEN)
        .map_err(|e| format!("{who}: mmap: {e}"))?;
    race.run(who, RACE_SYNC_ITERS, |n| {
        let page = (n as usize * 7) % (RACE_LEN / PAGE);
        let base = page * PAGE;
        buf.sync_start(Access::Read)
            .map_err(|e| format!("SYNC START|READ: {e}"))?;
        let seen = check(&map.as_slice()[base..base + PAGE], base, RACE_SEED);
        buf.sync_end(Access::Read)
            .map_err(|e| format!("SYNC END|READ: {e}"))?;
        seen
    })
}

// =======================================================================================
// 3. scm_rights_handoff

const HANDOFF_SIZES: [u64; 8] = [
    4 * KIB,
    8 * KIB,
    16 * KIB,
    64 * KIB,
    128 * KIB,
    256 * KIB,
    512 * KIB,
    MIB,
];
/// The buffer the child sends back after rewriting it.
const RETURNED: usize = HANDOFF_SIZES.len() - 1;

fn parent_seed(i: usize) -> u32 {
    0x9a00 + i as u32
}

fn child_seed(i: usize) -> u32 {
    0xc400 + i as u32
}

/// Parent to child: which buffer and how long (the fd rides along as SCM_RIGHTS).
fn encode_offer(index: usize, len: u64) -> [u8; 16] {
    let mut b = [0; 16];
    b[..8].copy_from_slice(&(index as u64).to_le_bytes());
    b[8..].copy_from_slice(&len.to_le_bytes());
    b
}

fn decode_offer(b: &[u8; 16]) -> (u64, u64) {
    let mut index = [0; 8];
    let mut len = [0; 8];
    index.copy_from_slice(&b[..8]);
    len.copy_from_slice(&b[8..]);
    (u64::from_le_bytes(index), u64::from_le_bytes(len))
}

/// Child to parent: what the child found in one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    code: u8,
    got: u8,
    want: u8,
    /// The offset of a mismatch, the size seen, or the errno of a failed call.
    at: u64,
}

impl Verdict {
    const OK: u8 = 0;
    const BAD_OFFER: u8 = 1;
    const NO_FD: u8 = 2;
    const WRONG_SIZE: u8 = 3;
    const MMAP_FAILED: u8 = 4;
    const SYNC_FAILED: u8 = 5;
    const MISMATCH: u8 = 6;
    const LSEEK_FAILED: u8 = 7;

    fn new(code: u8, at: u64) -> Verdict {
        Verdict {
            code,
            got: 0,
            want: 0,
            at,
        }
    }

    fn errno(code: u8, e: &io::Error) -> Verdict {
        Verdict::new(code, e.raw_os_error().unwrap_or(0) as u64)
    }

    fn encode(self) -> [u8; 16] {
        let mut b = [0; 16];
        b[0] = self.code;
        b[1] = self.got;
        b[2] = self.want;
        b[8..].copy_from_slice(&self.at.to_le_bytes());
        b
    }

    fn decode(b: &[u8; 16]) -> Verdict {
        let mut at = [0; 8];
        at.copy_from_slice(&b[8..]);
        Verdict {
            code: b[0],
            got: b[1],
            want: b[2],
            at: u64::from_le_bytes(at),
        }
    }

    fn describe(self, len: u64, seed: u32) -> String {
        let at = self.at;
        match self.code {
            Verdict::OK => "ok".to_string(),
            Verdict::BAD_OFFER => "the child got a record for another buffer".to_string(),
            Verdict::NO_FD => "the child received no fd with the record".to_string(),
            Verdict::WRONG_SIZE => format!("the received fd has size {at}, expected {len}"),
            Verdict::LSEEK_FAILED => format!("lseek on the received fd failed with errno {at}"),
            Verdict::MMAP_FAILED => format!("mmap of the received fd failed with errno {at}"),
            Verdict::SYNC_FAILED => format!("SYNC on the received fd failed with errno {at}"),
            Verdict::MISMATCH => format!(
                "byte {at} reads {:#04x} in the child, the parent wrote {:#04x} \
                 (pattern {seed:#x})",
                self.got, self.want
            ),
            c => format!("unknown verdict code {c}"),
        }
    }
}

/// A dma-buf crosses to a forked child with SCM_RIGHTS while the parent closes its copy at
/// once; the child verifies and rewrites it and sends one buffer back, which the parent
/// verifies through a fresh mapping.
pub fn scm_rights_handoff(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let (ours, theirs) = UnixStream::pair().context("socketpair(AF_UNIX, SOCK_STREAM)")?;
    ours.set_read_timeout(Some(REPLY_LIMIT))
        .context("SO_RCVTIMEO")?;
    let started = Instant::now();
    let mut kid = match fork()? {
        Fork::Child => {
            drop(ours);
            child_main(move || handoff_child(&theirs))
        }
        Fork::Parent(kid) => kid,
    };
    drop(theirs);
    let sock = ours.as_raw_fd();
    for (i, &len) in HANDOFF_SIZES.iter().enumerate() {
        let buf = heap
            .alloc(len)
            .context(format!("alloc buffer {i} ({len} bytes)"))?;
        {
            let mut map = buf.mmap(0, len as usize).context("mmap")?;
            buf.sync_start(Access::Write).context("SYNC START|WRITE")?;
            fill(map.as_mut_slice(), 0, parent_seed(i));
            buf.sync_end(Access::Write).context("SYNC END|WRITE")?;
        }
        send_with_fd(sock, &encode_offer(i, len), Some(buf.raw_fd()))
            .context(format!("sending buffer {i} with SCM_RIGHTS"))?;
        // From here the fd in flight, then the child's, is the only reference.
        drop(buf);
        let mut reply = [0; 16];
        let back = recv_with_fd(sock, &mut reply)
            .context(format!("the child's verdict on buffer {i} ({len} bytes)"))?;
        let verdict = Verdict::decode(&reply);
        ensure!(
            verdict.code == Verdict::OK,
            "buffer {i} ({len} bytes) in the child: {}",
            verdict.describe(len, parent_seed(i))
        );
        match (back, i == RETURNED) {
            (Some(fd), true) => check_returned(fd, len, child_seed(i))
                .map_err(|e| Stop::Fail(format!("buffer {i} back from the child: {e}")))?,
            (None, true) => {
                return Err(Stop::Fail(format!(
                    "the child's verdict on buffer {i} came without the fd it should send back"
                )))
            }
            (Some(_), false) => {
                return Err(Stop::Fail(format!(
                    "the child's verdict on buffer {i} came with an unexpected fd"
                )))
            }
            (None, false) => {}
        }
    }
    let code = kid.wait(CHILD_EXIT_LIMIT).map_err(Stop::Fail)?;
    ensure!(
        code == 0,
        "the child exited with {code}, expected 0: {}",
        child_exit_meaning(code)
    );
    ctx.diag(format!(
        "{} buffers handed off and checked in {} ms",
        HANDOFF_SIZES.len(),
        started.elapsed().as_millis()
    ));
    ctx.fact(
        "SCM_RIGHTS handoff, sender's copy closed at once",
        "8 buffers (4 KiB..1 MiB) verified in the child",
    );
    ctx.fact(
        "buffer sent back after the child's writes",
        "child's pattern visible through a fresh mapping",
    );
    Ok(())
}

/// The parent's check of the buffer the child rewrote and sent back.
fn check_returned(fd: OwnedFd, len: u64, seed: u32) -> Result<(), String> {
    let buf = DmaBuf::from_fd(fd).map_err(|e| format!("lseek: {e}"))?;
    if buf.len != len {
        return Err(format!("size {}, expected {len}", buf.len));
    }
    let map = buf
        .mmap(0, len as usize)
        .map_err(|e| format!("mmap: {e}"))?;
    buf.sync_start(Access::Read)
        .map_err(|e| format!("SYNC START|READ: {e}"))?;
    let seen = check(map.as_slice(), 0, seed);
    buf.sync_end(Access::Read)
        .map_err(|e| format!("SYNC END|READ: {e}"))?;
    seen.map_err(|e| format!("the child's writes: {e}"))
}

/// The forked child of `scm_rights_handoff`: exit code 0 only if every buffer verified.
fn handoff_child(sock: &UnixStream) -> i32 {
    let sock = sock.as_raw_fd();
    let mut all_ok = true;
    for (i, &len) in HANDOFF_SIZES.iter().enumerate() {
        let mut offer = [0; 16];
        let Ok(fd) = recv_with_fd(sock, &mut offer) else {
            return CHILD_SOCKET_FAILED;
        };
        let (verdict, back) = take_offer(i, len, &offer, fd);
        all_ok &= verdict.code == Verdict::OK;
        let back_fd = back.as_ref().map(DmaBuf::raw_fd);
        if send_with_fd(sock, &verdict.encode(), back_fd).is_err() {
            return CHILD_SOCKET_FAILED;
        }
        // `back`, the child's copy, closes here; the one in flight keeps the buffer.
    }
    i32::from(!all_ok)
}

/// Verifies the parent's pattern in a received buffer and writes the child's; returns the
/// verdict and, for the buffer that goes back, its fd.
fn take_offer(
    i: usize,
    len: u64,
    offer: &[u8; 16],
    fd: Option<OwnedFd>,
) -> (Verdict, Option<DmaBuf>) {
    if decode_offer(offer) != (i as u64, len) {
        return (Verdict::new(Verdict::BAD_OFFER, 0), None);
    }
    let Some(fd) = fd else {
        return (Verdict::new(Verdict::NO_FD, 0), None);
    };
    let buf = match DmaBuf::from_fd(fd) {
        Ok(buf) if buf.len == len => buf,
        Ok(buf) => return (Verdict::new(Verdict::WRONG_SIZE, buf.len), None),
        Err(e) => return (Verdict::errno(Verdict::LSEEK_FAILED, &e), None),
    };
    let mut map = match buf.mmap(0, len as usize) {
        Ok(m) => m,
        Err(e) => return (Verdict::errno(Verdict::MMAP_FAILED, &e), None),
    };
    let bracket = |r: io::Result<()>| r.map_err(|e| Verdict::errno(Verdict::SYNC_FAILED, &e));
    let verified = (|| {
        bracket(buf.sync_start(Access::Read))?;
        let seen = first_mismatch(map.as_slice(), 0, parent_seed(i));
        bracket(buf.sync_end(Access::Read))?;
        if let Some((at, got, want)) = seen {
            return Err(Verdict {
                code: Verdict::MISMATCH,
                got,
                want,
                at: at as u64,
            });
        }
        bracket(buf.sync_start(Access::Write))?;
        fill(map.as_mut_slice(), 0, child_seed(i));
        bracket(buf.sync_end(Access::Write))
    })();
    drop(map);
    match verified {
        Err(v) => (v, None),
        Ok(()) if i == RETURNED => (Verdict::new(Verdict::OK, 0), Some(buf)),
        Ok(()) => (Verdict::new(Verdict::OK, 0), None),
    }
}

// =======================================================================================
// 4. fork_with_live_mappings

const FORK_LEN: usize = 256 * KIB as usize;
const SEED_A: u32 = 0xa0a0;
const SEED_B: u32 = 0xb0b0;

// Exit codes of the forked child, so the parent can say what the child saw.
const FORK_SYNC_FAILED: i32 = 10;
const FORK_A_WRONG: i32 = 11;
const FORK_VMAP_FAILED: i32 = 12;
const FORK_VMAP_WRONG: i32 = 13;

fn child_exit_meaning(code: i32) -> &'static str {
    match code {
        0 => "all checks passed",
        1 => "a buffer failed its checks (the verdicts say which)",
        FORK_SYNC_FAILED => "SYNC on the inherited fd failed",
        FORK_A_WRONG => "pattern A was not visible through the inherited mapping",
        FORK_VMAP_FAILED => "IMPORTER_VMAP failed in the child",
        FORK_VMAP_WRONG => "the importer's checksum in the child did not cover A+B",
        CHILD_PANICKED => "the child panicked",
        CHILD_SOCKET_FAILED => "the child lost its socket to the parent",
        _ => "unknown exit code",
    }
}

/// The whole buffer as it should read after the child ran: A, then B.
fn fork_expected() -> Vec<u8> {
    let half = FORK_LEN / 2;
    (0..FORK_LEN)
        .map(|i| pattern(if i < half { SEED_A } else { SEED_B }, i))
        .collect()
}

/// Checks both halves of a `fork_with_live_mappings` buffer.
fn check_ab(bytes: &[u8]) -> Result<(), String> {
    let half = FORK_LEN / 2;
    check(&bytes[..half], 0, SEED_A).map_err(|e| format!("first half (parent's A): {e}"))?;
    check(&bytes[half..], half, SEED_B).map_err(|e| format!("second half (child's B): {e}"))
}

/// A shared mapping inherited across fork: the child reads the parent's writes through it
/// and writes its own, which the parent (and the importer) then see; the mapping outlives
/// the last fd.
pub fn fork_with_live_mappings(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let imp = importer_if_present()?;
    let buf = heap.alloc(FORK_LEN as u64).context("alloc 256 KiB")?;
    let mut map = buf.mmap(0, FORK_LEN).context("mmap")?;
    let half = FORK_LEN / 2;
    buf.sync_start(Access::Write).context("SYNC START|WRITE")?;
    fill(&mut map.as_mut_slice()[..half], 0, SEED_A);
    buf.sync_end(Access::Write).context("SYNC END|WRITE")?;

    let mut kid = match fork()? {
        Fork::Child => child_main(move || fork_child(buf, map, imp)),
        Fork::Parent(kid) => kid,
    };
    let code = kid.wait(CHILD_EXIT_LIMIT).map_err(Stop::Fail)?;
    ensure!(
        code == 0,
        "the child exited with {code}, expected 0: {}",
        child_exit_meaning(code)
    );
    ctx.fact("child through the inherited mapping", "read A, wrote B");

    buf.sync_start(Access::Read).context("SYNC START|READ")?;
    let seen = check_ab(map.as_slice());
    buf.sync_end(Access::Read).context("SYNC END|READ")?;
    seen.map_err(|e| Stop::Fail(format!("parent's mapping after the child ran: {e}")))?;
    ctx.fact("parent's mapping after the child exited", "A+B visible");

    match &imp {
        Some(imp) => {
            let want = checksum(&fork_expected());
            let a = imp
                .on(IMPORTER_VMAP, &buf, OP_CHECKSUM, 0)
                .context("IMPORTER_VMAP")?;
            ensure!(
                a.pages == FORK_LEN as u64 && a.checksum == want,
                "IMPORTER_VMAP: checksum {:#018x} over {} bytes, expected {want:#018x} over \
                 {FORK_LEN} (A+B)",
                a.checksum,
                a.pages
            );
            ctx.fact("importer checksum", "covers A+B");
        }
        None => ctx.fact("importer checksum", "importer absent"),
    }

    // The mapping holds its own reference to the buffer: it must stay valid without any fd.
    // No SYNC bracket is possible now; nothing but the CPU wrote the buffer.
    drop(buf);
    check_ab(map.as_slice())
        .map_err(|e| Stop::Fail(format!("mapping after its last fd was closed: {e}")))?;
    ctx.fact(
        "mapping after the last fd closed",
        "readable, content intact",
    );
    Ok(())
}

/// The forked child of `fork_with_live_mappings`, working on its inherited copies.
fn fork_child(buf: DmaBuf, mut map: Mapping, imp: Option<Importer>) -> i32 {
    let half = FORK_LEN / 2;
    if buf.sync_start(Access::Read).is_err() {
        return FORK_SYNC_FAILED;
    }
    let a_ok = first_mismatch(&map.as_slice()[..half], 0, SEED_A).is_none();
    if buf.sync_end(Access::Read).is_err() {
        return FORK_SYNC_FAILED;
    }
    if !a_ok {
        return FORK_A_WRONG;
    }
    if buf.sync_start(Access::Write).is_err() {
        return FORK_SYNC_FAILED;
    }
    fill(&mut map.as_mut_slice()[half..], half, SEED_B);
    if buf.sync_end(Access::Write).is_err() {
        return FORK_SYNC_FAILED;
    }
    if let Some(imp) = &imp {
        match imp.on(IMPORTER_VMAP, &buf, OP_CHECKSUM, 0) {
            Err(_) => return FORK_VMAP_FAILED,
            Ok(a) if a.pages != FORK_LEN as u64 || a.checksum != checksum(&fork_expected()) => {
                return FORK_VMAP_WRONG
            }
            Ok(_) => {}
        }
    }
    // The child's fd closes; the parent's fd and both mappings keep the buffer.
    drop(buf);
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::fd_size;

    #[test]
    fn pattern_differs_by_seed_offset_and_page() {
        let a: Vec<u8> = (0..2 * PAGE).map(|i| pattern(1, i)).collect();
        let b: Vec<u8> = (0..2 * PAGE).map(|i| pattern(2, i)).collect();
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!(differ > PAGE, "seeds 1 and 2 differ in only {differ} bytes");
        assert_ne!(a[..PAGE], a[PAGE..], "two pages of one seed are equal");
        assert!(a[..256].iter().any(|&x| x != a[0]), "a page starts flat");
    }

    #[test]
    fn check_reports_the_first_mismatch() {
        let mut v = vec![0; 3 * PAGE];
        fill(&mut v, 100, 7);
        assert_eq!(check(&v, 100, 7), Ok(()));
        v[5] ^= 0xff;
        v[9] ^= 0x01;
        assert_eq!(first_mismatch(&v, 100, 7).map(|m| m.0), Some(105));
        let msg = check(&v, 100, 7).unwrap_err();
        assert!(msg.starts_with("byte 105 reads"), "{msg}");
        assert!(msg.contains("2 of 12288 bytes differ"), "{msg}");
    }

    #[test]
    fn records_round_trip() {
        assert_eq!(decode_offer(&encode_offer(3, MIB)), (3, MIB));
        let v = Verdict {
            code: Verdict::MISMATCH,
            got: 1,
            want: 2,
            at: 4097,
        };
        assert_eq!(Verdict::decode(&v.encode()), v);
        assert!(v.describe(MIB, 9).contains("byte 4097"));
    }

    /// A memfd stands in for a dma-buf: the SCM_RIGHTS plumbing does not care.
    fn memfd_with(bytes: &[u8]) -> OwnedFd {
        // SAFETY: the name is NUL-terminated and outlives the call.
        let fd = unsafe { libc::memfd_create(c"heaprig-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: memfd_create returned a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut f = std::fs::File::from(fd);
        f.write_all(bytes).unwrap();
        f.into()
    }

    #[test]
    fn scm_rights_round_trip_keeps_the_file_after_the_sender_closes() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let file = memfd_with(&[0x5a; PAGE]);
        send_with_fd(
            a.as_raw_fd(),
            &encode_offer(1, PAGE as u64),
            Some(file.as_raw_fd()),
        )
        .unwrap();
        drop(file);
        let mut rec = [0; 16];
        let got = recv_with_fd(b.as_raw_fd(), &mut rec).unwrap().unwrap();
        assert_eq!(decode_offer(&rec), (1, PAGE as u64));
        assert_eq!(fd_size(got.as_raw_fd()).unwrap(), PAGE as u64);
        let got = DmaBuf::from_fd(got).unwrap();
        assert_eq!(got.len, PAGE as u64);
        let map = got.mmap(0, PAGE).unwrap();
        assert!(map.as_slice().iter().all(|&x| x == 0x5a));

        // Without an fd, and a receive that times out.
        send_with_fd(a.as_raw_fd(), &[9; 16], None).unwrap();
        assert!(recv_with_fd(b.as_raw_fd(), &mut rec).unwrap().is_none());
        assert_eq!(rec, [9; 16]);
        b.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let e = recv_with_fd(b.as_raw_fd(), &mut rec).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(a);
        let e = recv_with_fd(b.as_raw_fd(), &mut rec).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn race_workers_all_run_past_the_close_and_stop_in_time() {
        let start = Instant::now();
        let race = Race {
            start,
            deadline: start + Duration::from_millis(200),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            progress: AtomicU64::new(0),
        };
        let race = &race;
        let (at, ran) = thread::scope(|s| {
            let closer = s.spawn(move || race.close_mid_run(memfd_with(&[0; 4])));
            let workers: Vec<_> = [3, 1_000_000]
                .into_iter()
                .map(|cap| {
                    s.spawn(move || {
                        race.run("w", cap, |_| {
                            thread::sleep(Duration::from_micros(100));
                            Ok(())
                        })
                    })
                })
                .collect();
            let ran: Vec<Ran> = workers
                .into_iter()
                .map(|w| w.join().unwrap().unwrap())
                .collect();
            (closer.join().unwrap(), ran)
        });
        assert!(at >= 8 || start.elapsed() >= PHASE / 2, "closed at {at}");
        for r in &ran {
            assert!(r.after_close > 0, "{r:?}");
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        // A failing step stops every worker.
        race.failed.store(false, Ordering::Relaxed);
        let e = race.run("w", 10, |_| Err("boom".into())).unwrap_err();
        assert!(
            e.contains("iteration 0 (after the original fd was closed): boom"),
            "{e}"
        );
        assert_eq!(race.run("v", 10, |_| Ok(())).unwrap().iterations, 0);
    }

    #[test]
    fn a_worker_that_never_runs_after_the_close_fails() {
        let start = Instant::now() - PHASE * 2;
        let race = Race {
            start,
            deadline: start + PHASE,
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            progress: AtomicU64::new(0),
        };
        let e = race.run("w", 10, |_| Ok(())).unwrap_err();
        assert!(
            e.contains("no iteration after the original fd was closed"),
            "{e}"
        );
    }

    #[test]
    fn dup_gives_an_independent_fd() {
        let file = DmaBuf::from_fd(memfd_with(&[1; 10])).unwrap();
        let d = file.try_clone().unwrap();
        assert_ne!(d.raw_fd(), file.raw_fd());
        drop(file);
        assert_eq!(d.len, 10);
        assert_eq!(fd_size(d.raw_fd()).unwrap(), 10);
    }

    // The forked children below only sleep or return: safe after fork from the
    // multi-threaded test harness.
    #[test]
    fn kid_wait_returns_the_exit_code() {
        let mut kid = match fork().unwrap_or_else(|_| panic!("fork")) {
            Fork::Child => child_main(|| 7),
            Fork::Parent(kid) => kid,
        };
        assert_eq!(kid.wait(Duration::from_secs(10)), Ok(7));
    }

    #[test]
    fn kid_wait_kills_an_overrunning_child() {
        let mut kid = match fork().unwrap_or_else(|_| panic!("fork")) {
            Fork::Child => child_main(|| loop {
                thread::sleep(Duration::from_secs(1));
            }),
            Fork::Parent(kid) => kid,
        };
        let pid = kid.pid;
        let e = kid.wait(Duration::from_millis(50)).unwrap_err();
        assert!(e.contains("killed it with SIGKILL"), "{e}");
        // Reaped: the pid no longer names our child.
        // SAFETY: waitpid on a pid with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut 0, libc::WNOHANG) };
        assert_eq!(r, -1);
    }

    #[test]
    fn kid_drop_reaps() {
        let kid = match fork().unwrap_or_else(|_| panic!("fork")) {
            Fork::Child => child_main(|| loop {
                thread::sleep(Duration::from_secs(1));
            }),
            Fork::Parent(kid) => kid,
        };
        let pid = kid.pid;
        drop(kid);
        // SAFETY: waitpid on a pid with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut 0, libc::WNOHANG) };
        assert_eq!(r, -1);
    }
}
