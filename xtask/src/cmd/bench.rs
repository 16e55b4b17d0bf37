//! `cargo xtask bench`: boots the perf kernel once and runs `heaprig-guest bench` on every
//! heap variant; reports median, p99 and min per operation and size, the ratio of our heap
//! to the C system heap, and of ION mode to ours. Writes JSON and an SVG chart. Nothing here
//! passes or fails on a number.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::env::Env;
use crate::flags::BenchArgs;
use crate::plan::BenchPlan;
use crate::stages::vm::{Accel, Ending, Event, Limits};
use crate::stages::{self, build_guest, Times};

use heaprig_protocol::bench::{ion_variant, pool_off_variant, Record, C_HEAP, OURS};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median_ns: u64,
    pub p99_ns: u64,
    pub min_ns: u64,
    pub samples: usize,
}

/// Median, p99 (nearest rank) and min of a sample list.
pub fn summarise(nanos: &[u64]) -> Option<Summary> {
    if nanos.is_empty() {
        return None;
    }
    let mut v = nanos.to_vec();
    v.sort_unstable();
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Summary {
        median_ns: rank(0.5),
        p99_ns: rank(0.99),
        min_ns: v[0],
        samples: v.len(),
    })
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Row {
    pub op: String,
    pub size: u64,
    pub by_variant: BTreeMap<String, Summary>,
    /// median(ours) / median(C system heap).
    pub ours_over_c: Option<f64>,
    /// median(ours with ion_compat) / median(ours).
    pub ion_over_ours: Option<f64>,
    /// median(ours with its page pool off) / median(C system heap); absent in runs from
    /// before the pool.
    #[serde(default)]
    pub pool_off_over_c: Option<f64>,
}

fn ratio(rows: &BTreeMap<String, Summary>, a: &str, b: &str) -> Option<f64> {
    let (x, y) = (rows.get(a)?, rows.get(b)?);
    (y.median_ns > 0).then(|| x.median_ns as f64 / y.median_ns as f64)
}

/// Groups the guest's lines into rows, in the order the guest measured them.
pub fn rows(text: &str) -> Result<Vec<Row>> {
    let mut order: Vec<(String, u64)> = Vec::new();
    let mut by: BTreeMap<(String, u64), BTreeMap<String, Summary>> = BTreeMap::new();
    let mut done = false;
    for record in text.lines().filter_map(Record::parse) {
        let (variant, op, size, nanos) = match record
            .map_err(anyhow::Error::msg)
            .context("bad bench line")?
        {
            Record::Done { .. } => {
                done = true;
                continue;
            }
            Record::Series {
                variant,
                op,
                size,
                nanos,
            } => (variant, op, size, nanos),
        };
        let key = (op, size);
        if !order.contains(&key) {
            order.push(key.clone());
        }
        if let Some(s) = summarise(&nanos) {
            by.entry(key).or_default().insert(variant, s);
        }
    }
    if !done {
        bail!("the guest benchmark did not finish (no closing line)");
    }
    Ok(order
        .into_iter()
        .map(|(op, size)| {
            let by_variant = by.remove(&(op.clone(), size)).unwrap_or_default();
            Row {
                ours_over_c: ratio(&by_variant, OURS, C_HEAP),
                ion_over_ours: ratio(&by_variant, &ion_variant(OURS), OURS),
                pool_off_over_c: ratio(&by_variant, &pool_off_variant(OURS), C_HEAP),
                op,
                size,
                by_variant,
            }
        })
        .collect())
}

fn size_label(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{} KiB", n >> 10)
    }
}

fn dur(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} us", ns as f64 / 1e3)
    }
}

/// The terminal (and README) table: medians, with p99/min for our heap, and the ratios.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| operation | size | {OURS} median (p99, min) | {} median | {C_HEAP} median | {} median | ours / C | pool off / C | ION / ours |",
        pool_off_variant(OURS),
        ion_variant(OURS)
    );
    let _ = writeln!(
        out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in rows {
        let med = |v: &str| r.by_variant.get(v).map_or("-".into(), |s| dur(s.median_ns));
        let ours = r.by_variant.get(OURS).map_or("-".into(), |s| {
            format!(
                "{} ({}, {})",
                dur(s.median_ns),
                dur(s.p99_ns),
                dur(s.min_ns)
            )
        });
        let ratio = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
        let _ = writeln!(
            out,
            "| {} | {} | {ours} | {} | {} | {} | {} | {} | {} |",
            r.op,
            size_label(r.size),
            med(&pool_off_variant(OURS)),
            med(C_HEAP),
            med(&ion_variant(OURS)),
            ratio(r.ours_over_c),
            ratio(r.pool_off_over_c),
            ratio(r.ion_over_ours)
        );
    }
    out
}

