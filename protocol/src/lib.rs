//! The host↔guest protocol, written once. The guest runner prints KTAP with heaprig's own
//! diagnostic notes and writes markers to the kernel log; the host parses both. Each line has
//! one writer and one parser here, both sides depend on this crate, and the round-trip tests
//! below pin the two together, so changing a marker is one edit both sides see at compile time
//! (the pattern `uapi/` already follows for the importer's ioctls).

/// heaprig's KTAP diagnostic notes: `# <note>` lines among the KTAP results.
pub mod note {
    const BEGIN: &str = "heaprig-begin:";
    const DONE: &str = "heaprig-done:";
    const GUEST: &str = "heaprig-guest:";
    const HEAPS: &str = "heaps:";
    const WARNING: &str = "WARNING:";
    const FACT: &str = "fact:";
    const TIME: &str = "time:";

    /// Before a test (`NAME`) or one heap of it (`NAME/HEAP`) starts: where a crash stopped.
    pub fn begin(label: &str) -> String {
        format!("# {BEGIN} {label}")
    }

    /// The closing sentinel; a run without it was cut short.
    pub fn done(pass: usize, fail: usize, skip: usize) -> String {
        format!("# {DONE} pass={pass} fail={fail} skip={skip}")
    }

    /// The heaps the guest found, at the start of a run.
    pub fn heaps(names: &[String]) -> String {
        format!("# {GUEST} {HEAPS} {}", names.join(", "))
    }

    /// Something the run's reader must see (a detector off, a heap missing).
    pub fn warning(text: &str) -> String {
        format!("# {GUEST} {WARNING} {text}")
    }

    /// A deterministic result the snapshot records.
    pub fn fact(key: &str, value: &str) -> String {
        format!("# {FACT} {key} = {value}")
    }

    /// How long a test (or heap) took; follows its result line.
    pub fn time(name: &str, ms: u128) -> String {
        format!("# {TIME} {name} {ms}ms")
    }

    /// A `#` line, parsed. Anything that is not one of heaprig's notes is a diagnostic.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Note<'a> {
        Begin(&'a str),
        Done(&'a str),
        Heaps(Vec<String>),
        Warning(&'a str),
        Fact(&'a str, &'a str),
        /// The time in ms, when the line carries one.
        Time(Option<u64>),
        Diagnostic(&'a str),
    }

    /// Parses the text after the `#` of a KTAP line (leading spaces allowed).
    pub fn parse(text: &str) -> Note<'_> {
        let d = text.trim();
        if let Some(rest) = d.strip_prefix(BEGIN) {
            Note::Begin(rest.trim())
        } else if let Some(rest) = d.strip_prefix(DONE) {
            Note::Done(rest.trim())
        } else if let Some(rest) = d
            .strip_prefix(GUEST)
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix(HEAPS))
        {
            Note::Heaps(
                rest.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            )
        } else if let Some(rest) = d
            .strip_prefix(GUEST)
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix(WARNING))
        {
            Note::Warning(rest.trim())
        } else if let Some(rest) = d.strip_prefix(FACT) {
            let (key, v) = rest.split_once(" = ").unwrap_or((rest, ""));
            Note::Fact(key.trim(), v.trim())
        } else if let Some(rest) = d.strip_prefix(TIME) {
            Note::Time(
                rest.trim()
                    .rsplit_once(' ')
                    .and_then(|(_, t)| t.strip_suffix("ms"))
                    .and_then(|t| t.parse().ok()),
            )
        } else {
            Note::Diagnostic(d)
        }
    }

    /// Whether a raw guest line is a test's begin note: its label.
    pub fn begun(line: &str) -> Option<&str> {
        match parse(line.trim_start().strip_prefix('#')?) {
            Note::Begin(label) => Some(label),
            _ => None,
        }
    }

    /// Whether a raw guest line is the closing sentinel.
    pub fn is_done(line: &str) -> bool {
        line.trim_start()
            .strip_prefix('#')
            .is_some_and(|d| matches!(parse(d), Note::Done(_)))
    }
}

/// Markers the guest writes to `/dev/kmsg`, so the host can tell which test a kernel splat
/// belongs to.
pub mod kmsg {
    const PREFIX: &str = "heaprig: ";

    /// A test (`NAME` or `NAME/HEAP`) starts.
    pub fn begin(label: &str) -> String {
        format!("{PREFIX}begin {label}")
    }

