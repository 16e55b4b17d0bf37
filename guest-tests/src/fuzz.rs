//! A seeded fuzzer for a dma-buf heap fd and the dma-buf fds it returns.
//!
//! Every choice comes from a splitmix64 stream and a model of what is live (buffers, their
//! fds, mappings, importer holds and expected content), so a seed replays the same operation
//! sequence on the same kernel. Each operation's outcome is checked against the model and
//! the kernel's taint flags are re-read after every operation, so a WARN or a KASAN report
//! is pinned to the operation that caused it. A failure names the seed and the operation
//! index; `max_ops = index + 1` replays up to and including the failing operation.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::harness::{errno_name, verdict, Ctx, Outcome, Stop};
use crate::uapi::importer::{
    self, ImporterArgs, IMPORTER_ATTACH_HOLD, IMPORTER_ATTACH_MAP, IMPORTER_CPU_ACCESS,
    IMPORTER_HOLD, IMPORTER_KMAP_WALK, IMPORTER_RELEASE, IMPORTER_VMAP, IMPORTER_VMAP_TWICE,
    OP_CHECKSUM, OP_FILL,
};
use crate::uapi::{
    fd_size, DmaBuf, Heap, Importer, Mapping, DMA_BUF_SYNC_END, DMA_BUF_SYNC_READ, DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START, DMA_BUF_SYNC_WRITE,
};

use crate::uapi::{KIB, MIB, PAGE};

/// Live buffers the model keeps at most; each is at most 2 MiB, so content tracking is cheap.
const MAX_BUFS: usize = 8;
const MAX_FDS_PER_BUF: usize = 4;
const MAX_MAPS_PER_BUF: usize = 4;
const MAX_HOLDS_PER_BUF: usize = 2;
/// Released handles remembered for RELEASE-twice (handles are never reissued).
const MAX_RELEASED: usize = 8;
/// Closed fd numbers remembered for importer calls on a closed fd.
const MAX_CLOSED: usize = 8;
/// Operations shown when a run fails.
const RING: usize = 16;
/// Mappings up to this size are compared whole; larger ones are sampled.
const FULL_CHECK: usize = 256 * KIB as usize;
/// Bytes a forked child compares.
const CHILD_CHECKS: usize = 16;

/// Allocation lengths up to here must succeed (the fuzzer asks for at most ~2 MiB).
const SANE_MAX: u64 = 1 << 30;
/// Lengths from here on exceed any test VM's RAM and must fail.
const HUGE_MIN: u64 = 1 << 40;
/// fd_flags the dma-heap core accepts (`DMA_HEAP_VALID_FD_FLAGS`).
const VALID_FD_FLAGS: u32 = (libc::O_CLOEXEC | libc::O_ACCMODE) as u32;
const RDWR: u32 = libc::O_RDWR as u32;
const RDWR_CLOEXEC: u32 = (libc::O_RDWR | libc::O_CLOEXEC) as u32;

const DEFAULT_BUDGET: Duration = Duration::from_secs(10);

/// What a fuzz run does: the seed picks every operation; the run ends at `budget` or after
/// `max_ops` operations, whichever comes first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub seed: u64,
    pub budget: Duration,
    pub max_ops: Option<u64>,
}

impl Config {
    /// A fresh seed (clock nanoseconds mixed with getrandom when it has entropy), no op limit.
    pub fn from_time(budget: Duration) -> Config {
        Config {
            seed: fresh_seed(),
            budget,
            max_ops: None,
        }
    }
}

fn fresh_seed() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let nanos = (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64);
    let mut b = [0u8; 8];
    // SAFETY: `b` is writable for exactly the length passed. GRND_NONBLOCK: early in a VM's
    // boot the pool may not be ready, and then the clock alone seeds.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    let random = if n == b.len() as isize {
        u64::from_ne_bytes(b)
    } else {
        0
    };
    Rng::new(nanos ^ (u64::from(std::process::id()) << 40)).u64() ^ random
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

/// Sets the configuration `case` uses; main calls it before tests fork.
pub fn set_config(c: Config) {
    *CONFIG.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
}

/// What `set_config` stored, else a fresh seed with a 10 s budget.
pub fn config() -> Config {
    let stored = CONFIG.lock().unwrap_or_else(|p| p.into_inner()).clone();
    stored.unwrap_or_else(|| Config::from_time(DEFAULT_BUDGET))
}

/// The test-table entry: fuzzes `heap` with the process-wide configuration.
pub fn case(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    run(ctx, heap, &config())
}

/// splitmix64, written out here so recorded seeds replay whatever crates do.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0), by multiply-shift: one draw, no loop.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.u64()) * u128::from(n)) >> 64) as u64
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    fn percent(&mut self) -> u64 {
        self.below(100)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.percent() < percent
    }

    fn fill(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let r = self.u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// What an operation must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Ok,
    Err(i32),
    /// Fail, with any errno.
    AnyErr,
    /// Succeed, or fail with this errno.
    OkOr(i32),
    /// Either outcome; only the absence of a crash or splat is checked.
    Any,
}

fn errno_str(e: i32) -> String {
    errno_name(&io::Error::from_raw_os_error(e))
}

impl Expect {
    fn admits<T>(self, r: &io::Result<T>) -> bool {
        match (self, r) {
            (Expect::Any, _) | (Expect::Ok | Expect::OkOr(_), Ok(_)) | (Expect::AnyErr, Err(_)) => {
                true
            }
            (Expect::Err(e) | Expect::OkOr(e), Err(x)) => x.raw_os_error() == Some(e),
            _ => false,
        }
    }

    fn describe(self) -> String {
        match self {
            Expect::Ok => "ok".to_string(),
            Expect::Err(e) => errno_str(e),
            Expect::AnyErr => "an error".to_string(),
            Expect::OkOr(e) => format!("ok or {}", errno_str(e)),
            Expect::Any => "anything".to_string(),
        }
    }
}

fn no_importer() -> String {
    "internal: importer op without the importer".to_string()
}

/// One importer call that fills or checksums a whole buffer and must succeed; the importer
/// is passed in because the caller holds a buffer of the pool mutably.
fn whole_buffer_op(
    imp: Option<&Importer>,
    req: u32,
    fd: i32,
    op: u32,
    fill: u8,
    label: &str,
) -> Result<ImporterArgs, String> {
    let imp = imp.ok_or_else(no_importer)?;
    let mut a = ImporterArgs {
        fd,
        op,
        fill: u32::from(fill),
        count: 1,
        ..Default::default()
    };
    judge(label, Expect::Ok, &imp.call(req, &mut a))?;
    Ok(a)
}

fn judge<T>(what: &str, e: Expect, r: &io::Result<T>) -> Result<(), String> {
    if e.admits(r) {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected {}, got {}",
            e.describe(),
            verdict(r)
        ))
    }
}

/// `PAGE_ALIGN` as the kernel computes it on a 64-bit `size_t`: wraps to 0 near `u64::MAX`.
fn page_align(len: u64) -> u64 {
    len.wrapping_add(PAGE - 1) & !(PAGE - 1)
}

/// `DMA_HEAP_IOCTL_ALLOC`: the core rejects unknown fd_flags, any heap_flags and a length
/// that page-aligns to 0 with EINVAL (alloc_sizes records both heaps doing so); sizes the
/// fuzzer uses succeed; sizes beyond any VM's RAM fail.
fn expect_alloc(len: u64, fd_flags: u32, heap_flags: u64) -> Expect {
    if fd_flags & !VALID_FD_FLAGS != 0 || heap_flags != 0 || page_align(len) == 0 {
        Expect::Err(libc::EINVAL)
    } else if len <= SANE_MAX {
        Expect::Ok
    } else if len >= HUGE_MIN {
        Expect::AnyErr
    } else {
        Expect::Any
    }
}

/// `DMA_BUF_IOCTL_SYNC`: only READ/WRITE/END bits, and at least one direction. END without
/// START is fine (sync_end_storm).
fn expect_sync(flags: u64) -> Expect {
    if flags & !(DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END) != 0 || flags & DMA_BUF_SYNC_RW == 0 {
        Expect::Err(libc::EINVAL)
    } else {
        Expect::Ok
    }
}