/// A horizontal bar chart, log scale, one group per operation and size.
pub fn svg(rows: &[Row], title: &str) -> String {
    let ion = ion_variant(OURS);
    let pool_off = pool_off_variant(OURS);
    let variants = [
        (OURS, "#d9534f"),
        (pool_off.as_str(), "#a05fb4"),
        (C_HEAP, "#5b7fbd"),
        (ion.as_str(), "#e8a33d"),
    ];
    let bar_h = 10.0;
    let group_h = bar_h * variants.len() as f64 + 12.0;
    let left = 300.0;
    let width = 840.0;
    let height = 60.0 + group_h * rows.len() as f64;
    let all: Vec<u64> = rows
        .iter()
        .flat_map(|r| r.by_variant.values().map(|s| s.median_ns.max(1)))
        .collect();
    let lo = (*all.iter().min().unwrap_or(&1) as f64).log10().floor();
    let hi = (*all.iter().max().unwrap_or(&10) as f64)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let x =
        |ns: u64| left + (((ns.max(1) as f64).log10() - lo) / (hi - lo)) * (width - left - 90.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"18\" font-size=\"13\">{title}</text>\n"
    );
    for (i, (name, color)) in variants.iter().enumerate() {
        let lx = left + i as f64 * 170.0;
        let _ = writeln!(
            s,
            "<rect x=\"{lx}\" y=\"28\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"37\">{name}</text>",
            lx + 14.0
        );
    }
    for (gi, r) in rows.iter().enumerate() {
        let y0 = 50.0 + gi as f64 * group_h;
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{}\">{} {}</text>",
            y0 + bar_h * 2.0,
            r.op,
            size_label(r.size)
        );
        for (vi, (name, color)) in variants.iter().enumerate() {
            if let Some(sm) = r.by_variant.get(*name) {
                let y = y0 + vi as f64 * bar_h;
                let w = x(sm.median_ns) - left;
                let _ = writeln!(
                    s,
                    "<rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"9\">{}</text>",
                    bar_h - 1.0,
                    left + w + 4.0,
                    y + bar_h - 2.0,
                    dur(sm.median_ns)
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"{}\" font-size=\"9\">median per operation, log scale</text>\n</svg>",
        height - 6.0
    );
    s
}

/// Re-renders the table and chart of a saved `bench.json` (no kernel, no guest).
fn render(path: &std::path::Path) -> Result<ExitCode> {
    let saved = Measured::read(path)?;
    let title = format!("heaprig bench {}: {}", saved.date, saved.machine);
    let out = path.with_extension("svg");
    fs::write(&out, svg(&saved.rows, &title))?;
    println!(
        "{title}\n\n{}\nwritten: {}",
        table(&saved.rows),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run(env: &Env, a: BenchArgs) -> Result<ExitCode> {
    if let Some(path) = &a.render {
        return render(path);
    }
    if a.rig {
        return crate::cmd::bench_rig::run(env, &a);
    }
    let dir = env.root.join("target/heaprig/bench");
    let plan = a.plan();
    let m = measure(env, &plan, &dir)?;
    let title = format!("heaprig bench {}: {}", m.date, m.machine);
    println!("\n{title}\n\n{}", table(&m.rows));
    println!("written: {}/bench.json, bench.svg", dir.display());
    if let (Some(k), Some(prov)) = (&plan.kcidb, &m.provenance) {
        let mut b = crate::report::kcidb::Builder::new(k, prov);
        let build = b.build(prov, true, None);
        b.bench(&build, prov, &m.rows);
        crate::report::kcidb::write(env, &b.finish(), &k.path)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One benchmark run: its rows and where they were measured. This is bench.json.
#[derive(Serialize, Deserialize, Debug)]
pub struct Measured {
    pub date: String,
    pub machine: String,
    pub accel: Accel,
    pub quick: bool,
    pub rows: Vec<Row>,
    /// What was built and booted, for KCIDB.
    #[serde(default)]
    pub provenance: Option<crate::report::kcidb::Provenance>,
}

impl Measured {
    /// A saved bench.json, read back through this type.
    pub fn read(path: &std::path::Path) -> Result<Measured> {
        crate::report::read_json(path, "bench.json")
    }
}

/// Builds the kernel `a` names, boots it once, runs every variant; writes bench.json and
/// bench.svg into `dir` (replacing an earlier run's). `validate --bench` runs it on both trees.
pub fn measure(env: &Env, plan: &BenchPlan, dir: &std::path::Path) -> Result<Measured> {
    let mut times = Times::default();
    let started = crate::clock::rfc3339_now();
    let guest = build_guest(env)?;
    let profile = plan.kernel.profile;
    let p = stages::prepare(env, &plan.kernel, &plan.vm, &mut times)?;
    // Only this run's own files: `bench --rig` keeps rig.json in the same directory.
    for f in ["guest.jsonl", "bench.json", "bench.svg", "console.log"] {
        let _ = fs::remove_file(dir.join(f));
    }
    fs::create_dir_all(dir)?;
    let lines = dir.join("guest.jsonl");
    let args = heaprig_protocol::guest::BenchArgs {
        quick: plan.quick,
        out: Some(lines.display().to_string()),
    };
    let cmd: Vec<String> = std::iter::once(guest.display().to_string())
        .chain(args.to_argv())
        .collect();
    let limits = Limits {
        boot: plan.vm.boot_timeout,
        test: None,
        run: plan.run_timeout,
    };
    println!(
        "bench: {} kernel under {:?}{}",
        profile.name(),
        p.accel,
        if plan.quick { ", --quick" } else { "" }
    );
    let session = stages::boot_and_run(
        env,
        &plan.vm,
        &p,
        &cmd,
        limits,
        Some(dir.to_path_buf()),
        &mut |ev| {
            if let Event::Guest(l) = ev {
                println!("  {l}");
            }
        },
    )?;
    fs::write(dir.join("console.log"), session.console.join("\n") + "\n")?;
    if session.ending != (Ending::Exited { code: 0 }) {
        bail!(
            "the guest benchmark did not complete: {}; console in {}",
            session.ending,
            dir.join("console.log").display()
        );
    }
    let text =
        fs::read_to_string(&lines).with_context(|| format!("reading {}", lines.display()))?;
    let rows = rows(&text)?;
    let date = crate::clock::Date::today().to_string();
    let machine = format!(
        "{} cores, {:?}, {} kernel, {} guest CPUs, {}{}",
        crate::env::host_cores(),
        p.accel,
        profile.name(),
        plan.vm.cpus,
        plan.vm.memory,
        if plan.quick { ", quick" } else { "" }
    );
    let title = format!("heaprig bench {date}: {machine}");
    fs::write(dir.join("bench.svg"), svg(&rows, &title))?;
    let m = Measured {
        date,
        machine,
        accel: p.accel,
        quick: plan.quick,
        rows,
        provenance: Some(crate::report::kcidb::Provenance::of(
            env,
            &plan.kernel,
            &plan.vm,
            &p,
            &times,
            started,
            plan.kcidb.as_ref().and_then(|k| k.run_id.clone()),
        )),
    };
    fs::write(dir.join("bench.json"), serde_json::to_string_pretty(&m)?)?;
    Ok(m)
}

/// Smallest change ever called real. Between two boots, medians drift together: a
/// comment-only patch moved SYNC medians of both heaps by 5-6% under TCG (2026-11-26).
const NOISE_FLOOR: f64 = 0.10;

/// Medians that moved by more than the noise measured in the runs themselves: the larger of
/// the two runs' spread below the median ((median - min) / median) and [`NOISE_FLOOR`].
/// One line per (operation, size, variant) that moved, slower or faster.
pub fn changes(base: &[Row], patched: &[Row]) -> Vec<String> {
    let spread = |s: &Summary| {
        if s.median_ns == 0 {
            0.0
        } else {
            (s.median_ns - s.min_ns) as f64 / s.median_ns as f64
        }
    };
    let mut out = Vec::new();
    for p in patched {
        let Some(b) = base.iter().find(|b| b.op == p.op && b.size == p.size) else {
            continue;
        };
        for (variant, ps) in &p.by_variant {
            let Some(bs) = b.by_variant.get(variant) else {
                continue;
            };
            if bs.median_ns == 0 {
                continue;
            }
            let change = ps.median_ns as f64 / bs.median_ns as f64 - 1.0;
            let noise = spread(bs).max(spread(ps)).max(NOISE_FLOOR);
            if change.abs() > noise {
                out.push(format!(
                    "{} {} [{variant}]: {} -> {} ({:+.1}%, noise {:.1}%)",
                    p.op,
                    size_label(p.size),
                    dur(bs.median_ns),
                    dur(ps.median_ns),
                    change * 100.0,
                    noise * 100.0
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_statistics() {
        let s = summarise(&[5, 1, 3, 2, 4]).unwrap();
        assert_eq!((s.median_ns, s.p99_ns, s.min_ns, s.samples), (3, 5, 1, 5));
        let many: Vec<u64> = (1..=100).collect();
        assert_eq!(summarise(&many).unwrap().p99_ns, 99);
        assert!(summarise(&[]).is_none());
    }

    #[test]
    fn only_changes_beyond_the_measured_noise_are_reported() {
        let row = |median: u64, min: u64| Row {
            op: "alloc+close".into(),
            size: 4096,
            by_variant: [(
                OURS.to_string(),
                Summary {
                    median_ns: median,
                    p99_ns: median * 2,
                    min_ns: min,
                    samples: 100,
                },
            )]
            .into(),
            ours_over_c: None,
            ion_over_ours: None,
            pool_off_over_c: None,
        };
        // 6% faster with 1% spread: boot-to-boot drift, under the 10% floor.
        assert!(changes(&[row(10_000, 9_900)], &[row(9_400, 9_300)]).is_empty());
        // 20% slower with 1% spread: reported.
        let c = changes(&[row(10_000, 9_900)], &[row(12_000, 11_900)]);
        assert_eq!(
            c,
            ["alloc+close 4 KiB [rust_system]: 10.0 us -> 12.0 us (+20.0%, noise 10.0%)"]
        );
        // 20% slower but the runs themselves spread 30% below the median: noise.
        assert!(changes(&[row(10_000, 7_000)], &[row(12_000, 11_900)]).is_empty());
        // Faster is reported too.
        assert_eq!(
            changes(&[row(10_000, 9_900)], &[row(5_000, 4_900)]).len(),
            1
        );
    }

    /// The runs published in docs/ read back through the type that wrote them.
    #[test]
    fn published_runs_read_back() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        for name in [
            "bench-2026-11-25-tcg.json",
            "bench-2026-11-30-tcg.json",
            "bench-2026-12-01-tcg.json",
        ] {
            let m = Measured::read(&docs.join(name)).unwrap();
            assert!(!m.quick && m.accel == Accel::Tcg, "{name}");
            assert!(
                m.rows.iter().any(|r| r.op == "kernel read: kmap walk"),
                "{name}"
            );
        }
    }

    #[test]
    fn rows_ratios_and_outputs() {
        // Written as the guest writes them, with boot chatter in between.
        let series = |variant: &str, nanos: &[u64]| Record::Series {
            variant: variant.into(),
            op: "alloc+close".into(),
            size: 4096,
            nanos: nanos.to_vec(),
        };
        let text = [
            series(OURS, &[10, 20, 30]).to_line(),
            "[ 1.0] some kernel line".into(),
            series(C_HEAP, &[40]).to_line(),
            series(&ion_variant(OURS), &[20]).to_line(),
            series(&pool_off_variant(OURS), &[80]).to_line(),
            Record::Done { seconds: 1.0 }.to_line(),
        ]
        .join("\n");
        let text = text.as_str();
        let r = rows(text).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].ours_over_c, Some(0.5));
        assert_eq!(r[0].ion_over_ours, Some(1.0));
        assert_eq!(r[0].pool_off_over_c, Some(2.0));
        assert!(table(&r).contains("| alloc+close | 4 KiB |"));
        assert!(svg(&r, "t").starts_with("<svg"));
        assert!(rows("{\"variant\":\"x\",\"op\":\"y\",\"size\":1,\"nanos\":[1]}\n").is_err());
        // A saved run re-renders to the same chart.
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("bench.json");
        let saved = Measured {
            date: "d".into(),
            machine: "m".into(),
            accel: Accel::Tcg,
            quick: false,
            rows: r,
            provenance: None,
        };
        fs::write(&json, serde_json::to_string(&saved).unwrap()).unwrap();
        let r = saved.rows;
        render(&json).unwrap();
        let chart = fs::read_to_string(dir.path().join("bench.svg")).unwrap();
        assert_eq!(chart, svg(&r, "heaprig bench d: m"));
    }
}