    /// A test ends (its process is gone and the leak oracle has looked).
    pub fn end(label: &str) -> String {
        format!("{PREFIX}end {label}")
    }

    /// The process that runs `label`, written when several tests run at once, so a report
    /// that names its task (`PID: N`) names its test.
    pub fn pid(pid: i32, label: &str) -> String {
        format!("{PREFIX}pid {pid} {label}")
    }

    /// The fuzzer's seed, before its first operation (survives a panic).
    pub fn fuzz_seed(heap: &str, seed: u64) -> String {
        format!("{PREFIX}fuzz heap={heap} seed={seed}")
    }

    /// A begin, end or pid marker.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Marker<'a> {
        Begin(&'a str),
        End(&'a str),
        Pid(i32, &'a str),
    }

    /// Parses a console line with its timestamp already stripped.
    pub fn parse(line: &str) -> Option<Marker<'_>> {
        let rest = line.trim_start().strip_prefix(PREFIX)?;
        if let Some(n) = rest.strip_prefix("begin ") {
            Some(Marker::Begin(n.trim()))
        } else if let Some(p) = rest.strip_prefix("pid ") {
            let (pid, label) = p.split_once(' ')?;
            Some(Marker::Pid(pid.parse().ok()?, label.trim()))
        } else {
            rest.strip_prefix("end ").map(|n| Marker::End(n.trim()))
        }
    }
}

/// The guest runner's command line (`heaprig-guest run ...`, `heaprig-guest bench ...`): the
/// host writes it with `to_argv`, the guest reads it with `parse`.
pub mod guest {
    /// `heaprig-guest run`: the suite.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RunArgs {
        /// Limit for each test's child process, in seconds (at least 1).
        pub timeout: u64,
        /// A directory shared with the host for the guest's own KTAP copy.
        pub results: Option<String>,
        /// Per-heap tests on these heaps only (all when empty).
        pub heaps: Vec<String>,
        /// The kernel's `.config`: what it was built with decides FAIL against SKIP.
        pub kernel_config: Option<String>,
        /// The fuzzer's budget per heap, seed and operation limit (the suite's own otherwise).
        pub fuzz_seconds: Option<u64>,
        pub fuzz_seed: Option<u64>,
        pub fuzz_ops: Option<u64>,
        /// This run's part of the selection (`--shard I/N`); the whole-run checks run in every
        /// shard.
        pub shard: Option<Shard>,
        /// Which attempt this is: 0 the first run, 1.. a retry of failed tests (a self-test
        /// uses it to fail once and then pass).
        pub attempt: u32,
        /// Test names, substrings, globs or `=NAME` (all tests when empty).
        pub patterns: Vec<String>,
    }

    impl Default for RunArgs {
        fn default() -> Self {
            RunArgs {
                timeout: 60,
                results: None,
                heaps: Vec::new(),
                kernel_config: None,
                fuzz_seconds: None,
                fuzz_seed: None,
                fuzz_ops: None,
                shard: None,
                attempt: 0,
                patterns: Vec::new(),
            }
        }
    }