/// A shared read-write mmap of a dma-buf opened with access mode `accmode`, in the order
/// the kernel checks: misaligned offset and zero length (the syscall), the file mode
/// (do_mmap: a shared writable mapping needs FMODE_READ and FMODE_WRITE), then the range
/// (dma-buf core: past the size is EINVAL, as mmap_bounds records).
fn expect_mmap(off: u64, len: u64, size: u64, accmode: u32) -> Expect {
    if off % PAGE != 0 || len == 0 {
        Expect::Err(libc::EINVAL)
    } else if accmode != RDWR {
        Expect::Err(libc::EACCES)
    } else if (off / PAGE).saturating_add(page_align(len) / PAGE) > size / PAGE {
        Expect::Err(libc::EINVAL)
    } else {
        Expect::Ok
    }
}

/// `DMA_BUF_SET_NAME_B` copies at most DMA_BUF_NAME_LEN (32) bytes with the NUL.
fn expect_set_name(len: usize) -> Expect {
    if len <= 31 {
        Expect::Ok
    } else {
        Expect::OkOr(libc::EINVAL)
    }
}

/// A requested allocation length: mostly 4 KiB..=256 KiB, some not page multiples, rarely
/// 1 or 2 MiB.
fn gen_len(rng: &mut Rng) -> u64 {
    match rng.percent() {
        0..=2 => 1,
        3..=7 => 1 + rng.below(PAGE - 1),
        8..=22 => 1 + rng.below(256 * KIB),
        23..=27 => [MIB, 2 * MIB, MIB + 1, 2 * MIB - 1][rng.index(4)],
        _ => (1 + rng.below(64)) * PAGE,
    }
}

/// fd_flags the core accepts: usually O_RDWR|O_CLOEXEC, sometimes another access mode.
fn gen_valid_fd_flags(rng: &mut Rng) -> u32 {
    match rng.percent() {
        0..=79 => RDWR_CLOEXEC,
        80..=87 => RDWR,
        _ => {
            let mode = [libc::O_RDONLY, libc::O_WRONLY, libc::O_ACCMODE][rng.index(3)] as u32;
            mode | if rng.chance(50) {
                libc::O_CLOEXEC as u32
            } else {
                0
            }
        }
    }
}

/// An allocation request with at least one bad argument. Lengths beyond RAM only when the
/// heap refuses them at once (`huge_ok`): the C system heap allocates until the OOM killer
/// runs, so there only lengths that page-align to 0 are used.
fn gen_bad_alloc(rng: &mut Rng, huge_ok: bool) -> (u64, u32, u64) {
    let mut len = gen_len(rng);
    let mut fd_flags = RDWR_CLOEXEC;
    let mut heap_flags = 0;
    let first = rng.below(4);
    let second = if rng.chance(20) { rng.below(4) } else { first };
    for kind in [first, second] {
        match kind {
            0 => len = 0,
            1 => {
                let bad: Vec<u32> = (0..32)
                    .filter(|b| (1u32 << b) & VALID_FD_FLAGS == 0)
                    .collect();
                let bit = bad[rng.index(bad.len())];
                fd_flags = if rng.chance(10) {
                    u32::MAX
                } else {
                    RDWR_CLOEXEC | (1 << bit)
                };
            }
            2 => {
                heap_flags = if rng.chance(10) {
                    u64::MAX
                } else {
                    1 << rng.below(64)
                }
            }
            _ => {
                let wrapping = [u64::MAX, u64::MAX - rng.below(PAGE - 1)];
                let r = rng.below(6);
                len = if huge_ok && r >= 2 {
                    [1 << 40, 1 << 50, 1 << 62, HUGE_MIN + rng.below(1 << 62)][(r - 2) as usize]
                } else {
                    wrapping[(r % 2) as usize]
                };
            }
        }
    }
    (len, fd_flags, heap_flags)
}

/// Offset and length of an mmap of a `size`-byte buffer: mostly valid, sometimes
/// misaligned, past the end, empty or absurd.
fn gen_mmap(rng: &mut Rng, size: u64) -> (u64, u64) {
    let pages = size / PAGE;
    let off = match rng.percent() {
        0..=59 => 0,
        60..=84 => rng.below(pages) * PAGE,
        85..=89 => (pages + rng.below(4)) * PAGE,
        90..=94 => rng.below(pages) * PAGE + 1 + rng.below(PAGE - 1),
        _ => 1 << 50,
    };
    let rest = size.saturating_sub(off);
    let len = match rng.percent() {
        0..=49 => {
            if rest > 0 {
                rest
            } else {
                PAGE
            }
        }
        50..=74 => 1 + rng.below(rest.max(1)),
        75..=84 => (1 + rng.below(pages)) * PAGE,
        85..=89 => 0,
        _ => rest + PAGE * (1 + rng.below(4)),
    };
    (off, len)
}

/// SYNC flags: valid START/END brackets mostly, then no direction, unknown bits, noise.
fn gen_sync_flags(rng: &mut Rng) -> u64 {
    let dir = [DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_RW][rng.index(3)];
    match rng.percent() {
        0..=34 => DMA_BUF_SYNC_START | dir,
        35..=69 => DMA_BUF_SYNC_END | dir,
        70..=79 => [DMA_BUF_SYNC_START, DMA_BUF_SYNC_END][rng.index(2)],
        80..=94 => {
            let end = [DMA_BUF_SYNC_START, DMA_BUF_SYNC_END][rng.index(2)];
            end | dir | (1 << (3 + rng.below(61)))
        }
        _ => rng.u64(),
    }
}

fn sync_name(flags: u64) -> String {
    let known = match flags {
        0 => "START",
        1 => "START|READ",
        2 => "START|WRITE",
        3 => "START|RW",
        4 => "END",
        5 => "END|READ",
        6 => "END|WRITE",
        7 => "END|RW",
        _ => return format!("{flags:#x}"),
    };
    known.to_string()
}

fn gen_name(rng: &mut Rng) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_.:/ ";
    let len = rng.index(41);
    (0..len)
        .map(|_| CHARS[rng.index(CHARS.len())] as char)
        .collect()
}

/// The operations, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Alloc,
    AllocBad,
    Close,
    Dup,
    Mmap,
    MapRw,
    Munmap,
    Sync,
    SetName,
    ImpVmap,
    ImpKmapWalk,
    ImpAttachMap,
    ImpHold,
    ImpAttachHold,
    ImpRelease,
    ImpBadFd,
    Fork,
}

const OP_COUNT: usize = 17;

const OPS: [Op; OP_COUNT] = [
    Op::Alloc,
    Op::AllocBad,
    Op::Close,
    Op::Dup,
    Op::Mmap,
    Op::MapRw,
    Op::Munmap,
    Op::Sync,
    Op::SetName,
    Op::ImpVmap,
    Op::ImpKmapWalk,
    Op::ImpAttachMap,
    Op::ImpHold,
    Op::ImpAttachHold,
    Op::ImpRelease,
    Op::ImpBadFd,
    Op::Fork,
];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Alloc => "alloc",
            Op::AllocBad => "alloc_bad",
            Op::Close => "close",
            Op::Dup => "dup",
            Op::Mmap => "mmap",
            Op::MapRw => "map_rw",
            Op::Munmap => "munmap",
            Op::Sync => "sync",
            Op::SetName => "set_name",
            Op::ImpVmap => "imp_vmap",
            Op::ImpKmapWalk => "imp_kmap_walk",
            Op::ImpAttachMap => "imp_attach_map",
            Op::ImpHold => "imp_hold",
            Op::ImpAttachHold => "imp_attach_hold",
            Op::ImpRelease => "imp_release",
            Op::ImpBadFd => "imp_bad_fd",
            Op::Fork => "fork",
        }
    }

    fn weight(self) -> u64 {
        match self {
            Op::Alloc | Op::Mmap => 10,
            Op::MapRw | Op::Sync => 8,
            Op::Close | Op::ImpVmap => 6,
            Op::Munmap => 5,
            Op::Dup | Op::ImpKmapWalk | Op::ImpRelease => 4,
            Op::AllocBad | Op::SetName | Op::ImpAttachMap | Op::ImpHold => 3,
            Op::ImpAttachHold | Op::ImpBadFd => 2,
            Op::Fork => 1,
        }
    }
}

/// Weighted choice among the available operations; `None` when none is.
fn choose_op(rng: &mut Rng, avail: &[bool; OP_COUNT]) -> Option<Op> {
    let total: u64 = OPS
        .iter()
        .filter(|o| avail[**o as usize])
        .map(|o| o.weight())
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = rng.below(total);
    for o in OPS {
        if !avail[o as usize] {
            continue;
        }
        if r < o.weight() {
            return Some(o);
        }
        r -= o.weight();
    }
    None
}

