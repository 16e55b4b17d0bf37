//! Memory-cgroup accounting of heap allocations (`dma_heap.mem_accounting`, Linux 7.x; the
//! rig boots 7.3 with it on): an allocation made inside a cgroup raises its
//! `memory.current` by about its size and lowers it again when freed, and under `memory.max`
//! an allocation too large never costs a bystander process in the cgroup its life. Ours
//! must fail it with ENOMEM and wake no OOM killer; what the C heaps do is recorded (the C
//! system heap's order-0 allocations may invoke the memcg OOM killer). Kernels without the
//! parameter charge nothing: SKIP, with why.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ensure;
use crate::harness::{errno_name, Context, Ctx, Outcome, Stop};
use crate::process::{signal_name, spawn, Exit};
use crate::uapi::{Heap, MIB};
use heaprig_protocol::bench::OURS;
use heaprig_protocol::heaps::CMA_NAMES;
use std::process::{Command, Stdio};

/// The parameter that makes heaps charge their pages (`Y`/`N`; absent before 7.x).
pub(super) const PARAM: &str = "/sys/module/dma_heap/parameters/mem_accounting";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What is allocated to see the charge, and the limit and allocation that must fail.
const CHARGED: u64 = 16 * MIB;
const LIMIT: u64 = 32 * MIB;
const TOO_LARGE: u64 = 64 * MIB;

/// Whether `heap` charges its pages when the parameter is on: the C CMA heap (7.3) does not
/// look at it; the C system heap and ours do.
fn charges(heap: &str) -> bool {
    !CMA_NAMES.contains(&heap)
}

/// A child cgroup this process lives in until dropped (then back to the root, removed).
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn enter(name: &str) -> Result<Cgroup, Stop> {
        let root = Path::new(CGROUP_ROOT);
        if !root.join("cgroup.controllers").exists() {
            mount_cgroup2()?;
        }
        let controllers = fs::read_to_string(root.join("cgroup.controllers"))
            .context("reading cgroup.controllers")?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(crate::expect::missing(
                "CONFIG_MEMCG",
                "cgroup v2 has no memory controller",
            ));
        }
        fs::write(root.join("cgroup.subtree_control"), "+memory")
            .context("enabling the memory controller")?;
        let dir = root.join(name);
        // A leftover of a crashed run is empty of processes: reuse it.
        if !dir.is_dir() {
            fs::create_dir(&dir).context(format!("mkdir {}", dir.display()))?;
        }
        let cg = Cgroup { dir };
        cg.write("cgroup.procs", &std::process::id().to_string())?;
        Ok(cg)
    }

    /// Moves this process back to the root cgroup (it stays there after).
    fn leave(&self) -> Outcome {
        fs::write(
            Path::new(CGROUP_ROOT).join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .context("moving back to the root cgroup")
    }

    fn write(&self, file: &str, value: &str) -> Outcome {
        fs::write(self.dir.join(file), value).context(format!("writing {value} to {file}"))
    }

    fn read_u64(&self, file: &str) -> Result<u64, Stop> {
        let text = fs::read_to_string(self.dir.join(file)).context(format!("reading {file}"))?;
        text.trim()
            .parse()
            .map_err(|_| Stop::Fail(format!("{file}: not a number: {text:?}")))
    }

    /// A counter of `memory.events` (`oom`, `oom_kill`, ...).
    fn event(&self, key: &str) -> Result<u64, Stop> {
        let text =
            fs::read_to_string(self.dir.join("memory.events")).context("reading memory.events")?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = self.leave();
        let _ = fs::remove_dir(&self.dir);
    }
}

/// A `sleep` process in a cgroup, killed and reaped on drop.
struct Bystander(std::process::Child);