    /// `heaprig-guest list`: the names a run with these arguments would execute.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct ListArgs {
        pub shard: Option<Shard>,
        /// Only the checks over the whole run (kmemleak), which every selection ends with.
        pub whole_run: bool,
        pub patterns: Vec<String>,
    }

    impl ListArgs {
        /// The arguments after the runner's path, `list` first.
        pub fn to_argv(&self) -> Vec<String> {
            let mut v = vec!["list".to_string()];
            if let Some(s) = self.shard {
                v.extend(["--shard".into(), s.to_string()]);
            }
            if self.whole_run {
                v.push("--whole-run".into());
            }
            v.push("--".into());
            v.extend(self.patterns.iter().cloned());
            v
        }

        /// The arguments after `list`.
        pub fn parse(args: &[String]) -> Result<ListArgs, String> {
            let mut l = ListArgs::default();
            let mut it = args.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--shard" => l.shard = Some(value(&mut it, a)?.parse()?),
                    "--whole-run" => l.whole_run = true,
                    "--" => l.patterns.extend(it.by_ref().cloned()),
                    s if s.starts_with("--") => return Err(format!("unknown option {s}")),
                    s => l.patterns.push(s.to_string()),
                }
            }
            Ok(l)
        }
    }

    impl RunArgs {
        /// The arguments after the runner's path, `run` first.
        pub fn to_argv(&self) -> Vec<String> {
            let mut v = vec![
                "run".to_string(),
                "--timeout".into(),
                self.timeout.to_string(),
            ];
            let mut opt = |flag: &str, value: Option<String>| {
                if let Some(value) = value {
                    v.extend([flag.to_string(), value]);
                }
            };
            opt("--results", self.results.clone());
            opt("--kernel-config", self.kernel_config.clone());
            opt("--fuzz-seconds", self.fuzz_seconds.map(|n| n.to_string()));
            opt("--fuzz-seed", self.fuzz_seed.map(|n| n.to_string()));
            opt("--fuzz-ops", self.fuzz_ops.map(|n| n.to_string()));
            opt("--shard", self.shard.map(|s| s.to_string()));
            opt(
                "--attempt",
                (self.attempt > 0).then(|| self.attempt.to_string()),
            );
            for h in &self.heaps {
                v.extend(["--heap".to_string(), h.clone()]);
            }
            // After `--`, so a pattern can never be read as a flag.
            v.push("--".into());
            v.extend(self.patterns.iter().cloned());
            v
        }

        /// The arguments after `run`.
        pub fn parse(args: &[String]) -> Result<RunArgs, String> {
            let mut r = RunArgs::default();
            let mut it = args.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--timeout" => r.timeout = number(&mut it, a, 1)?,
                    "--results" => r.results = Some(value(&mut it, a)?),
                    "--kernel-config" => r.kernel_config = Some(value(&mut it, a)?),
                    "--fuzz-seconds" => r.fuzz_seconds = Some(number(&mut it, a, 1)?),
                    "--fuzz-seed" => r.fuzz_seed = Some(number(&mut it, a, 0)?),
                    "--fuzz-ops" => r.fuzz_ops = Some(number(&mut it, a, 1)?),
                    "--heap" => r.heaps.push(value(&mut it, a)?),
                    "--shard" => r.shard = Some(value(&mut it, a)?.parse()?),
                    "--attempt" => {
                        r.attempt = u32::try_from(number(&mut it, a, 0)?)
                            .map_err(|_| "--attempt is too large".to_string())?
                    }
                    "--" => r.patterns.extend(it.by_ref().cloned()),
                    s if s.starts_with("--") => return Err(format!("unknown option {s}")),
                    s => r.patterns.push(s.to_string()),
                }
            }
            Ok(r)
        }
    }

    pub use super::shard::Shard;

    /// `heaprig-guest bench`: the microbenchmarks.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct BenchArgs {
        /// Few iterations (CI keeps the benchmarks working, not accurate).
        pub quick: bool,
        /// Where the records go (stdout when None).
        pub out: Option<String>,
    }

    impl BenchArgs {
        pub fn to_argv(&self) -> Vec<String> {
            let mut v = vec!["bench".to_string()];
            if self.quick {
                v.push("--quick".into());
            }
            if let Some(out) = &self.out {
                v.extend(["--out".into(), out.clone()]);
            }
            v
        }

        /// The arguments after `bench`.
        pub fn parse(args: &[String]) -> Result<BenchArgs, String> {
            let mut b = BenchArgs::default();
            let mut it = args.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--quick" => b.quick = true,
                    "--out" => b.out = Some(value(&mut it, a)?),
                    s => return Err(format!("unknown bench argument {s}")),
                }
            }
            Ok(b)
        }
    }

    fn value(it: &mut std::slice::Iter<String>, what: &str) -> Result<String, String> {
        it.next().cloned().ok_or(format!("{what} needs a value"))
    }

    fn number(it: &mut std::slice::Iter<String>, what: &str, min: u64) -> Result<u64, String> {
        let v = value(it, what)?;
        let n: u64 = v
            .parse()
            .map_err(|_| format!("{what} takes a whole number, not {v:?}"))?;
        if n < min {
            return Err(format!("{what} must be at least {min}"));
        }
        Ok(n)
    }
}

/// Splitting a selection over N runs (`--shard I/N`), computed the same way by the guest (which
/// runs its part) and the host (which merges the parts).
pub mod shard {
    use std::fmt;
    use std::str::FromStr;