/// The last few operations: index, description, result.
#[derive(Debug)]
struct Ring {
    cap: usize,
    items: VecDeque<(u64, String, String)>,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        Ring {
            cap,
            items: VecDeque::with_capacity(cap),
        }
    }

    fn push(&mut self, n: u64, desc: String, result: String) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back((n, desc, result));
    }
}

fn fail_line(heap: &str, seed: u64, n: u64, desc: &str, what: &str) -> String {
    format!(
        "fuzz seed {seed} op {n} ({desc}): {what}; replay: cargo xtask fuzz --heap {heap} --seed {seed} --ops {}",
        n + 1
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldKind {
    /// `IMPORTER_HOLD`: a vmap; RELEASE checksums the current content.
    Vmap,
    /// `IMPORTER_ATTACH_HOLD`: an attachment mapped for the importer's device.
    Attach,
}

#[derive(Debug)]
struct Hold {
    handle: u64,
    kind: HoldKind,
}

/// One dma-buf of the model; it stays in the pool while an fd, mapping or hold keeps it.
#[derive(Debug)]
struct Buf {
    id: u64,
    size: u64,
    accmode: u32,
    /// The fd the heap returned and dups of fds on the buffer, in the order they opened.
    fds: Vec<DmaBuf>,
    maps: Vec<Mapping>,
    holds: Vec<Hold>,
    /// Expected content: zeros when fresh.
    content: Vec<u8>,
    /// STARTs without END seen by the Sync op (only to label unmatched ENDs).
    open_starts: u64,
}

impl Buf {
    fn unreferenced(&self) -> bool {
        self.fds.is_empty() && self.maps.is_empty() && self.holds.is_empty()
    }

    fn attach_held(&self) -> bool {
        self.holds.iter().any(|h| h.kind == HoldKind::Attach)
    }
}

// Which buffers each operation may pick; `avail` and the operations share them.
fn has_fd(b: &Buf) -> bool {
    !b.fds.is_empty()
}
fn can_dup(b: &Buf) -> bool {
    has_fd(b) && b.fds.len() < MAX_FDS_PER_BUF
}
fn can_mmap(b: &Buf) -> bool {
    has_fd(b) && b.maps.len() < MAX_MAPS_PER_BUF
}
fn can_map_rw(b: &Buf) -> bool {
    has_fd(b) && !b.maps.is_empty()
}
fn has_map(b: &Buf) -> bool {
    !b.maps.is_empty()
}
/// A second DMA mapping of pages an attachment hold keeps mapped overlaps it, which
/// DMA-API debug reports with a WARN (see the importer's attach_map); the model avoids it.
fn can_dma_map(b: &Buf) -> bool {
    has_fd(b) && !b.attach_held()
}
fn can_hold(b: &Buf) -> bool {
    has_fd(b) && b.holds.len() < MAX_HOLDS_PER_BUF
}
fn can_attach_hold(b: &Buf) -> bool {
    can_hold(b) && can_dma_map(b)
}
fn has_hold(b: &Buf) -> bool {
    !b.holds.is_empty()
}

/// Compares what a mapping reads with the model: whole when small, sampled when large.
/// `base` is the mapping's offset and `size` the buffer's, so a mismatch names the byte's
/// place in the buffer ("byte 8191 of 8192": the last one).
fn check_bytes(
    rng: &mut Rng,
    got: &[u8],
    want: &[u8],
    base: u64,
    size: u64,
) -> Result<usize, String> {
    let mismatch = |i: usize| {
        format!(
            "byte {} of {size} reads {:#04x}, model has {:#04x}",
            base + i as u64,
            got[i],
            want[i]
        )
    };
    if got.len() <= FULL_CHECK {
        if got != want {
            let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(mismatch(i));
        }
        return Ok(got.len());
    }
    let mut picks: Vec<usize> = (0..64).map(|_| rng.index(got.len())).collect();
    picks.extend([0, got.len() - 1]);
    for &i in &picks {
        if got[i] != want[i] {
            return Err(mismatch(i));
        }
    }
    Ok(picks.len())
}

/// Where a buffer differs from its model, read through a fresh mapping under SYNC READ: the
/// decisive detail when a kernel checksum disagrees with the model.
fn locate(b: &Buf) -> String {
    for fd in &b.fds {
        let Ok(map) = fd.mmap(0, b.size as usize) else {
            continue;
        };
        if fd.sync_raw(DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ).is_err() {
            continue;
        }
        let got = map.as_slice();
        let at = got.iter().zip(&b.content).position(|(g, m)| g != m);
        let _ = fd.sync_raw(DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ);
        return match at {
            Some(i) => format!(
                "byte {i} of {} reads {:#04x}, model has {:#04x}",
                b.size, got[i], b.content[i]
            ),
            None => "a fresh mapping reads what the model has".to_string(),
        };
    }
    "not located: no fd of the buffer maps for reading".to_string()
}

/// A kernel checksum that disagrees with the model, with where the buffer differs.
fn checksum_mismatch(what: &str, got: u64, want: u64, b: &Buf) -> String {
    format!("{what} checksum {got:#x}, model {want:#x}: {}", locate(b))
}

/// A checksum taken before a kernel fill disagreed: what was checksummed is gone, so the
/// buffer is located against the model of the fill instead.
fn fill_mismatch(got: u64, want: u64, fill: u8, b: &mut Buf) -> String {
    b.content.fill(fill);
    format!(
        "kernel checksum {got:#x}, model {want:#x} (before a fill with {fill:#04x}; after it: {})",
        locate(b)
    )
}

fn sync_ok(buf: &DmaBuf, flags: u64) -> Result<(), String> {
    buf.sync_raw(flags)
        .map_err(|e| format!("SYNC {} failed: {}", sync_name(flags), errno_name(&e)))
}

/// Reads a mapping under SYNC READ and compares it with the model, then writes random
/// bytes to part of it under SYNC WRITE and records them in the model.
fn read_then_write(
    rng: &mut Rng,
    buf: &DmaBuf,
    map: &mut Mapping,
    content: &mut [u8],
) -> Result<String, String> {
    let range = map.range();
    sync_ok(buf, DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ)?;
    let size = content.len() as u64;
    let checked = check_bytes(
        rng,
        map.as_slice(),
        &content[range.clone()],
        map.offset(),
        size,
    );
    sync_ok(buf, DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ)?;
    let checked = checked?;
    let (start, n) = if rng.chance(10) {
        (0, map.len())
    } else {
        let s = rng.index(map.len());
        (s, 1 + rng.index((map.len() - s).min(4096)))
    };
    let model = &mut content[range][start..start + n];
    rng.fill(model);
    sync_ok(buf, DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE)?;
    map.as_mut_slice()[start..start + n].copy_from_slice(model);
    sync_ok(buf, DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE)?;
    Ok(format!(
        "ok, {checked} bytes match, wrote {n} at +{:#x}",
        map.offset() + start as u64
    ))
}

/// The forked child's whole life: compare a few bytes of `map` with `content`, then `_exit`
/// 0 (match), 1 (mismatch) or 2 (SYNC failed).
fn child_check(map: &Mapping, content: &[u8], picks: &[usize], buf: Option<&DmaBuf>) -> ! {
    // SAFETY: alarm has no memory-safety preconditions; it ends a child that hangs.
    unsafe { libc::alarm(5) };
    let mut code = 0;
    if let Some(buf) = buf {
        if buf
            .sync_raw(DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ)
            .is_err()
        {
            code = 2;
        }
    }
    if code == 0 {
        let bytes = map.as_slice();
        let base = map.offset() as usize;
        if picks.iter().any(|&p| bytes.get(p) != content.get(base + p)) {
            code = 1;
        }
    }
    if let Some(buf) = buf {
        let _ = buf.sync_raw(DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ);
    }
    // SAFETY: _exit ends the child at once, running no destructors or atexit handlers of
    // the parent's state (its fds, mappings and holds belong to the parent).
    unsafe { libc::_exit(code) }
}

/// `/proc/sys/kernel/tainted`, kept open and re-read with one pread per operation.
struct Taint {
    file: File,
    last: u64,
}

impl Taint {
    fn open() -> io::Result<Taint> {
        let file = File::open("/proc/sys/kernel/tainted")?;
        let last = Taint::read(&file)?;
        Ok(Taint { file, last })
    }

    fn read(file: &File) -> io::Result<u64> {
        let mut buf = [0u8; 32];
        let n = file.read_at(&mut buf, 0)?;
        let text = std::str::from_utf8(&buf[..n]).unwrap_or("").trim();
        text.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("tainted reads {text:?}"),
            )
        })
    }

    /// Ok when unchanged; otherwise says what changed after `after()`, and remembers the
    /// new value (the label is built only then, so the common path formats nothing).
    fn check(&mut self, after: impl FnOnce() -> String) -> Result<(), String> {
        let now = Taint::read(&self.file).map_err(|e| format!("re-reading tainted: {e}"))?;
        if now != self.last {
            let was = std::mem::replace(&mut self.last, now);
            return Err(format!(
                "kernel taint changed from {was} to {now} after {}",
                after()
            ));
        }
        Ok(())
    }
}