impl Bystander {
    fn start(cg: &Cgroup) -> Result<Bystander, Stop> {
        let child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the bystander (sleep)")?;
        let b = Bystander(child);
        cg.write("cgroup.procs", &b.0.id().to_string())?;
        Ok(b)
    }

    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mount_cgroup2() -> Outcome {
    let target = std::ffi::CString::new(CGROUP_ROOT).expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let r = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(Stop::Fail(format!(
            "mounting cgroup2 on {CGROUP_ROOT}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Rounds a byte count to MiB for the snapshot (charges vary by a few pages of metadata).
fn mib(bytes: u64) -> String {
    format!("{} MiB", (bytes + MIB / 2) / MIB)
}

pub fn memcg_accounting(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let on = match fs::read_to_string(PARAM) {
        Err(_) => {
            return Err(Stop::Skip(format!(
                "this kernel has no {PARAM} (a parameter newer than this kernel): heaps \
                 charge no memory cgroup"
            )))
        }
        Ok(v) => v.trim() == "Y",
    };
    ensure!(
        on,
        "dma_heap.mem_accounting is off: the rig boots this kernel with it on"
    );
    let cg = Cgroup::enter(&format!("heaprig-memcg-{}", heap.name))?;
    let before = cg.read_u64("memory.current")?;
    let buf = heap.alloc(CHARGED).context("alloc 16 MiB in the cgroup")?;
    let grew = cg.read_u64("memory.current")?.saturating_sub(before);
    drop(buf);
    let left = cg.read_u64("memory.current")?.saturating_sub(before);
    ctx.fact("16 MiB allocation: memory.current grows by", mib(grew));
    ctx.fact("after its close: memory.current above the start", mib(left));
    if charges(&heap.name) {
        ensure!(
            (CHARGED..CHARGED + 2 * MIB).contains(&grew),
            "a 16 MiB allocation raised memory.current by {grew} bytes, not about 16 MiB"
        );
        ensure!(
            left < MIB,
            "{left} bytes stay charged after the buffer was freed"
        );
    }

    // Over the limit: an allocator and a bystander in the cgroup, this process outside it.
    // The allocator volunteers as the OOM killer's victim (oom_score_adj 1000) and the
    // bystander is a small `sleep`, so if the heap's charge wakes the OOM killer, the
    // allocator is what it kills, and a dead bystander means more than one kill.
    cg.leave()?;
    cg.write("memory.max", &LIMIT.to_string())?;
    let mut bystander = Bystander::start(&cg)?;
    let procs = cg.dir.join("cgroup.procs");
    let mut allocator = spawn(Duration::from_secs(30), || {
        let me = std::process::id().to_string();
        if fs::write(&procs, &me).is_err() || fs::write("/proc/self/oom_score_adj", "1000").is_err()
        {
            return 254;
        }
        match heap.alloc(TOO_LARGE) {
            Ok(_) => 0,
            Err(e) => e.raw_os_error().unwrap_or(255),
        }
    })
    .context("fork the allocator")?;
    let result = match allocator.wait_exit().context("wait for the allocator")? {
        Exit::Code(0) => "ok".to_string(),
        Exit::Code(254) => {
            return Err(Stop::Fail("the allocator could not join the cgroup".into()))
        }
        Exit::Code(n) => errno_name(&std::io::Error::from_raw_os_error(n)),
        Exit::Signal(sig) => format!("the allocator was killed by {}", signal_name(sig)),
    };
    let killed = cg.event("oom_kill")?;
    let alive = bystander.alive();
    drop(bystander);
    ctx.fact("64 MiB under memory.max 32 MiB", &result);
    ctx.fact("OOM kills in the cgroup", killed);
    ctx.fact("bystander alive", alive);
    ensure!(
        alive,
        "the allocation over memory.max killed the bystander process ({killed} OOM kill(s))"
    );
    if heap.name == OURS {
        ensure!(
            result == "ENOMEM" && killed == 0,
            "a 64 MiB allocation under a 32 MiB memory.max: {result}, {killed} OOM kill(s); \
             ours must fail it with ENOMEM and wake no OOM killer"
        );
    }
    Ok(())
}
