//! End-to-end tests of the rig: real kernel, real QEMU, real guest. Slow (a boot is ~20 s
//! under TCG, a cold kernel build ~6 min), so they are `#[ignore]`d with the reason, which
//! cargo shows as "ignored" rather than passed; CI runs them with `-- --ignored`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// One VM at a time: the machine has two cores and the kernel build dir is shared.
static VM: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn xtask(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("running xtask");
    eprintln!(
        "--- xtask {args:?} exited {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn results(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("results.json")).expect("results.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn test_named<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["result"]["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {r:#}"))
}

#[test]
#[ignore = "boots the test kernel (minutes); CI runs it with --ignored"]
fn suite_boots_and_passes() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = xtask(&["test", "--accel", "tcg", "--junit", junit.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let r = results(&root().join("target/heaprig/last-run"));
    let rt = test_named(&r, "alloc_mmap_sync_roundtrip");
    assert_eq!(rt["verdict"], "pass");
    assert!(rt["heaps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["heap"] == "system"));
    let x = std::fs::read_to_string(&junit).unwrap();
    assert!(x.contains("failures=\"0\""), "{x}");
}

/// Each detector catches a real fault, in one boot: a failing assertion, a crashing test
/// process, a hung test, a kernel WARNING provoked through LKDTM; and the hostile-suite
/// detectors, each fed by one of the importer's fault knobs: the leak oracle (a leaked
/// buffer reference), the fault sweep (a reference leaked on an error path), the fuzzer (a
/// fill that misses a byte), kmemleak (leaked kmalloc blocks) and lockdep (an ABBA order).
#[test]
#[ignore = "boots the test kernel (minutes); CI runs it with --ignored"]
fn detectors_catch_real_faults() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let out = xtask(&[
        "test",
        "--accel",
        "tcg",
        "--test-timeout",
        "20",
        "--",
        "rig_selftest_*",
    ]);
    assert_eq!(out.status.code(), Some(1), "a failing suite must exit 1");
    let r = results(&root().join("target/heaprig/last-run"));
    // (test, words its failure reasons must contain)
    let table: &[(&str, &[&str])] = &[
        ("rig_selftest_fail", &["deliberate failure"]),
        ("rig_selftest_crash", &["SIGSEGV"]),
        ("rig_selftest_timeout", &["timed out after 20s"]),
        ("rig_selftest_warning", &["kernel WARNING"]),
        (
            "rig_selftest_leak",
            &["leak oracle: dma-buf left behind", "from rust_system"],
        ),
        (
            "rig_selftest_fault_leak",
            &[
                "importer VMAP: fault point",
                "leak after the injected failure",
            ],
        ),
        (
            "rig_selftest_fuzz",
            &["fuzz seed", "replay: cargo xtask fuzz", "checksum"],
        ),
        ("rig_selftest_lockdep", &["circular locking"]),
        ("kmemleak", &["kmemleak", "dmabuf_test_importer"]),
    ];
    for (name, words) in table {
        let t = test_named(&r, name);
        assert_eq!(t["verdict"], "fail", "{name}: {t:#}");
        let reasons = t["reasons"].to_string();
        for w in *words {
            assert!(reasons.contains(w), "{name}: {w:?} not in {reasons}");
        }
    }
    // The kmemleak self-test itself passes: only the whole-run scan can see its leak.
    assert_eq!(test_named(&r, "rig_selftest_kmemleak")["verdict"], "pass");
    let w = test_named(&r, "rig_selftest_warning");
    assert!(
        w["splats"][0]["title"]
            .as_str()
            .is_some_and(|t| t.contains("lkdtm")),
        "{w:#}"
    );
}

/// `cargo xtask fuzz` replays a seed: two runs with the same seed and operation count make
/// the same operations (the per-kind counts and the total agree), and the run is reported.
#[test]
#[ignore = "boots the test kernel (minutes); CI runs it with --ignored"]
fn fuzz_replays_its_seed() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let run = || {
        let out = xtask(&[
            "fuzz",
            "--accel",
            "tcg",
            "--heap",
            "rust_system",
            "--seed",
            "42",
            "--ops",
            "400",
            "--seconds",
            "60",
        ]);
        assert_eq!(out.status.code(), Some(0), "a clean fuzz run exits 0");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(stdout.contains("seed=42 ops=400"), "{stdout}");
        let r = results(&root().join("target/heaprig/last-run"));
        let heap = &test_named(&r, "fuzz")["heaps"][0];
        assert_eq!(heap["heap"], "rust_system");
        heap["diags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d.as_str())
            .find(|d| d.starts_with("fuzz: op counts:"))
            .unwrap_or_else(|| panic!("no op counts in {heap:#}"))
            .to_string()
    };
    let first = run();
    assert!(first.contains("alloc="), "{first}");
    assert_eq!(
        first,
        run(),
        "the same seed must replay the same operations"
    );
}

#[test]
#[ignore = "boots the test kernel (minutes); CI runs it with --ignored"]
fn exec_returns_the_guest_exit_code() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let out = xtask(&[
        "exec",
        "--accel",
        "tcg",
        "--",
        "sh",
        "-c",
        "ls /dev/dma_heap; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stdout).contains("system"));
}

#[test]
#[ignore = "boots the test kernel (minutes); CI runs it with --ignored"]
fn shell_is_interactive() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let bin = env!("CARGO_BIN_EXE_xtask");
    let mut cmd = Command::new(bin);
    cmd.args(["shell", "--accel", "tcg"]).current_dir(root());
    // One bound for every expect: a boot under TCG takes ~20 s, a cold build is not expected
    // here because the tests above built the kernel.
    let mut p = rexpect::session::spawn_command(cmd, Some(240_000)).expect("spawn shell");
    // The kernel command line also says "virtme-ng"; only the prompt has "@virtme-ng:".
    p.exp_string("@virtme-ng:").expect("guest shell prompt");
    // The sum is computed by the guest shell, so the echo of the command cannot match.
    p.send_line("echo heaprig-$((6*7))").unwrap();
    p.exp_string("heaprig-42").expect("guest answered");
    p.send_line("exit").unwrap();
    p.exp_eof().expect("shell ended and QEMU exited");
}

/// A guest panic and a guest hang each end the run with exit 2 and a paragraph that says so,
/// QEMU is reaped, and the console tail is shown.
#[test]
#[ignore = "boots the test kernel (minutes); CI runs it with --ignored"]
fn guest_panic_and_hang_are_bounded() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let table: &[(&[&str], &str)] = &[
        (
            &[
                "sh",
                "-c",
                "echo PANIC > /sys/kernel/debug/provoke-crash/DIRECT",
            ],
            "the guest kernel panicked",
        ),
        (&["sleep", "600"], "passed its 60s limit"),
    ];
    for (cmd, says) in table {
        let mut args = vec!["exec", "--accel", "tcg", "--run-timeout", "60", "--"];
        args.extend_from_slice(cmd);
        let t = std::time::Instant::now();
        let out = xtask(&args);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{cmd:?}: {says:?} not in {err}");
        assert!(
            t.elapsed().as_secs() < 120,
            "{cmd:?} took {:?}",
            t.elapsed()
        );
        assert!(
            !String::from_utf8_lossy(
                &Command::new("pgrep")
                    .arg("-f")
                    .arg("qemu-system")
                    .output()
                    .unwrap()
                    .stdout
            )
            .contains(char::is_numeric),
            "QEMU left running after {cmd:?}"
        );
    }
}

/// A cached build whose bzImage is corrupt is detected and relinked, not booted.
#[test]
#[ignore = "boots the test kernel (minutes); CI runs it with --ignored"]
fn corrupt_cached_image_is_rebuilt() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let out = xtask(&["build"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let image = text
        .lines()
        .find_map(|l| l.strip_prefix("kernel: "))
        .expect("build prints the kernel path")
        .to_string();
    std::fs::write(&image, b"not a kernel").unwrap();
    let out = xtask(&["build"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("has no valid bzImage; rebuilding"));
    let bytes = std::fs::read(&image).unwrap();
    assert_eq!(&bytes[0x202..0x206], b"HdrS", "rebuilt image is a bzImage");
}
