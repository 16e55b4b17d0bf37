//! Booting the test kernel with virtme-ng. Every wait is bounded, QEMU is always reaped
//! (vng runs in its own process group, killed as a whole), and what happens is reported as
//! typed events so the caller decides how it looks (danobi/vmtest's `Output`).

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use crate::parse::splat::is_panic_line;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelChoice {
    /// Probe KVM with a short canary boot; fall back to TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub accel: Accel,
    pub memory: String,
    pub cpus: u32,
    /// Shared read-write with the guest at the same path.
    pub rwdir: Option<PathBuf>,
    /// Guest working directory (the project, which the guest sees read-only).
    pub cwd: PathBuf,
    /// A udev rules directory mounted over the guest's for non-interactive runs: only the
    /// rules virtme-ng-init needs, so the coldplug it waits for is short.
    pub udev_rules: Option<PathBuf>,
    /// Kernel command-line arguments, after the built-in ones.
    pub boot_args: Vec<String>,
}

/// Validates a QEMU-style memory size (`1024M`, `2G`) up front.
pub fn parse_memory(s: &str) -> Result<String, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("memory size {s:?} must be a number with M or G, e.g. 2G"))?;
    let mib = match unit {
        "M" | "m" | "" => n,
        "G" | "g" => n * 1024,
        _ => return Err(format!("memory size {s:?}: unit must be M or G")),
    };
    if !(256..=16384).contains(&mib) {
        return Err(format!(
            "memory size {s:?} is outside 256M..16G (the guest needs room for KASAN's shadow; \
             the host has 24 GiB)"
        ));
    }
    Ok(format!("{mib}M"))
}

/// Quotes one argument for the guest's /bin/sh (vng --exec takes a single command string).
pub fn sh_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// vng's own root mount options (virtme-ng 1.42, `virtme/commands/run.py`; the rig pins that
/// version in setup) plus the guest page cache; the kernel takes the last `rootflags=`.
/// Without the cache every exec in the guest reads its binary and libraries over 9p again:
/// virtme-ng-init's `systemd-tmpfiles` took 2.9 s of the debug kernel's boot, 1.3 s with it
/// (measured 2026-12-06). Only for commands: the guest boots fresh, so nothing it caches can
/// be stale, whereas an interactive shell would keep showing a file as it was before an edit
/// on the host. The results directory is a mount of its own and stays uncached.
const CACHED_ROOT: &str =
    "rootflags=version=9p2000.L,trans=virtio,access=any,msize=524288,cache=loose";

/// The vng command line. `exec`: a guest shell command, or None for an interactive shell.
pub fn vng_args(spec: &VmSpec, exec: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--run".into(),
        spec.kernel.display().to_string(),
        // Kernel console on stderr, guest command output on stdout.
        "--verbose".into(),
        "--user".into(),
        "root".into(),
        "--memory".into(),
        spec.memory.clone(),
        "--cpus".into(),
        spec.cpus.to_string(),
        "--cwd".into(),
        spec.cwd.display().to_string(),
        // The root is 9p either way here, but without this vng first starts virtiofsd and
        // waits for it: 6 s of every boot (measured 2026-11-30: perf kernel `cat
        // /proc/uptime` 10.8 s wall without, 4.5 s with, the same QEMU command line).
        "--force-9p".into(),
    ];
    if spec.accel == Accel::Tcg {
        a.push("--disable-kvm".into());
    }
    if let Some(d) = &spec.rwdir {
        a.push(format!("--rwdir={}", d.display()));
    }
    if let (Some(rules), Some(_)) = (&spec.udev_rules, exec) {
        // Mounted by virtme-ng-init next to udevd's start: if udevd wins the race it reads
        // the host's full rules, which is only slower, never wrong.
        a.push(format!("--rodir=/usr/lib/udev/rules.d={}", rules.display()));
    }
    let mut append = spec.boot_args.clone();
    if exec.is_some() {
        append.push(CACHED_ROOT.into());
    }
    if !append.is_empty() {
        a.push("--append".into());
        a.push(append.join(" "));
    }
    if let Some(cmd) = exec {
        a.push("--disable-monitor".into());
        a.push("--exec".into());
        a.push(cmd.into());
    }
    a
}