    /// Part `index` (1-based) of `count`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Shard {
        pub index: u32,
        pub count: u32,
    }

    impl Shard {
        /// Whether the test `name` belongs to this shard. A test's shard depends on its name
        /// and N only (FNV-1a), so adding a test never moves another one; the price is that
        /// shards are uneven for small suites.
        pub fn owns(&self, name: &str) -> bool {
            shard_of(name, self.count) == self.index
        }
    }

    /// The 1-based shard of `name` among `count`.
    pub fn shard_of(name: &str, count: u32) -> u32 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (h % u64::from(count.max(1))) as u32 + 1
    }

    impl fmt::Display for Shard {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}/{}", self.index, self.count)
        }
    }

    impl FromStr for Shard {
        type Err = String;

        fn from_str(s: &str) -> Result<Shard, String> {
            let bad = || format!("a shard is I/N with 1 <= I <= N <= 64, not {s:?}");
            let (i, n) = s.split_once('/').ok_or_else(bad)?;
            let index: u32 = i.trim().parse().map_err(|_| bad())?;
            let count: u32 = n.trim().parse().map_err(|_| bad())?;
            if index == 0 || index > count || count > 64 {
                return Err(bad());
            }
            Ok(Shard { index, count })
        }
    }
}

/// The fuzzer's report lines (the host's `cargo xtask fuzz` prints them after a run).
pub mod fuzz {
    const SUMMARY: &str = "fuzz: heap=";

    /// A heap's finished run: seed, operations, rate. A diagnostic of the fuzz test.
    pub fn summary(heap: &str, seed: u64, ops: u64, seconds: f64) -> String {
        let rate = if seconds > 0.0 {
            ops as f64 / seconds
        } else {
            0.0
        };
        format!("{SUMMARY}{heap} seed={seed} ops={ops} seconds={seconds:.1} ops_per_sec={rate:.0}")
    }

    /// Whether a diagnostic is a [`summary`] line.
    pub fn is_summary(diag: &str) -> bool {
        diag.starts_with(SUMMARY)
    }
}

/// A leak the whole-run kmemleak scan found, named by the test whose process allocated it: a
/// diagnostic of the `kmemleak` test, which the host turns into a failure of that test too,
/// so `bisect --test NAME` follows a leak as it follows a splat.
pub mod leak {
    const PREFIX: &str = "kmemleak: leaked by ";

    /// `label` is a test (`name`) or a test on one heap (`name/heap`), as in the kernel-log
    /// markers.
    pub fn attributed(label: &str, summary: &str) -> String {
        format!("{PREFIX}{label}: {summary}")
    }

    /// The (label, summary) of an [`attributed`] line.
    pub fn parse_attributed(diag: &str) -> Option<(&str, &str)> {
        let rest = diag.strip_prefix(PREFIX)?;
        let (label, summary) = rest.split_once(": ")?;
        (!label.is_empty() && !label.contains(' ')).then_some((label, summary))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn round_trip() {
            let d = super::attributed("importer_vmap/system", "unreferenced object 0x1 (size 8)");
            assert_eq!(
                super::parse_attributed(&d),
                Some(("importer_vmap/system", "unreferenced object 0x1 (size 8)"))
            );
            assert_eq!(
                super::parse_attributed("kmemleak: 3 unreferenced object(s)"),
                None
            );
        }
    }
}

/// Heap names that differ between kernels for the same heap.
pub mod heaps {
    /// The default CMA area's heap: `reserved` up to 6.16, `default_cma_region` since.
    pub const CMA_NAMES: &[&str] = &["reserved", "default_cma_region"];
    /// What snapshots call it, so both kernels share them.
    pub const CMA_SNAPSHOT: &str = "cma";

