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
    json_file(&dir.join("results.json"))
}

fn test_named<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["result"]["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {r:#}"))
}

/// (test, heap or "", verdict) of every column of a results.json, sorted.
fn verdicts(r: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for t in r["result"]["tests"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap().to_string();
        v.push((name.clone(), String::new(), t["verdict"].to_string()));
        for h in t["heaps"].as_array().unwrap() {
            v.push((
                name.clone(),
                h["heap"].as_str().unwrap().to_string(),
                h["verdict"].to_string(),
            ));
        }
    }
    v.sort();
    v
}

fn json_file(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("valid JSON")
}

/// The whole suite passes (JUnit and a KCIDB file written, the KCIDB file validated by the
/// rig against the pinned schema); then the same suite in two shards, merged, gives the same
/// verdict for every test and heap, and a merge missing a shard is refused.
#[test]
#[ignore = "boots the test kernel (minutes); CI runs it with --ignored"]
fn suite_passes_and_two_shards_merge_to_the_same_verdicts() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let f = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let out = xtask(&[
        "test",
        "--accel",
        "tcg",
        "--junit",
        &f("junit.xml"),
        "--kcidb",
        &f("kcidb.json"),
        "--kcidb-run-id",
        "e2e-full",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid against kcidb-io"));
    let whole = results(&root().join("target/heaprig/last-run"));
    let rt = test_named(&whole, "alloc_mmap_sync_roundtrip");
    assert_eq!(rt["verdict"], "pass");
    assert!(rt["heaps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["heap"] == "system"));
    let x = std::fs::read_to_string(f("junit.xml")).unwrap();
    assert!(x.contains("failures=\"0\""), "{x}");
    let k = json_file(Path::new(&f("kcidb.json")));
    let tests = k["tests"].as_array().unwrap();
    assert!(tests.iter().any(
        |t| t["path"] == "heaprig.alloc_mmap_sync_roundtrip.rust_system"
            && t["status"] == "PASS"
            && t["id"].as_str().unwrap().starts_with("heaprig:e2e-full.")
    ));
    assert_eq!(k["builds"][0]["config_name"], "heaprig-debug");

    for i in ["1", "2"] {
        let out = xtask(&[
            "test",
            "--accel",
            "tcg",
            "--shard",
            &format!("{i}/2"),
            "--json",
            &f(&format!("shard{i}.json")),
        ]);
        assert_eq!(out.status.code(), Some(0), "shard {i}/2");
    }
    let out = xtask(&[
        "merge",
        &f("shard2.json"),
        &f("shard1.json"),
        "--json",
        &f("merged.json"),
        "--kcidb",
        &f("merged-kcidb.json"),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        verdicts(&json_file(Path::new(&f("merged.json")))),
        verdicts(&whole)
    );
    // The whole-run checks ran in both shards; every other test in exactly one.
    let one = json_file(Path::new(&f("shard1.json")));
    let two = json_file(Path::new(&f("shard2.json")));
    let names = |r: &serde_json::Value| -> Vec<String> {
        r["run"]["selected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    };
    let (a, b) = (names(&one), names(&two));
    assert!(a.contains(&"kmemleak".to_string()) && b.contains(&"kmemleak".to_string()));
    assert_eq!(a.iter().filter(|n| b.contains(n)).count(), 1, "{a:?} {b:?}");
    let out = xtask(&["merge", &f("shard1.json")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shard(s) 2/2 missing"));
}

/// Triage on real splats and a real flake, in one boot plus one retry: LKDTM's WARNING,
/// listed in a live known-issues entry, is KNOWN (a KCIDB issue and incident) and the flaky
/// self-test, failing once and passing on its retry, is FLAKY, so the run passes; re-parsed
/// with the entry expired, the same splat fails the run again.
#[test]
#[ignore = "boots the test kernel (minutes); CI runs it with --ignored"]
fn known_issues_and_flakes_are_triaged() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let entry = |expires: &str| {
        format!(
            "[[issue]]\nfingerprint = \"WARNING: CPU: [N] PID: [PID] at drivers/misc/lkdtm/bugs.c:112 lkdtm_WARNING\"\nreason = \"provoked on purpose by rig_selftest_warning\"\nlink = \"https://docs.kernel.org/fault-injection/provoke-crashes.html\"\nexpires = {expires}\n"
        )
    };
    let live = dir.path().join("live.toml");
    let expired = dir.path().join("expired.toml");
    std::fs::write(&live, entry("2099-12-31")).unwrap();
    std::fs::write(&expired, entry("2026-01-01")).unwrap();
    let kcidb = dir.path().join("kcidb.json");
    let out = xtask(&[
        "test",
        "--accel",
        "tcg",
        "--retries",
        "1",
        "--known-issues",
        live.to_str().unwrap(),
        "--kcidb",
        kcidb.to_str().unwrap(),
        "--",
        "rig_selftest_warning",
        "rig_selftest_flaky",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "known and flaky do not fail the run"
    );
    assert!(stdout.contains("1 known, 1 flaky"), "{stdout}");
    let r = results(&root().join("target/heaprig/last-run"));
    assert_eq!(test_named(&r, "rig_selftest_warning")["verdict"], "known");
    let flaky = test_named(&r, "rig_selftest_flaky");
    assert_eq!(flaky["verdict"], "flaky");
    assert!(flaky["reasons"][0]
        .as_str()
        .unwrap()
        .starts_with("FLAKY: failed on attempt 1, passed on attempt 2"));
    let k = json_file(&kcidb);
    assert_eq!(k["issues"].as_array().map(Vec::len), Some(1), "{k:#}");
    assert!(k["incidents"][0]["test_id"]
        .as_str()
        .unwrap()
        .ends_with(".heaprig.rig_selftest_warning"));

    let out = xtask(&["parse", "--known-issues", expired.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an expired entry fails the run again"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("EXPIRED on 2026-01-01"), "{stdout}");
    assert!(stdout.contains("FAIL rig_selftest_warning"), "{stdout}");
}

/// The workflow users copy passes both linters, and each linter fires on a workflow made to
/// break it.
#[test]
#[ignore = "needs the venv `cargo xtask setup` installs; CI runs it with --ignored"]
fn workflow_lint_passes_and_catches_broken_workflows() {
    let out = xtask(&["lint"]);
    assert_eq!(out.status.code(), Some(0));
    let fixtures = root().join("xtask/tests/fixtures");
    for (file, says) in [
        (
            "bad-workflow-schema.yml",
            "'runs-on' is a required property",
        ),
        ("bad-workflow-injection.yml", "template-injection"),
    ] {
        let out = xtask(&["lint", fixtures.join(file).to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{file}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(all.contains(says), "{file}: {says:?} not in {all}");
    }
}

/// Each detector catches a real fault, in one boot: a failing assertion, a crashing test
/// process, a hung test, a kernel WARNING provoked through LKDTM; and the hostile-suite
/// detectors, each fed by one of the importer's fault knobs: the leak oracle (a leaked
/// buffer reference; a page the heap never freed, from the heap's own switch), the fault sweep (a reference leaked on an error path), the fuzzer (a
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
        // A targeted run names the whole-run check it wants.
        "kmemleak",
    ]);
    assert_eq!(out.status.code(), Some(1), "a failing suite must exit 1");
    let r = results(&root().join("target/heaprig/last-run"));
    // (test, words its failure reasons must contain)
    let table: &[(&str, &[&str])] = &[
        ("rig_selftest_fail", &["deliberate failure"]),
        ("rig_selftest_crash", &["SIGSEGV"]),
        ("rig_selftest_timeout", &["timed out after 20s"]),
        ("rig_selftest_warning", &["kernel WARNING"]),
        ("rig_selftest_flaky", &["deliberate flake"]),
        (
            "rig_selftest_leak",
            &["leak oracle: dma-buf left behind", "from rust_system"],
        ),
        (
            "rig_selftest_page_leak",
            &[
                "pages left behind on a heap's allocation path: 1 page(s)",
                "under dma_heap_ioctl",
            ],
        ),
        (
            "rig_selftest_vmap_leak",
            &["kernel mapping left behind", "made by system_heap"],
        ),
        (
            "rig_selftest_stale_cpu_read",
            &["stale_cpu_read: step 03 CpuReads: the CPU reads"],
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
        // Its leak is in its rust_system column's reasons (checked below).
        ("rig_selftest_side_by_side", &["kernel WARNING"]),
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
    // Only the whole-run scan can see the kmemleak self-test's leak, and it names the test
    // whose process allocated it: the self-test passed in the guest and fails in the report.
    let k = test_named(&r, "rig_selftest_kmemleak");
    assert_eq!(k["guest"], "pass", "{k:#}");
    assert_eq!(k["verdict"], "fail", "{k:#}");
    assert!(
        k["reasons"]
            .to_string()
            .contains("kmemleak (whole-run scan)"),
        "{k:#}"
    );
    // Every failure above is a test's own: nothing outside the tests, no rig problem.
    for field in ["splats_outside_tests", "not_run", "problems"] {
        assert_eq!(
            r["result"][field].as_array().map(Vec::len),
            Some(0),
            "{field}: {:#}",
            r["result"][field]
        );
    }
    // The fuzzer (pinned seed) names the byte the short fill missed, the buffer's last, in
    // its decisive line, which comes first.
    let fuzz = test_named(&r, "rig_selftest_fuzz");
    let decisive = fuzz["reasons"][0].as_str().unwrap_or_default();
    assert!(decisive.starts_with("fuzz seed 42 op "), "{fuzz:#}");
    let (byte, size) = missed_byte(decisive).unwrap_or_else(|| panic!("no byte in {decisive}"));
    assert_eq!(
        byte + 1,
        size,
        "the short fill misses the last byte: {decisive}"
    );
    // Side by side, each fault is its own column's: the leak is our heap's (found again
    // alone), the WARNING the C heap's, once by the process it named while the columns ran
    // together and once alone; no report is left to the test as a whole, and the other
    // heaps pass.
    let sbs = test_named(&r, "rig_selftest_side_by_side");
    assert_eq!(sbs["splats"].as_array().map(Vec::len), Some(0), "{sbs:#}");
    for h in sbs["heaps"].as_array().unwrap() {
        let heap = h["heap"].as_str().unwrap_or_default();
        let reasons = h["reasons"].to_string();
        match heap {
            "rust_system" => assert!(reasons.contains("pages left behind"), "{h:#}"),
            "system" => assert_eq!(h["splats"].as_array().map(Vec::len), Some(2), "{h:#}"),
            _ => assert_eq!(h["verdict"], "pass", "{heap}: {h:#}"),
        }
    }
    let w = test_named(&r, "rig_selftest_warning");
    assert!(
        w["splats"][0]["title"]
            .as_str()
            .is_some_and(|t| t.contains("lkdtm")),
        "{w:#}"
    );
}

/// "byte B of S" in a fuzz failure line: (B, S).
fn missed_byte(line: &str) -> Option<(u64, u64)> {
    let rest = &line[line.find("byte ")? + 5..];
    let mut words = rest.split_whitespace();
    let byte = words.next()?.parse().ok()?;
    (words.next()? == "of").then_some(())?;
    let size = words
        .next()?
        .trim_end_matches([',', ';', ')'])
        .parse()
        .ok()?;
    Some((byte, size))
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

/// A real git history on top of the kernel source the rig builds (Debian's 6.12 with the
/// rig's patches and overlay, committed as the root): twelve commits touching
/// `drivers/dma-buf/`, the heap and its Rust abstraction. Exactly one (REGRESSION) makes
/// the heap's CPU-access bracket count wrap below zero, the thread's `kmap_cnt` bug, and one
/// (BROKEN) does not build; the next one fixes it.
struct History {
    _dir: tempfile::TempDir,
    path: PathBuf,
    root: String,
    /// (sha, subject), oldest first.
    commits: Vec<(String, String)>,
}

const HEAP: &str = "drivers/dma-buf/heaps/rust_system_heap.rs";
const REGRESSION: usize = 7;
const BROKEN: usize = 9;
const BRACKET_OK: &str = "if dec_if_positive(&buf.data().open_brackets) {";
const BRACKET_WRAPS: &str = "if buf.data().open_brackets.fetch_sub(1, Relaxed) > 0 {";
const BROKEN_LINE: &str = "fn e2e_helper() -> u32 { \"does not build\" }";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=heaprig e2e",
            "-c",
            "user.email=e2e@heaprig",
        ])
        .args(["-c", "core.looseCompression=1"])
        .args(args)
        // Fixed dates: the same source gives the same root commit on every run, so the rig's
        // build dir for this history is reused from one CI run to the next.
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Replaces exactly one occurrence (so a changed heap fails here, not silently later).
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} in {}",
        path.display()
    );
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn append(path: &Path, line: &str) {
    let mut text = std::fs::read_to_string(path).unwrap();
    text.push_str(line);
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn make_history() -> History {
    let out = xtask(&["build"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let src = stdout
        .lines()
        .find_map(|l| l.strip_prefix("source: "))
        .expect("`xtask build` names its source tree");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linux");
    let status = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    git(&path, &["init", "--quiet"]);
    // -f: Debian's top-level .gitignore ignores everything but debian/.
    git(&path, &["add", "-f", "-A", "."]);
    git(
        &path,
        &["commit", "--quiet", "-m", "Linux 6.12 with heaprig's heap"],
    );
    let root = git(&path, &["rev-parse", "HEAD"]);
    let p = |f: &str| path.join(f);
    let mut commits = Vec::new();
    for i in 1..=12 {
        let subject = match i {
            REGRESSION => {
                edit(&p(HEAP), BRACKET_OK, BRACKET_WRAPS);
                "dma-buf: heaps: rust_system: count END brackets with a plain decrement"
            }
            BROKEN => {
                append(&p(HEAP), BROKEN_LINE);
                "dma-buf: heaps: rust_system: add a helper"
            }
            10 => {
                edit(&p(HEAP), &format!("{BROKEN_LINE}\n"), "");
                "dma-buf: heaps: rust_system: drop the helper again"
            }
            _ => {
                let (file, comment) = match i % 4 {
                    0 => ("drivers/dma-buf/dma-buf.c", format!("/* e2e note {i} */")),
                    1 => (HEAP, format!("// e2e note {i}")),
                    2 => ("drivers/dma-buf/dma-heap.c", format!("/* e2e note {i} */")),
                    _ => ("rust/kernel/dma_buf/mod.rs", format!("// e2e note {i}")),
                };
                append(&p(file), &comment);
                "dma-buf: comment only"
            }
        };
        git(&path, &["commit", "--quiet", "-a", "-m", subject]);
        commits.push((git(&path, &["rev-parse", "HEAD"]), subject.to_string()));
    }
    History {
        _dir: dir,
        path,
        root,
        commits,
    }
}

/// Neither task wrote to the user's repository or checkout.
fn untouched(h: &History) {
    assert_eq!(git(&h.path, &["status", "--porcelain"]), "");
    assert_eq!(git(&h.path, &["rev-parse", "HEAD"]), h.commits[11].0);
    assert!(!h.path.join(".git/BISECT_LOG").exists());
    assert_eq!(git(&h.path, &["worktree", "list"]).lines().count(), 1);
}

/// `validate` flags the bad patch (and writes it as KCIDB) and passes a harmless one (the base
/// result cached by then), `--each` names the first failing commit of a range, and `bisect`
/// (two runs per step) names the regression in at most ceil(log2 12)+1 = 5 steps, skipping
/// the commit that does not build instead of blaming it, gives a confidence figure and
/// confirms the culprit by reverting it on --bad. The user's repository is left as it was.
#[test]
#[ignore = "builds and boots kernels from a real git history (20+ minutes cold); CI runs it with --ignored"]
fn validate_and_bisect_on_real_history() {
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let h = make_history();
    let tree = h.path.to_str().unwrap();
    let sha = |i: usize| h.commits[i - 1].0.clone();
    let patches = tempfile::tempdir().unwrap();
    let patch = |i: usize| -> String {
        git(
            &h.path,
            &[
                "format-patch",
                "--quiet",
                "-1",
                &sha(i),
                "-o",
                patches.path().to_str().unwrap(),
                "--start-number",
                &i.to_string(),
            ],
        );
        let name = std::fs::read_dir(patches.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{i:04}-"))
            })
            .unwrap();
        name.display().to_string()
    };
    let report = root().join("target/heaprig/validate/report.md");
    let base = sha(REGRESSION - 1);
    let common = [
        "--accel",
        "tcg",
        "--kernel-src",
        tree,
        "--test",
        "sync_end_storm",
    ];

    // A patch that does not apply: exit 2 before anything is built, naming the patch.
    let stale = patches.path().join("stale.diff");
    std::fs::write(
        &stale,
        format!("--- a/{HEAP}\n+++ b/{HEAP}\n@@ -1,1 +1,1 @@\n-no such line\n+x\n"),
    )
    .unwrap();
    let out = xtask(
        &[
            &["validate"][..],
            &common,
            &["--base", &base, stale.to_str().unwrap()],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stale.diff does not apply"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("== validate: base"));

    // The regression, as a patch mailed in; the KCIDB file has the base and the patched
    // checkout of one commit, the patched one with the series' patchset hash.
    let bad = patch(REGRESSION);
    let kcidb = patches.path().join("validate-kcidb.json");
    let out = xtask(
        &[
            &["validate"][..],
            &common,
            &["--base", &base, "--kcidb", kcidb.to_str().unwrap(), &bad],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(1), "the bad patch was not flagged");
    let k = json_file(&kcidb);
    let checkouts = k["checkouts"].as_array().unwrap();
    assert_eq!(checkouts.len(), 2, "{k:#}");
    assert!(checkouts
        .iter()
        .all(|c| c["git_commit_hash"] == base.as_str()));
    assert_eq!(
        checkouts
            .iter()
            .filter(|c| c["patchset_hash"].is_string())
            .count(),
        1
    );
    assert!(k["tests"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["path"] == "heaprig.sync_end_storm.rust_system" && t["status"] == "FAIL"));
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(md.contains("REGRESSED"), "{md}");
    assert!(md.contains("- `sync_end_storm [rust_system]`: "), "{md}");
    assert!(md.contains("counted 1 unmatched ENDs, sent 100000"), "{md}");
    assert!(
        !md.contains("sync_end_storm [system]"),
        "the C heap did not change: {md}"
    );

    // A harmless patch on the same base: passes, and the base comes from the cache.
    let harmless = patch(REGRESSION + 1);
    let out = xtask(&[&["validate"][..], &common, &["--base", &base, &harmless]].concat());
    assert_eq!(out.status.code(), Some(0), "the harmless patch was flagged");
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(
        md.contains("no regressions") && md.contains("base cached"),
        "{md}"
    );

    // The same two commits as a range, each on its own: the first failing one is named.
    let range = format!("{base}..{}", sha(REGRESSION + 1));
    let out = xtask(&[&["validate"][..], &common, &["--each", &range]].concat());
    assert_eq!(out.status.code(), Some(1));
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(
        md.contains(&format!("First failing commit: {}", &sha(REGRESSION)[..12])),
        "{md}"
    );
    untouched(&h);

    // bisect over the whole history.
    let t = std::time::Instant::now();
    let good = h.root.clone();
    let bad_tip = sha(12);
    let out = xtask(
        &[
            &["bisect"][..],
            &common,
            // Two runs of every step: a confidence figure, and the culprit's revert checked.
            &["--good", &good, "--bad", &bad_tip, "--runs", "2"],
        ]
        .concat(),
    );
    eprintln!("bisect took {:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("first bad commit: {}", sha(REGRESSION))),
        "bisect did not name commit {REGRESSION}"
    );
    assert!(stdout.contains("confidence: "), "{stdout}");
    assert!(
        stdout.contains("revert check: CONFIRMED"),
        "reverting the regression on --bad must make it good: {stdout}"
    );
    // Nothing after git's verdict may read as an error (once: `git bisect reset --quiet`).
    let tail = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let tail = &tail[tail.find("is the first bad commit").unwrap_or(0)..];
    assert!(
        !tail.lines().any(|l| l.trim_start().starts_with("error:")),
        "an error line after the verdict:\n{tail}"
    );
    let steps: Vec<serde_json::Value> =
        std::fs::read_to_string(root().join("target/heaprig/bisect/steps.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert!(
        !steps.is_empty() && steps.len() <= 5,
        "{} steps",
        steps.len()
    );
    for s in &steps {
        let i = h
            .commits
            .iter()
            .position(|(c, _)| *c == s["commit"])
            .unwrap()
            + 1;
        let want = match i {
            BROKEN => "skip",
            i if i >= REGRESSION => "bad",
            _ => "good",
        };
        assert_eq!(s["verdict"], want, "commit {i}: {s}");
        // A commit that does not build stops after its first run.
        let runs = if want == "skip" { 1 } else { 2 };
        assert_eq!(s["runs"], runs, "commit {i}: {s}");
        if i == BROKEN {
            assert!(
                s["why"].as_str().unwrap().starts_with("does not build:"),
                "{s}"
            );
        }
    }
    untouched(&h);
    assert!(
        steps.iter().any(|s| s["verdict"] == "skip"),
        "the history's layout should make bisect visit the broken commit: {steps:?}"
    );
}