/// The model and everything the operations need.
struct Fuzz<'a> {
    heap: &'a Heap,
    rng: Rng,
    imp: Option<Importer>,
    bufs: Vec<Buf>,
    next_id: u64,
    closed: Vec<RawFd>,
    released: Vec<u64>,
    /// An open fd that is not a dma-buf (the taint file), for importer calls that must
    /// fail with EINVAL.
    other_fd: Option<RawFd>,
}

impl Fuzz<'_> {
    fn avail(&self) -> [bool; OP_COUNT] {
        let any = |p: fn(&Buf) -> bool| self.bufs.iter().any(p);
        let imp = self.imp.is_some();
        let mut a = [false; OP_COUNT];
        a[Op::Alloc as usize] = self.bufs.len() < MAX_BUFS;
        a[Op::AllocBad as usize] = true;
        a[Op::Close as usize] = any(has_fd);
        a[Op::Dup as usize] = any(can_dup);
        a[Op::Mmap as usize] = any(can_mmap);
        a[Op::MapRw as usize] = any(can_map_rw);
        a[Op::Munmap as usize] = any(has_map);
        a[Op::Sync as usize] = any(has_fd);
        a[Op::SetName as usize] = any(has_fd);
        a[Op::ImpVmap as usize] = imp && any(has_fd);
        a[Op::ImpKmapWalk as usize] = imp && any(can_dma_map);
        a[Op::ImpAttachMap as usize] = imp && any(can_dma_map);
        a[Op::ImpHold as usize] = imp && any(can_hold);
        a[Op::ImpAttachHold as usize] = imp && any(can_attach_hold);
        a[Op::ImpRelease as usize] = imp && (any(has_hold) || !self.released.is_empty());
        a[Op::ImpBadFd as usize] = imp;
        a[Op::Fork as usize] = any(has_map);
        a
    }

    fn step(&mut self, op: Op, d: &mut String) -> Result<String, String> {
        match op {
            Op::Alloc => self.op_alloc(d),
            Op::AllocBad => self.op_alloc_bad(d),
            Op::Close => self.op_close(d),
            Op::Dup => self.op_dup(d),
            Op::Mmap => self.op_mmap(d),
            Op::MapRw => self.op_map_rw(d),
            Op::Munmap => self.op_munmap(d),
            Op::Sync => self.op_sync(d),
            Op::SetName => self.op_set_name(d),
            Op::ImpVmap => self.op_vmap(d),
            Op::ImpKmapWalk => self.op_kmap_walk(d),
            Op::ImpAttachMap => self.op_attach_map(d),
            Op::ImpHold => self.op_hold(d, HoldKind::Vmap),
            Op::ImpAttachHold => self.op_hold(d, HoldKind::Attach),
            Op::ImpRelease => self.op_release(d),
            Op::ImpBadFd => self.op_bad_fd(d),
            Op::Fork => self.op_fork(d),
        }
    }

    /// A buffer satisfying `p`, chosen by the PRNG among those in pool order.
    fn pick(&mut self, p: fn(&Buf) -> bool) -> Result<usize, String> {
        let fits: Vec<usize> = (0..self.bufs.len()).filter(|&i| p(&self.bufs[i])).collect();
        if fits.is_empty() {
            return Err("internal: no buffer fits the chosen operation".to_string());
        }
        Ok(fits[self.rng.index(fits.len())])
    }

    /// A buffer with an fd, and one of its fds: (buffer, index in its `fds`).
    fn pick_fd_at(&mut self, p: fn(&Buf) -> bool) -> Result<(usize, usize), String> {
        let i = self.pick(p)?;
        let k = self.rng.index(self.bufs[i].fds.len());
        Ok((i, k))
    }

    /// A buffer with an fd, and one of its fds' numbers.
    fn pick_fd(&mut self, p: fn(&Buf) -> bool) -> Result<(usize, RawFd), String> {
        let (i, k) = self.pick_fd_at(p)?;
        Ok((i, self.bufs[i].fds[k].raw_fd()))
    }

    fn importer(&self) -> Result<&Importer, String> {
        self.imp.as_ref().ok_or_else(no_importer)
    }

    /// Drops buffer `i` from the pool when nothing refers to it any more.
    fn retire_if_unreferenced(&mut self, i: usize) -> &'static str {
        if self.bufs[i].unreferenced() {
            self.bufs.remove(i);
            ", buffer gone"
        } else {
            ""
        }
    }

    fn remember_closed(&mut self, fd: RawFd) {
        if self.closed.len() == MAX_CLOSED {
            self.closed.remove(0);
        }
        self.closed.push(fd);
    }

    fn op_alloc(&mut self, d: &mut String) -> Result<String, String> {
        let len = gen_len(&mut self.rng);
        let fd_flags = gen_valid_fd_flags(&mut self.rng);
        *d = format!("alloc len={len} fd_flags={fd_flags:#x} heap_flags=0");
        self.alloc(len, fd_flags, 0)
    }

    fn op_alloc_bad(&mut self, d: &mut String) -> Result<String, String> {
        // Only the Rust heap promises to refuse a length beyond RAM without reclaim.
        let huge_ok = self.heap.name == "rust_system";
        let (len, fd_flags, heap_flags) = gen_bad_alloc(&mut self.rng, huge_ok);
        *d = format!("alloc len={len:#x} fd_flags={fd_flags:#x} heap_flags={heap_flags:#x}");
        self.alloc(len, fd_flags, heap_flags)
    }

    fn alloc(&mut self, len: u64, fd_flags: u32, heap_flags: u64) -> Result<String, String> {
        let exp = expect_alloc(len, fd_flags, heap_flags);
        let r = self.heap.alloc_raw(len, fd_flags, heap_flags);
        judge("DMA_HEAP_IOCTL_ALLOC", exp, &r)?;
        let buf = match r {
            Ok(b) => b,
            Err(e) => return Ok(errno_name(&e)),
        };
        if exp != Expect::Ok || self.bufs.len() >= MAX_BUFS {
            // Admitted, but not something the model tracks.
            return Ok("ok (closed again)".to_string());
        }
        let size = page_align(len);
        let got = fd_size(buf.raw_fd()).map_err(|e| format!("lseek on the new fd: {e}"))?;
        if got != size {
            return Err(format!("dma-buf size {got}, expected {size}"));
        }
        let id = self.next_id;
        self.next_id += 1;
        let fd = buf.raw_fd();
        self.bufs.push(Buf {
            id,
            size,
            accmode: fd_flags & libc::O_ACCMODE as u32,
            fds: vec![buf],
            maps: Vec::new(),
            holds: Vec::new(),
            content: vec![0; size as usize],
            open_starts: 0,
        });
        Ok(format!("ok, b{id} size {size} fd {fd}"))
    }

    fn op_close(&mut self, d: &mut String) -> Result<String, String> {
        let i = self.pick(has_fd)?;
        let k = self.rng.index(self.bufs[i].fds.len());
        let fd = self.bufs[i].fds.remove(k);
        let raw = fd.raw_fd();
        *d = format!("close b{} fd {raw}", self.bufs[i].id);
        drop(fd);
        self.remember_closed(raw);
        Ok(format!("ok{}", self.retire_if_unreferenced(i)))
    }

    fn op_dup(&mut self, d: &mut String) -> Result<String, String> {
        let (i, k) = self.pick_fd_at(can_dup)?;
        let b = &mut self.bufs[i];
        *d = format!("dup b{} fd {}", b.id, b.fds[k].raw_fd());
        let dup = b.fds[k]
            .try_clone()
            .map_err(|e| format!("F_DUPFD_CLOEXEC failed: {}", errno_name(&e)))?;
        let raw = dup.raw_fd();
        let got = fd_size(raw).map_err(|e| format!("lseek on the dup: {e}"))?;
        b.fds.push(dup);
        if got != b.size {
            return Err(format!("dup reports size {got}, buffer has {}", b.size));
        }
        Ok(format!("ok, fd {raw}"))
    }

    fn op_mmap(&mut self, d: &mut String) -> Result<String, String> {
        let (i, k) = self.pick_fd_at(can_mmap)?;
        let b = &mut self.bufs[i];
        let (id, size, accmode, fd) = (b.id, b.size, b.accmode, b.fds[k].raw_fd());
        let (off, len) = gen_mmap(&mut self.rng, size);
        *d = format!("mmap b{id} fd {fd} off={off:#x} len={len:#x}");
        let exp = expect_mmap(off, len, size, accmode);
        let r = b.fds[k].mmap(off, len as usize);
        judge("mmap", exp, &r)?;
        let mut map = match r {
            Ok(m) => m,
            Err(e) => return Ok(errno_name(&e)),
        };
        let what = read_then_write(&mut self.rng, &b.fds[k], &mut map, &mut b.content)?;
        b.maps.push(map);
        Ok(what)
    }

    fn op_map_rw(&mut self, d: &mut String) -> Result<String, String> {
        let (i, k) = self.pick_fd_at(can_map_rw)?;
        let j = self.rng.index(self.bufs[i].maps.len());
        let b = &mut self.bufs[i];
        let m = &mut b.maps[j];
        let buf = &b.fds[k];
        *d = format!(
            "map_rw b{} fd {} map {:#x}+{:#x}",
            b.id,
            buf.raw_fd(),
            m.offset(),
            m.len()
        );
        read_then_write(&mut self.rng, buf, m, &mut b.content)
    }

    fn op_munmap(&mut self, d: &mut String) -> Result<String, String> {
        let i = self.pick(has_map)?;
        let j = self.rng.index(self.bufs[i].maps.len());
        let m = self.bufs[i].maps.remove(j);
        *d = format!(
            "munmap b{} map {:#x}+{:#x}",
            self.bufs[i].id,
            m.offset(),
            m.len()
        );
        drop(m);
        Ok(format!("ok{}", self.retire_if_unreferenced(i)))
    }

    fn op_sync(&mut self, d: &mut String) -> Result<String, String> {
        let (i, k) = self.pick_fd_at(has_fd)?;
        let flags = gen_sync_flags(&mut self.rng);
        let b = &mut self.bufs[i];
        let fd = b.fds[k].raw_fd();
        let exp = expect_sync(flags);
        let unmatched = exp == Expect::Ok && flags & DMA_BUF_SYNC_END != 0 && b.open_starts == 0;
        *d = format!(
            "sync b{} fd {fd} flags {}{}",
            b.id,
            sync_name(flags),
            if unmatched {
                " (END without START)"
            } else {
                ""
            }
        );
        let r = b.fds[k].sync_raw(flags);
        judge("DMA_BUF_IOCTL_SYNC", exp, &r)?;
        if r.is_ok() {
            if flags & DMA_BUF_SYNC_END != 0 {
                b.open_starts = b.open_starts.saturating_sub(1);
            } else {
                b.open_starts += 1;
            }
        }
        Ok(verdict(&r))
    }

    fn op_set_name(&mut self, d: &mut String) -> Result<String, String> {
        let (i, k) = self.pick_fd_at(has_fd)?;
        let name = gen_name(&mut self.rng);
        let buf = &self.bufs[i].fds[k];
        *d = format!(
            "set_name b{} fd {} {name:?} ({} bytes)",
            self.bufs[i].id,
            buf.raw_fd(),
            name.len()
        );
        let r = buf.set_name(&name);
        judge("DMA_BUF_SET_NAME_B", expect_set_name(name.len()), &r)?;
        Ok(verdict(&r))
    }

    fn op_vmap(&mut self, d: &mut String) -> Result<String, String> {
        let (i, fd) = self.pick_fd(has_fd)?;
        let roll = self.rng.percent();
        let fill = self.rng.below(256) as u8;
        let b = &mut self.bufs[i];
        let (req, op, label) = match roll {
            0..=59 => (IMPORTER_VMAP, OP_CHECKSUM, "VMAP checksum".to_string()),
            60..=84 => (IMPORTER_VMAP, OP_FILL, format!("VMAP fill {fill:#04x}")),
            _ => (
                IMPORTER_VMAP_TWICE,
                OP_CHECKSUM,
                "VMAP_TWICE checksum".to_string(),
            ),
        };
        *d = format!("importer {label} b{} fd {fd}", b.id);
        let a = whole_buffer_op(self.imp.as_ref(), req, fd, op, fill, &label)?;
        let want = importer::checksum(&b.content);
        if a.checksum != want {
            if op == OP_FILL {
                return Err(fill_mismatch(a.checksum, want, fill, b));
            }
            return Err(checksum_mismatch("kernel", a.checksum, want, b));
        }
        if req == IMPORTER_VMAP_TWICE {
            if a.shared != 1 {
                return Err("nested vmaps returned different addresses".to_string());
            }
        } else if a.pages != b.size {
            return Err(format!("vmap covered {} bytes of {}", a.pages, b.size));
        }
        if op == OP_FILL {
            b.content.fill(fill);
        }
        Ok("ok, checksum matches".to_string())
    }

    fn op_kmap_walk(&mut self, d: &mut String) -> Result<String, String> {
        let (i, fd) = self.pick_fd(can_dma_map)?;
        let do_fill = self.rng.chance(25);
        let fill = self.rng.below(256) as u8;
        let b = &mut self.bufs[i];
        let label = if do_fill {
            format!("KMAP_WALK fill {fill:#04x}")
        } else {
            "KMAP_WALK checksum".to_string()
        };
        *d = format!("importer {label} b{} fd {fd}", b.id);
        let op = if do_fill { OP_FILL } else { OP_CHECKSUM };
        let a = whole_buffer_op(self.imp.as_ref(), IMPORTER_KMAP_WALK, fd, op, fill, &label)?;
        if a.pages != b.size / PAGE {
            return Err(format!("walked {} pages of {}", a.pages, b.size / PAGE));
        }
        let want = importer::checksum(&b.content);
        if a.checksum != want {
            if do_fill {
                return Err(fill_mismatch(a.checksum, want, fill, b));
            }
            return Err(checksum_mismatch("kernel", a.checksum, want, b));
        }
        if do_fill {
            b.content.fill(fill);
        }
        Ok(format!("ok, {} pages, checksum matches", a.pages))
    }

    fn op_attach_map(&mut self, d: &mut String) -> Result<String, String> {
        let (i, fd) = self.pick_fd(can_dma_map)?;
        let count = 1 + self.rng.below(2) as u32;
        let (id, size) = (self.bufs[i].id, self.bufs[i].size);
        *d = format!("importer ATTACH_MAP x{count} b{id} fd {fd}");
        let mut a = ImporterArgs {
            fd,
            count,
            ..Default::default()
        };
        let r = self.importer()?.call(IMPORTER_ATTACH_MAP, &mut a);
        judge("ATTACH_MAP", Expect::Ok, &r)?;
        let want = u64::from(count) * size / PAGE;
        if a.pages != want {
            return Err(format!("mapped {} pages, expected {want}", a.pages));
        }
        Ok(format!("ok, {} pages", a.pages))
    }

    fn op_hold(&mut self, d: &mut String, kind: HoldKind) -> Result<String, String> {
        let p = match kind {
            HoldKind::Vmap => can_hold,
            HoldKind::Attach => can_attach_hold,
        };
        let (i, fd) = self.pick_fd(p)?;
        let (req, label) = match kind {
            HoldKind::Vmap => (IMPORTER_HOLD, "HOLD"),
            HoldKind::Attach => (IMPORTER_ATTACH_HOLD, "ATTACH_HOLD"),
        };
        *d = format!("importer {label} b{} fd {fd}", self.bufs[i].id);
        let mut a = ImporterArgs {
            fd,
            count: 1,
            ..Default::default()
        };
        let r = self.importer()?.call(req, &mut a);
        judge(label, Expect::Ok, &r)?;
        self.bufs[i].holds.push(Hold {
            handle: a.handle,
            kind,
        });
        Ok(format!("ok, handle {}", a.handle))
    }

    fn op_release(&mut self, d: &mut String) -> Result<String, String> {
        let roll = self.rng.percent();
        let fill_roll = self.rng.percent();
        let fill = self.rng.below(256) as u8;
        let live = self.bufs.iter().any(has_hold);
        if !live || (roll < 15 && !self.released.is_empty()) {
            let k = self.rng.index(self.released.len());
            let handle = *self
                .released
                .get(k)
                .ok_or_else(|| "internal: no hold and no released handle".to_string())?;
            *d = format!("importer RELEASE of released handle {handle}");
            let mut a = ImporterArgs {
                handle,
                ..Default::default()
            };
            let r = self.importer()?.call(IMPORTER_RELEASE, &mut a);
            judge("RELEASE", Expect::Err(libc::ENOENT), &r)?;
            return Ok(verdict(&r));
        }
        let i = self.pick(has_hold)?;
        let j = self.rng.index(self.bufs[i].holds.len());
        let hold = self.bufs[i].holds.remove(j);
        let do_fill = hold.kind == HoldKind::Vmap && fill_roll < 20;
        *d = format!(
            "importer RELEASE{} b{} {:?} handle {}",
            if do_fill {
                format!(" fill {fill:#04x}")
            } else {
                String::new()
            },
            self.bufs[i].id,
            hold.kind,
            hold.handle
        );
        let mut a = ImporterArgs {
            handle: hold.handle,
            op: if do_fill { OP_FILL } else { OP_CHECKSUM },
            fill: u32::from(fill),
            ..Default::default()
        };
        if let Err(e) = self.importer()?.call(IMPORTER_RELEASE, &mut a) {
            // Not released: keep it, so the final cleanup tries again.
            self.bufs[i].holds.push(hold);
            return Err(format!("RELEASE: expected ok, got {}", errno_name(&e)));
        }
        self.released.push(hold.handle);
        if self.released.len() > MAX_RELEASED {
            self.released.remove(0);
        }
        let b = &mut self.bufs[i];
        check_release(&a, hold.kind, b)?;
        if do_fill {
            b.content.fill(fill);
        }
        Ok(format!("ok{}", self.retire_if_unreferenced(i)))
    }

    fn op_bad_fd(&mut self, d: &mut String) -> Result<String, String> {
        const REQS: [(u32, &str); 7] = [
            (IMPORTER_VMAP, "VMAP"),
            (IMPORTER_VMAP_TWICE, "VMAP_TWICE"),
            (IMPORTER_KMAP_WALK, "KMAP_WALK"),
            (IMPORTER_ATTACH_MAP, "ATTACH_MAP"),
            (IMPORTER_HOLD, "HOLD"),
            (IMPORTER_ATTACH_HOLD, "ATTACH_HOLD"),
            (IMPORTER_CPU_ACCESS, "CPU_ACCESS"),
        ];
        let (req, label) = REQS[self.rng.index(REQS.len())];
        let roll = self.rng.percent();
        let k = self.rng.index(self.closed.len().max(1));
        let big = (1 << 20) + self.rng.below(1 << 16) as RawFd;
        let end = self.rng.below(2) as u32;
        let closed = self.closed.get(k).copied().filter(|&fd| is_closed(fd));
        let (fd, kind, exp) = match (roll, closed, self.other_fd) {
            (0..=49, Some(fd), _) => (fd, "closed", libc::EBADF),
            (50..=64, _, _) => (-1, "negative", libc::EBADF),
            (65..=84, _, Some(fd)) => (fd, "not a dma-buf", libc::EINVAL),
            _ => (big, "never opened", libc::EBADF),
        };
        *d = format!("importer {label} on {kind} fd {fd}");
        let mut a = ImporterArgs {
            fd,
            count: 1,
            end,
            ..Default::default()
        };
        let imp = self.importer()?;
        let r = imp.call(req, &mut a);
        if r.is_ok() && (req == IMPORTER_HOLD || req == IMPORTER_ATTACH_HOLD) {
            let mut rel = ImporterArgs {
                handle: a.handle,
                ..Default::default()
            };
            let _ = imp.call(IMPORTER_RELEASE, &mut rel);
        }
        judge(label, Expect::Err(exp), &r)?;
        Ok(verdict(&r))
    }

    fn op_fork(&mut self, d: &mut String) -> Result<String, String> {
        let i = self.pick(has_map)?;
        let j = self.rng.index(self.bufs[i].maps.len());
        let b = &self.bufs[i];
        let m = &b.maps[j];
        let picks: Vec<usize> = (0..CHILD_CHECKS.min(m.len()))
            .map(|_| self.rng.index(m.len()))
            .collect();
        let first = b.fds.first();
        *d = format!(
            "fork: child checks {} bytes of b{} map {:#x}+{:#x}",
            picks.len(),
            b.id,
            m.offset(),
            m.len()
        );
        let _ = io::stdout().flush();
        // SAFETY: the fuzzer runs single-threaded (the runner forks each test into its own
        // single-threaded process), so the child may run arbitrary code after fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", io::Error::last_os_error()));
        }
        if pid == 0 {
            child_check(m, &b.content, &picks, first);
        }
        let mut status = 0;
        loop {
            // SAFETY: `pid` is our child and `status` is a valid out-pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(format!("waitpid: {e}"));
            }
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            return Err(if sig == libc::SIGALRM {
                "child timed out (5 s alarm)".to_string()
            } else {
                format!("child killed by signal {sig}")
            });
        }
        match libc::WEXITSTATUS(status) {
            0 => Ok("ok, child saw the model".to_string()),
            1 => Err(format!(
                "child read bytes that differ from the model (offsets {picks:?} of the mapping)"
            )),
            2 => Err("child's SYNC START|READ failed".to_string()),
            n => Err(format!("child exited with status {n}")),
        }
    }

    /// Releases every importer hold (checking what RELEASE reports), unmaps, closes.
    fn teardown(&mut self) -> Result<(), String> {
        let mut first_err = None;
        for i in 0..self.bufs.len() {
            let holds = std::mem::take(&mut self.bufs[i].holds);
            for hold in holds {
                let mut a = ImporterArgs {
                    handle: hold.handle,
                    ..Default::default()
                };
                let r = match &self.imp {
                    Some(imp) => imp.call(IMPORTER_RELEASE, &mut a),
                    None => Ok(()),
                };
                let res = judge("RELEASE", Expect::Ok, &r)
                    .and_then(|()| check_release(&a, hold.kind, &self.bufs[i]));
                if let Err(e) = res {
                    first_err.get_or_insert(format!(
                        "b{} {:?} handle {}: {e}",
                        self.bufs[i].id, hold.kind, hold.handle
                    ));
                }
            }
        }
        for b in &mut self.bufs {
            b.maps.clear();
            b.fds.clear();
        }
        self.bufs.clear();
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Fuzz<'_> {
    /// Holds live in the importer device, not in this process: release them even when a
    /// run stops early, so no buffer stays pinned for the tests that follow.
    fn drop(&mut self) {
        if let Some(imp) = &self.imp {
            for b in &self.bufs {
                for h in &b.holds {
                    let mut a = ImporterArgs {
                        handle: h.handle,
                        ..Default::default()
                    };
                    let _ = imp.call(IMPORTER_RELEASE, &mut a);
                }
            }
        }
    }
}