/// One thing that happened during a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A line the guest command printed.
    Guest(String),
    /// A kernel console line (also QEMU's and vng's own stderr).
    Console(String),
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Ending {
    /// vng exited by itself with this code (the guest command's exit code).
    Exited { code: i32 },
    /// vng was killed by a signal we did not send.
    Signalled { signal: i32 },
    /// No sign of a booted guest within the boot limit.
    BootTimeout { secs: u64 },
    /// A guest test ran past its limit (and the guest's own timeout did not end it).
    TestTimeout { test: String, secs: u64 },
    /// The whole run passed its limit.
    RunTimeout { secs: u64 },
    /// The kernel panicked; QEMU was stopped.
    Panic,
}

/// How a session ended, in words for reports.
impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Exited { code } => write!(f, "vng exited with {code}"),
            Ending::Signalled { signal } => write!(f, "vng was killed by signal {signal}"),
            Ending::BootTimeout { secs } => write!(f, "the guest did not boot within {secs}s"),
            Ending::TestTimeout { test, secs } => {
                write!(
                    f,
                    "test {test} hung past its {secs}s limit; QEMU was stopped"
                )
            }
            Ending::RunTimeout { secs } => {
                write!(f, "the run passed its {secs}s limit; QEMU was stopped")
            }
            Ending::Panic => write!(f, "the guest kernel panicked; QEMU was stopped"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub boot: Duration,
    /// Per guest test (from `# heaprig-begin`); None for arbitrary commands.
    pub test: Option<Duration>,
    pub run: Duration,
}

/// Everything a session produced; survives any ending.
#[derive(Debug)]
pub struct Session {
    pub guest: Vec<String>,
    pub console: Vec<String>,
    pub ending: Ending,
    /// From start to the first sign of the guest's init running the command.
    pub boot: Option<Duration>,
    pub total: Duration,
}

/// A running vng, reaped on drop whatever happened.
struct Running {
    child: Child,
    reaped: bool,
}

impl Running {
    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions; -pgid names the group we created
        // for vng (process_group(0)), so QEMU and its helpers die with it.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }

    fn wait(&mut self) -> Result<ExitStatus> {
        let st = self.child.wait().context("waiting for vng")?;
        self.reaped = true;
        self.reap_group();
        Ok(st)
    }