    /// Whether `heap` is a second registration of a heap also present under another name,
    /// and which: 7.x adds the default CMA area as `default_cma_region` and again, from its
    /// list of all areas, under the area's own name `reserved`. One memory area, one heap
    /// implementation: tests run on the first name only.
    pub fn alias_of<S: AsRef<str>>(heap: &str, present: &[S]) -> Option<&'static str> {
        let (legacy, modern) = (CMA_NAMES[0], CMA_NAMES[1]);
        (heap == legacy && present.iter().any(|p| p.as_ref() == modern)).then_some(modern)
    }

    /// The name a snapshot records `heap` under.
    pub fn snapshot_name(heap: &str) -> &str {
        if CMA_NAMES.contains(&heap) {
            CMA_SNAPSHOT
        } else {
            heap
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_cma_heap_has_one_snapshot_name() {
            assert_eq!(super::snapshot_name("reserved"), "cma");
            assert_eq!(super::snapshot_name("default_cma_region"), "cma");
            assert_eq!(super::snapshot_name("system"), "system");
        }

        #[test]
        fn reserved_is_an_alias_only_beside_default_cma_region() {
            let v73 = ["default_cma_region", "reserved", "system"];
            assert_eq!(
                super::alias_of("reserved", &v73),
                Some("default_cma_region")
            );
            assert_eq!(super::alias_of("default_cma_region", &v73), None);
            assert_eq!(super::alias_of("reserved", &["reserved", "system"]), None);
        }
    }
}

/// The guest benchmark's output (`heaprig-guest bench`): one JSON record a line.
pub mod bench {
    use serde::{Deserialize, Serialize};

    /// The heap the ratios are about, and the heap it is compared with.
    pub const OURS: &str = "rust_system";
    pub const C_HEAP: &str = "system";
    const ION_SUFFIX: &str = "+ion_compat";
    const POOL_OFF_SUFFIX: &str = "+pool_off";

    /// The variant name of `heap` measured with its `ion_compat` switch on.
    pub fn ion_variant(heap: &str) -> String {
        format!("{heap}{ION_SUFFIX}")
    }

    /// The variant name of `heap` measured with its page pool off.
    pub fn pool_off_variant(heap: &str) -> String {
        format!("{heap}{POOL_OFF_SUFFIX}")
    }

    /// One line of the benchmark's output.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[serde(tag = "record", rename_all = "snake_case")]
    pub enum Record {
        /// One operation on one variant: the time of each iteration, in order.
        Series {
            variant: String,
            op: String,
            size: u64,
            nanos: Vec<u64>,
        },
        /// The closing line; output without it was cut short.
        Done { seconds: f64 },
    }

    impl Record {
        pub fn to_line(&self) -> String {
            // A record holds only strings and numbers: serialising it cannot fail.
            serde_json::to_string(self).unwrap_or_default()
        }