/// What RELEASE must report: a vmap hold checksums the current content; an attachment hold
/// writes nothing back.
fn check_release(a: &ImporterArgs, kind: HoldKind, b: &Buf) -> Result<(), String> {
    match kind {
        HoldKind::Vmap => {
            let want = importer::checksum(&b.content);
            if a.checksum != want {
                return Err(checksum_mismatch("held vmap", a.checksum, want, b));
            }
            if a.pages != b.size {
                return Err(format!("held vmap covers {} bytes of {}", a.pages, b.size));
            }
        }
        HoldKind::Attach => {
            if a.checksum != 0 || a.pages != 0 {
                return Err(format!(
                    "attachment release wrote checksum {:#x}, pages {}",
                    a.checksum, a.pages
                ));
            }
        }
    }
    Ok(())
}

fn is_closed(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the fd table.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    r == -1
}

fn budget_str(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{:.3}", d.as_secs_f64())
    }
}

/// Prints the seed and logs it to the kernel log, so it survives a panic of either.
fn announce(heap: &str, cfg: &Config) {
    let mut out = io::stdout().lock();
    let _ = writeln!(
        out,
        "# fuzz: heap={heap} seed={} budget={}s",
        cfg.seed,
        budget_str(cfg.budget)
    );
    let _ = out.flush();
    if let Ok(mut k) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = k.write_all(format!("heaprig: fuzz heap={heap} seed={}\n", cfg.seed).as_bytes());
    }
}