    /// Waits (bounded) for everything else in vng's process group: QEMU is vng's child, so
    /// once vng is gone it is ours to reap only because we are a child subreaper.
    fn reap_group(&self) {
        let pgid = self.child.id() as libc::pid_t;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut killed = false;
        loop {
            let mut st = 0;
            // SAFETY: `st` is a valid out-pointer; -pgid waits for that group only.
            let r = unsafe { libc::waitpid(-pgid, &mut st, libc::WNOHANG) };
            if r > 0 {
                continue;
            }
            if r < 0 {
                return; // ECHILD: nothing of the group is left.
            }
            if std::time::Instant::now() >= deadline {
                eprintln!("heaprig: QEMU did not exit within 10s of vng; it was killed");
                return;
            }
            if !killed {
                // Whatever outlived vng (QEMU after a panic or a timeout) must go too.
                // SAFETY: kill has no memory-safety preconditions; the group is ours.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Makes this process the reaper of its orphaned descendants, so QEMU (vng's child) can be
/// waited for even after vng is killed.
fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let _ = self.child.wait();
            self.reap_group();
        }
    }
}

fn spawn_reader(stream: impl Read + Send + 'static, tx: mpsc::Sender<Event>, guest: bool) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    let ev = if guest {
                        Event::Guest(line)
                    } else {
                        Event::Console(line)
                    };
                    if tx.send(ev).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// The console line virtme-ng-init prints right before it runs the command.
fn is_boot_done(line: &str) -> bool {
    line.contains("virtme-ng-init: starting script")
}

/// Boots, runs `exec` in the guest, and returns what happened. `on_event` sees every line
/// as it arrives (progress display); the session keeps them all.
pub fn run(
    spec: &VmSpec,
    exec: &str,
    limits: Limits,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Session> {
    let start = Instant::now();
    become_subreaper();
    // std::process rather than xshell: the output is streamed and the wait is bounded.
    let mut cmd = Command::new("vng");
    cmd.args(vng_args(spec, Some(exec)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd
        .spawn()
        .context("starting vng (virtme-ng); run `cargo xtask doctor` to check it is installed")?;
    let mut vm = Running {
        child,
        reaped: false,
    };
    let (tx, rx): (mpsc::Sender<Event>, Receiver<Event>) = mpsc::channel();
    if let Some(s) = vm.child.stdout.take() {
        spawn_reader(s, tx.clone(), true);
    }
    if let Some(s) = vm.child.stderr.take() {
        spawn_reader(s, tx, false);
    }

    let mut guest = Vec::new();
    let mut console = Vec::new();
    let mut boot = None;
    let mut test: Option<(String, Instant)> = None;
    let mut forced: Option<Ending> = None;
    let mut panic_at: Option<Instant> = None;
    let run_deadline = start + limits.run;
    loop {
        let now = Instant::now();
        // Decide whether a limit has passed; if so, stop QEMU and drain what is left.
        if forced.is_none() {
            let ending = if let Some(t) = panic_at {
                // Give the panic report two seconds to reach us, then stop.
                (now >= t + Duration::from_secs(2)).then_some(Ending::Panic)
            } else if now >= run_deadline {
                Some(Ending::RunTimeout {
                    secs: limits.run.as_secs(),
                })
            } else if boot.is_none() && now >= start + limits.boot {
                Some(Ending::BootTimeout {
                    secs: limits.boot.as_secs(),
                })
            } else if let (Some((name, began)), Some(lim)) = (&test, limits.test) {
                // The guest runner enforces the limit itself; this catches a guest that
                // cannot (a task stuck in the kernel), with a margin for reporting.
                (now >= *began + lim + Duration::from_secs(20)).then(|| Ending::TestTimeout {
                    test: name.clone(),
                    secs: lim.as_secs(),
                })
            } else {
                None
            };
            if let Some(e) = ending {
                vm.kill();
                forced = Some(e);
            }
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => {
                match &ev {
                    Event::Guest(l) => {
                        if boot.is_none() {
                            boot = Some(start.elapsed());
                        }
                        if let Some(label) = heaprig_protocol::note::begun(l) {
                            test = Some((label.to_string(), Instant::now()));
                        } else if heaprig_protocol::note::is_done(l) {
                            test = None;
                        }
                        guest.push(l.clone());
                    }
                    Event::Console(l) => {
                        if boot.is_none() && is_boot_done(l) {
                            boot = Some(start.elapsed());
                        }
                        if panic_at.is_none() && is_panic_line(l) {
                            panic_at = Some(Instant::now());
                        }
                        console.push(l.clone());
                    }
                }
                on_event(&ev);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = vm.wait()?;
    let ending = match forced {
        Some(e) => e,
        None if panic_at.is_some() => Ending::Panic,
        None => match status.code() {
            Some(code) => Ending::Exited { code },
            None => {
                use std::os::unix::process::ExitStatusExt;
                Ending::Signalled {
                    signal: status.signal().unwrap_or(0),
                }
            }
        },
    };
    Ok(Session {
        guest,
        console,
        ending,
        boot,
        total: start.elapsed(),
    })
}

/// Runs vng interactively on the user's terminal (for `cargo xtask shell`).
pub fn interactive(spec: &VmSpec) -> Result<i32> {
    let status = Command::new("vng")
        .args(vng_args(spec, None))
        .current_dir(&spec.cwd)
        .status()
        .context("starting vng (virtme-ng); run `cargo xtask doctor`")?;
    Ok(status.code().unwrap_or(128))
}

/// Resolves `--accel`: KVM only when a canary boot under KVM succeeds (nested KVM can be
/// present but broken); the verdict is cached per QEMU version and host kernel.
pub fn resolve_accel(
    choice: AccelChoice,
    kernel: &Path,
    cache: &Path,
    cwd: &Path,
) -> Result<(Accel, String)> {
    match choice {
        AccelChoice::Tcg => return Ok((Accel::Tcg, "TCG requested".into())),
        AccelChoice::Kvm => {
            if !kvm_openable() {
                bail!(
                    "--accel kvm was requested but /dev/kvm cannot be opened read-write; use \
                     --accel tcg (or auto) on this machine"
                );
            }
            return Ok((Accel::Kvm, "KVM requested".into()));
        }
        AccelChoice::Auto => {}
    }
    if !kvm_openable() {
        return Ok((Accel::Tcg, "no usable /dev/kvm".into()));
    }
    let key = probe_key();
    let file = cache.join("accel-probe");
    if let Ok(text) = fs::read_to_string(&file) {
        if let Some((k, verdict)) = text.split_once('\n') {
            if k == key {
                let (accel, why) = verdict.split_once(' ').unwrap_or((verdict, ""));
                let accel = if accel == "kvm" {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                };
                return Ok((
                    accel,
                    format!(
                        "{why} (cached probe; delete {} to re-probe)",
                        file.display()
                    ),
                ));
            }
        }
    }
    println!("accel: probing KVM with a canary boot (bounded to 40s)");
    let spec = VmSpec {
        kernel: kernel.to_path_buf(),
        accel: Accel::Kvm,
        memory: "512M".into(),
        cpus: 1,
        rwdir: None,
        cwd: cwd.to_path_buf(),
        udev_rules: None,
        boot_args: Vec::new(),
    };
    let limits = Limits {
        boot: Duration::from_secs(30),
        test: None,
        run: Duration::from_secs(40),
    };
    let s = run(&spec, "echo heaprig-kvm-canary", limits, &mut |_| {})?;
    let ok = s.ending == Ending::Exited { code: 0 }
        && s.guest.iter().any(|l| l.contains("heaprig-kvm-canary"));
    let (accel, why) = if ok {
        (
            Accel::Kvm,
            format!("KVM canary booted in {:.1}s", s.total.as_secs_f64()),
        )
    } else {
        let detail = s
            .console
            .iter()
            .rev()
            .find(|l| l.contains("qemu") || l.contains("KVM") || l.contains("kvm"))
            .cloned()
            .unwrap_or_else(|| format!("{:?}", s.ending));
        (
            Accel::Tcg,
            format!("KVM canary failed ({detail}); using TCG"),
        )
    };
    let tag = if accel == Accel::Kvm { "kvm" } else { "tcg" };
    let _ = fs::create_dir_all(cache);
    let _ = fs::write(&file, format!("{key}\n{tag} {why}"));
    Ok((accel, why))
}

fn kvm_openable() -> bool {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn probe_key() -> String {
    let v = |c: &str, a: &str| {
        Command::new(c)
            .arg(a)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    };
    format!(
        "{} | {} | {}",
        v("qemu-system-x86_64", "--version"),
        v("uname", "-r"),
        v("vng", "--version")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("2G").unwrap(), "2048M");
        assert_eq!(parse_memory("1024M").unwrap(), "1024M");
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("64M").is_err());
        assert!(parse_memory("2T").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("abc/x.y"), "abc/x.y");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn cached_root_copies_the_pinned_virtme_ng() {
        // CACHED_ROOT repeats vng's own rootflags: a new pin must check them again.
        assert_eq!(
            crate::stages::setup::VIRTME_NG,
            "1.42",
            "virtme-ng changed: compare its rootflags with CACHED_ROOT"
        );
    }

    #[test]
    fn tcg_disables_kvm_and_exec_is_one_argument() {
        let spec = VmSpec {
            kernel: "/k/bzImage".into(),
            accel: Accel::Tcg,
            memory: "2048M".into(),
            cpus: 2,
            rwdir: Some("/r".into()),
            cwd: "/p".into(),
            udev_rules: Some("/u".into()),
            boot_args: vec!["a=1".into(), "b.c=2".into()],
        };
        let a = vng_args(&spec, Some("echo 'a b'"));
        let i = a.iter().position(|x| x == "--append").unwrap();
        assert_eq!(a[i + 1], format!("a=1 b.c=2 {CACHED_ROOT}"));
        assert!(a.contains(&"--disable-kvm".to_string()));
        assert!(a.contains(&"--rwdir=/r".to_string()));
        assert!(a.contains(&"--force-9p".to_string()));
        assert!(a.contains(&"--rodir=/usr/lib/udev/rules.d=/u".to_string()));
        assert_eq!(a.last().unwrap(), "echo 'a b'");
        let k = vng_args(
            &VmSpec {
                accel: Accel::Kvm,
                ..spec
            },
            None,
        );
        assert!(!k.contains(&"--disable-kvm".to_string()));
        assert!(!k.contains(&"--exec".to_string()));
        // An interactive shell keeps the host's full udev rules and an uncached root.
        assert!(!k.iter().any(|x| x.starts_with("--rodir=")));
        assert!(!k.iter().any(|x| x.contains("cache=loose")));
    }
}