        /// A line of the output; `None` for lines that are not records (other guest output).
        pub fn parse(line: &str) -> Option<Result<Record, String>> {
            let line = line.trim();
            line.starts_with('{')
                .then(|| serde_json::from_str(line).map_err(|e| format!("{e}: {line}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bench::{self, Record};
    use super::kmsg::{self, Marker};
    use super::note::{self, Note};

    fn after_hash(line: &str) -> &str {
        line.strip_prefix('#').unwrap()
    }

    #[test]
    fn every_note_reads_back_as_written() {
        assert_eq!(
            note::parse(after_hash(&note::begin("zeroing/system"))),
            Note::Begin("zeroing/system")
        );
        assert_eq!(
            note::parse(after_hash(&note::done(3, 1, 2))),
            Note::Done("pass=3 fail=1 skip=2")
        );
        assert_eq!(
            note::parse(after_hash(&note::heaps(&[
                "rust_system".into(),
                "system".into()
            ]))),
            Note::Heaps(vec!["rust_system".into(), "system".into()])
        );
        assert_eq!(
            note::parse(after_hash(&note::warning("leak oracle off"))),
            Note::Warning("leak oracle off")
        );
        assert_eq!(
            note::parse(after_hash(&note::fact("alloc 1 byte", "ok, size 4096"))),
            Note::Fact("alloc 1 byte", "ok, size 4096")
        );
        assert_eq!(
            note::parse(after_hash(&note::time("zeroing", 338))),
            Note::Time(Some(338))
        );
        assert_eq!(
            note::parse(" crashed: SIGSEGV"),
            Note::Diagnostic("crashed: SIGSEGV")
        );
        assert_eq!(
            note::begun(&format!("    {}", note::begin("a/b"))),
            Some("a/b")
        );
        assert!(note::is_done(&note::done(0, 0, 0)));
        assert!(!note::is_done("# heaprig-begin: x"));
    }

    #[test]
    fn bench_records_read_back_as_written() {
        let series = Record::Series {
            variant: bench::ion_variant(bench::OURS),
            op: "sync start+end".into(),
            size: 4096,
            nanos: vec![3, 1, 2],
        };
        for r in [series, Record::Done { seconds: 1.5 }] {
            assert_eq!(Record::parse(&r.to_line()), Some(Ok(r)));
        }
        assert_eq!(Record::parse("boot chatter"), None);
        assert!(matches!(
            Record::parse("{\"record\":\"nope\"}"),
            Some(Err(_))
        ));
        assert_eq!(bench::ion_variant("rust_system"), "rust_system+ion_compat");
    }

    #[test]
    fn guest_command_lines_read_back_as_written() {
        use super::guest::{BenchArgs, RunArgs};
        let full = RunArgs {
            timeout: 20,
            results: Some("/r".into()),
            heaps: vec!["system".into(), "rust_system".into()],
            kernel_config: Some("/b/.config".into()),
            fuzz_seconds: Some(30),
            fuzz_seed: Some(0),
            fuzz_ops: Some(5),
            shard: Some("2/3".parse().unwrap()),
            attempt: 1,
            patterns: vec!["--looks-like-a-flag".into(), "zeroing".into()],
        };
        for r in [RunArgs::default(), full] {
            let argv = r.to_argv();
            assert_eq!(argv[0], "run");
            assert_eq!(RunArgs::parse(&argv[1..]), Ok(r));
        }
        assert!(RunArgs::parse(&["--timeout".into(), "0".into()]).is_err());
        assert!(RunArgs::parse(&["--nope".into()]).is_err());
        use super::guest::ListArgs;
        for l in [
            ListArgs::default(),
            ListArgs {
                shard: Some("1/2".parse().unwrap()),
                whole_run: true,
                patterns: vec!["=mmap_bounds".into()],
            },
        ] {
            let argv = l.to_argv();
            assert_eq!(argv[0], "list");
            assert_eq!(ListArgs::parse(&argv[1..]), Ok(l));
        }
        for b in [
            BenchArgs::default(),
            BenchArgs {
                quick: true,
                out: Some("/o".into()),
            },
        ] {
            let argv = b.to_argv();
            assert_eq!(argv[0], "bench");
            assert_eq!(BenchArgs::parse(&argv[1..]), Ok(b));
        }
    }

    #[test]
    fn shards_parse_and_partition() {
        use super::shard::{shard_of, Shard};
        for bad in ["0/2", "3/2", "1", "a/b", "1/65"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let names: Vec<String> = (0..40).map(|i| format!("test_{i}")).collect();
        let parts: Vec<Shard> = (1..=3).map(|i| Shard { index: i, count: 3 }).collect();
        // Every name in exactly one part, and a part depends on the name alone.
        for n in &names {
            assert_eq!(parts.iter().filter(|p| p.owns(n)).count(), 1, "{n}");
            assert_eq!(shard_of(n, 3), shard_of(n, 3));
        }
        assert!(parts.iter().all(|p| names.iter().any(|n| p.owns(n))));
        // Pinned: a change of hash would silently reshuffle CI shards.
        assert_eq!((shard_of("mmap_bounds", 2), shard_of("zeroing", 3)), (1, 2));
        assert_eq!(Shard { index: 1, count: 1 }.to_string(), "1/1");
    }

    #[test]
    fn fuzz_summaries_are_recognised() {
        let s = super::fuzz::summary("system", 7, 100, 2.0);
        assert_eq!(
            s,
            "fuzz: heap=system seed=7 ops=100 seconds=2.0 ops_per_sec=50"
        );
        assert!(super::fuzz::is_summary(&s));
        assert!(!super::fuzz::is_summary("fuzz: op counts: alloc=1"));
    }

    #[test]
    fn markers_read_back_as_written() {
        assert_eq!(
            kmsg::parse(&kmsg::begin("a/system")),
            Some(Marker::Begin("a/system"))
        );
        assert_eq!(kmsg::parse(&kmsg::end("a")), Some(Marker::End("a")));
        assert_eq!(
            kmsg::parse(&kmsg::pid(812, "fuzz/reserved")),
            Some(Marker::Pid(812, "fuzz/reserved"))
        );
        assert_eq!(kmsg::parse("heaprig: pid x fuzz/system"), None);
        assert_eq!(kmsg::parse(&kmsg::fuzz_seed("system", 42)), None);
        assert_eq!(kmsg::parse("other: begin x"), None);
    }
}