fn push_last_ops(ctx: &mut Ctx, ring: &Ring) {
    for (n, desc, result) in &ring.items {
        ctx.diag(format!("fuzz: last op {n}: {desc} -> {result}"));
    }
}

/// The fuzzer: runs operations until the budget or `max_ops`, then tears down in order.
pub fn run(ctx: &mut Ctx, heap: &Heap, cfg: &Config) -> Outcome {
    let seed = cfg.seed;
    announce(&heap.name, cfg);
    let mut taint = match Taint::open() {
        Ok(t) => Some(t),
        Err(e) => {
            ctx.diag(format!(
                "fuzz: cannot read /proc/sys/kernel/tainted ({e}); taint is not checked"
            ));
            None
        }
    };
    let imp = crate::expect::optional_importer()?;
    if imp.is_none() {
        ctx.diag(format!(
            "fuzz: no {} (kernel built without it); importer operations skipped",
            importer::IMPORTER_DEV
        ));
    }
    let mut f = Fuzz {
        heap,
        rng: Rng::new(seed),
        imp,
        bufs: Vec::new(),
        next_id: 0,
        closed: Vec::new(),
        released: Vec::new(),
        other_fd: taint.as_ref().map(|t| t.file.as_raw_fd()),
    };
    let mut ring = Ring::new(RING);
    let mut counts = [0u64; OP_COUNT];
    let start = Instant::now();
    let mut n = 0u64;
    while cfg.max_ops.is_none_or(|m| n < m) && start.elapsed() < cfg.budget {
        let avail = f.avail();
        let Some(op) = choose_op(&mut f.rng, &avail) else {
            break;
        };
        counts[op as usize] += 1;
        let mut desc = op.name().to_string();
        let mut r = f.step(op, &mut desc);
        if r.is_ok() {
            if let Some(t) = &mut taint {
                if let Err(e) = t.check(|| format!("op {n}")) {
                    r = Err(e);
                }
            }
        }
        match r {
            Ok(result) => ring.push(n, desc, result),
            Err(what) => {
                let line = fail_line(&heap.name, seed, n, &desc, &what);
                ring.push(n, desc, format!("UNEXPECTED: {what}"));
                push_last_ops(ctx, &ring);
                return Err(Stop::Fail(line));
            }
        }
        n += 1;
    }
    let elapsed = start.elapsed();
    let mut end = f.teardown();
    if end.is_ok() {
        if let Some(t) = &mut taint {
            end = t.check(|| "teardown".to_string());
        }
    }
    if let Err(what) = end {
        push_last_ops(ctx, &ring);
        return Err(Stop::Fail(format!(
            "fuzz seed {seed} teardown after {n} ops: {what}; replay: cargo xtask fuzz --heap {} --seed {seed} --ops {n}",
            heap.name
        )));
    }
    let secs = elapsed.as_secs_f64();
    ctx.diag(format!(
        "fuzz: heap={} seed={seed} ops={n} seconds={secs:.1} ops_per_sec={:.0}",
        heap.name,
        if secs > 0.0 { n as f64 / secs } else { 0.0 }
    ));
    let per_op: Vec<String> = OPS
        .iter()
        .map(|o| format!("{}={}", o.name(), counts[*o as usize]))
        .collect();
    ctx.diag(format!("fuzz: op counts: {}", per_op.join(" ")));
    ctx.fact("fuzz", "no unexpected outcome");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_stream() {
        // Vigna's splitmix64.c: these values pin the stream recorded seeds depend on.
        let mut r = Rng::new(0);
        assert_eq!(r.u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.u64(), 0x06c4_5d18_8009_454f);
        let mut r = Rng::new(1_234_567);
        assert_eq!(r.u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn rng_is_deterministic_for_a_seed() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..100).map(|_| r.u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..100).map(|_| r.u64()).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn rng_differs_across_seeds() {
        let mut a = Rng::new(1);
        let mut b = Rng::new(2);
        let same = (0..100).filter(|_| a.u64() == b.u64()).count();
        assert_eq!(same, 0);
    }

    #[test]
    fn rng_below_stays_in_range() {
        let mut r = Rng::new(7);
        for n in [1u64, 2, 3, 100, 4095, u64::MAX] {
            for _ in 0..1000 {
                assert!(r.below(n) < n);
            }
        }
        assert_eq!(r.below(0), 0);
        let mut seen = [false; 3];
        for _ in 0..100 {
            seen[r.index(3)] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn op_choice_is_stable_for_a_seed_and_state() {
        let mut avail = [true; OP_COUNT];
        avail[Op::Fork as usize] = false;
        let seq = |seed| {
            let mut r = Rng::new(seed);
            (0..500)
                .map(|_| choose_op(&mut r, &avail))
                .collect::<Vec<_>>()
        };
        assert_eq!(seq(9), seq(9));
        assert_ne!(seq(9), seq(10));
        // Pinned: a change here breaks every recorded seed.
        let mut r = Rng::new(0);
        let first: Vec<Option<Op>> = (0..4)
            .map(|_| choose_op(&mut r, &[true; OP_COUNT]))
            .collect();
        let mut again = Rng::new(0);
        let total: u64 = OPS.iter().map(|o| o.weight()).sum();
        let mut want = Vec::new();
        for _ in 0..4 {
            let mut x = again.below(total);
            let mut pick = None;
            for o in OPS {
                if x < o.weight() {
                    pick = Some(o);
                    break;
                }
                x -= o.weight();
            }
            want.push(pick);
        }
        assert_eq!(first, want);
    }

    #[test]
    fn op_choice_respects_availability() {
        let mut r = Rng::new(3);
        let mut avail = [false; OP_COUNT];
        assert_eq!(choose_op(&mut r, &avail), None);
        avail[Op::Alloc as usize] = true;
        avail[Op::AllocBad as usize] = true;
        let mut seen = [0u32; OP_COUNT];
        for _ in 0..2000 {
            let o = choose_op(&mut r, &avail);
            assert!(matches!(o, Some(Op::Alloc) | Some(Op::AllocBad)));
            if let Some(o) = o {
                seen[o as usize] += 1;
            }
        }
        // Weights 10 and 3: both chosen, alloc far more often.
        assert!(seen[Op::AllocBad as usize] > 200);
        assert!(seen[Op::Alloc as usize] > 3 * seen[Op::AllocBad as usize]);
    }

    #[test]
    fn op_table_is_complete_and_indexed_in_order() {
        for (i, o) in OPS.iter().enumerate() {
            assert_eq!(*o as usize, i);
            assert!(o.weight() > 0);
        }
        let mut names: Vec<&str> = OPS.iter().map(|o| o.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OP_COUNT);
    }

    #[test]
    fn expect_sync_table() {
        use Expect::{Err, Ok};
        let einval = Err(libc::EINVAL);
        for dir in [DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_RW] {
            assert_eq!(expect_sync(DMA_BUF_SYNC_START | dir), Ok);
            assert_eq!(expect_sync(DMA_BUF_SYNC_END | dir), Ok);
            assert_eq!(expect_sync(dir | 0x8), einval);
            assert_eq!(expect_sync(dir | 1 << 63), einval);
        }
        assert_eq!(expect_sync(DMA_BUF_SYNC_START), einval);
        assert_eq!(expect_sync(DMA_BUF_SYNC_END), einval);
        assert_eq!(expect_sync(u64::MAX), einval);
    }

    #[test]
    fn expect_alloc_table() {
        let einval = Expect::Err(libc::EINVAL);
        assert_eq!(expect_alloc(4096, RDWR_CLOEXEC, 0), Expect::Ok);
        assert_eq!(expect_alloc(1, RDWR_CLOEXEC, 0), Expect::Ok);
        assert_eq!(expect_alloc(4097, libc::O_RDONLY as u32, 0), Expect::Ok);
        assert_eq!(expect_alloc(2 * MIB, VALID_FD_FLAGS, 0), Expect::Ok);
        assert_eq!(expect_alloc(0, RDWR_CLOEXEC, 0), einval);
        assert_eq!(expect_alloc(u64::MAX, RDWR_CLOEXEC, 0), einval);
        assert_eq!(expect_alloc(u64::MAX - 4094, RDWR_CLOEXEC, 0), einval);
        assert_eq!(expect_alloc(4096, 0x8000_0000, 0), einval);
        assert_eq!(
            expect_alloc(4096, RDWR_CLOEXEC | libc::O_NONBLOCK as u32, 0),
            einval
        );
        assert_eq!(expect_alloc(4096, RDWR_CLOEXEC, 1), einval);
        assert_eq!(expect_alloc(1 << 50, RDWR_CLOEXEC, 1), einval);
        assert_eq!(expect_alloc(1 << 50, RDWR_CLOEXEC, 0), Expect::AnyErr);
        // Page-aligned just below the wrap: a real request beyond RAM.
        assert_eq!(
            expect_alloc(u64::MAX - 4095, RDWR_CLOEXEC, 0),
            Expect::AnyErr
        );
        assert_eq!(expect_alloc(1 << 35, RDWR_CLOEXEC, 0), Expect::Any);
    }

    #[test]
    fn expect_mmap_table() {
        let (einval, eacces) = (Expect::Err(libc::EINVAL), Expect::Err(libc::EACCES));
        let size = 16 * PAGE;
        assert_eq!(expect_mmap(0, size, size, RDWR), Expect::Ok);
        assert_eq!(expect_mmap(0, 1, size, RDWR), Expect::Ok);
        assert_eq!(expect_mmap(15 * PAGE, 100, size, RDWR), Expect::Ok);
        assert_eq!(expect_mmap(15 * PAGE, PAGE + 1, size, RDWR), einval);
        assert_eq!(expect_mmap(size, PAGE, size, RDWR), einval);
        assert_eq!(expect_mmap(0, size + 1, size, RDWR), einval);
        assert_eq!(expect_mmap(1 << 50, PAGE, size, RDWR), einval);
        assert_eq!(expect_mmap(1, PAGE, size, RDWR), einval);
        assert_eq!(expect_mmap(0, 0, size, RDWR), einval);
        assert_eq!(expect_mmap(0, PAGE, size, libc::O_RDONLY as u32), eacces);
        assert_eq!(expect_mmap(0, PAGE, size, libc::O_WRONLY as u32), eacces);
        assert_eq!(
            expect_mmap(size, PAGE, size, libc::O_ACCMODE as u32),
            eacces
        );
        // The syscall rejects a misaligned offset before looking at the file.
        assert_eq!(expect_mmap(1, PAGE, size, libc::O_RDONLY as u32), einval);
    }

    #[test]
    fn expect_set_name_boundary() {
        assert_eq!(expect_set_name(0), Expect::Ok);
        assert_eq!(expect_set_name(31), Expect::Ok);
        assert_eq!(expect_set_name(32), Expect::OkOr(libc::EINVAL));
        assert_eq!(expect_set_name(40), Expect::OkOr(libc::EINVAL));
    }

    #[test]
    fn expect_admits_outcomes() {
        let ok: io::Result<()> = Ok(());
        let einval: io::Result<()> = Err(io::Error::from_raw_os_error(libc::EINVAL));
        let enomem: io::Result<()> = Err(io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(Expect::Ok.admits(&ok) && !Expect::Ok.admits(&einval));
        assert!(Expect::Err(libc::EINVAL).admits(&einval));
        assert!(!Expect::Err(libc::EINVAL).admits(&enomem));
        assert!(!Expect::Err(libc::EINVAL).admits(&ok));
        assert!(Expect::AnyErr.admits(&enomem) && !Expect::AnyErr.admits(&ok));
        assert!(Expect::OkOr(libc::EINVAL).admits(&ok));
        assert!(!Expect::OkOr(libc::EINVAL).admits(&enomem));
        assert!(Expect::Any.admits(&ok) && Expect::Any.admits(&enomem));
        assert_eq!(
            judge("SYNC", Expect::Ok, &einval),
            Err("SYNC: expected ok, got EINVAL".to_string())
        );
    }

    #[test]
    fn generated_allocations_are_safe_for_the_c_heap() {
        let mut r = Rng::new(11);
        for _ in 0..10_000 {
            let len = gen_len(&mut r);
            assert!((1..=2 * MIB).contains(&len));
            assert_eq!(expect_alloc(len, gen_valid_fd_flags(&mut r), 0), Expect::Ok);
            // Without huge_ok every bad request is refused before any page is allocated.
            let (len, fd_flags, heap_flags) = gen_bad_alloc(&mut r, false);
            assert_eq!(
                expect_alloc(len, fd_flags, heap_flags),
                Expect::Err(libc::EINVAL),
                "len {len:#x} fd_flags {fd_flags:#x} heap_flags {heap_flags:#x}"
            );
            let (len, fd_flags, heap_flags) = gen_bad_alloc(&mut r, true);
            assert!(matches!(
                expect_alloc(len, fd_flags, heap_flags),
                Expect::Err(libc::EINVAL) | Expect::AnyErr
            ));
        }
    }

    #[test]
    fn generated_mmaps_stay_near_the_buffer() {
        let mut r = Rng::new(5);
        let mut ok = 0;
        for _ in 0..10_000 {
            let size = page_align(gen_len(&mut r));
            let (off, len) = gen_mmap(&mut r, size);
            assert!(len <= size + 4 * PAGE);
            assert!(off < size + 4 * PAGE || off == 1 << 50);
            if expect_mmap(off, len, size, RDWR) == Expect::Ok {
                ok += 1;
                assert!(off + len <= size);
            }
        }
        assert!(ok > 5_000, "only {ok} of 10000 mmaps are valid");
    }

    #[test]
    fn generated_sync_flags_cover_valid_and_invalid() {
        let mut r = Rng::new(8);
        let valid = (0..1000)
            .filter(|_| expect_sync(gen_sync_flags(&mut r)) == Expect::Ok)
            .count();
        assert!((500..900).contains(&valid), "{valid} valid of 1000");
    }

    #[test]
    fn ring_keeps_the_last_16_in_order() {
        let mut ring = Ring::new(RING);
        for n in 0..20u64 {
            ring.push(n, format!("op{n}"), "ok".to_string());
        }
        let kept: Vec<u64> = ring.items.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(kept, (4..20).collect::<Vec<_>>());
        assert_eq!(ring.items.front().map(|i| i.1.as_str()), Some("op4"));
        let mut short = Ring::new(RING);
        short.push(0, "a".to_string(), "ok".to_string());
        assert_eq!(short.items.len(), 1);
    }

    #[test]
    fn failure_line_names_the_replay() {
        assert_eq!(
            fail_line(
                "system",
                77,
                41,
                "sync b0 fd 5 flags START|READ",
                "expected ok, got EINVAL"
            ),
            "fuzz seed 77 op 41 (sync b0 fd 5 flags START|READ): expected ok, got EINVAL; \
             replay: cargo xtask fuzz --heap system --seed 77 --ops 42"
        );
    }

    #[test]
    fn config_is_what_was_set() {
        let c = Config {
            seed: 123,
            budget: Duration::from_millis(1500),
            max_ops: Some(9),
        };
        set_config(c.clone());
        assert_eq!(config(), c);
        assert_eq!(budget_str(c.budget), "1.500");
        assert_eq!(budget_str(Duration::from_secs(10)), "10");
        let fresh = Config::from_time(Duration::from_secs(3));
        assert_eq!(fresh.budget, Duration::from_secs(3));
        assert_eq!(fresh.max_ops, None);
    }

    #[test]
    fn check_bytes_reports_the_first_mismatch() {
        let mut r = Rng::new(1);
        let want = vec![0u8; 100];
        let mut got = want.clone();
        assert_eq!(check_bytes(&mut r, &got, &want, 0, 8192), Ok(100));
        got[42] = 7;
        assert_eq!(
            check_bytes(&mut r, &got, &want, 4096, 8192),
            Err("byte 4138 of 8192 reads 0x07, model has 0x00".to_string())
        );
    }
}
