//! CPU access brackets against a device that is not cache-coherent: the importer's
//! `/dev/dmabuf_test_importer_nc` keeps its own copy of a mapped buffer, moved only by the
//! DMA API (a map copies the CPU's bytes in, a sync for the device copies CPU to device for
//! WRITE and RW, a sync for the CPU copies device to CPU for READ and RW, the unmap copies
//! back). An exporter whose `begin_cpu_access`/`end_cpu_access` forget a sync, or pass the
//! wrong direction, shows wrong bytes here, as it would on a non-coherent Arm system; on
//! x86's coherent DMA it shows nothing.
//!
//! Each scenario is a list of steps run against one model of both copies; every read is
//! checked against the model, and the snapshot records what each read saw.

use crate::expect::noncoherent_importer;
use crate::harness::{Context, Ctx, Outcome, Stop};
use crate::uapi::importer::{checksum, IMPORTER_ATTACH_HOLD, OP_CHECKSUM, OP_FILL, OP_NONE};
use crate::uapi::{Access, Heap};
use crate::{ensure, uapi::Importer};

use super::importer::LEN;

/// One step of a scenario.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// `DMA_BUF_IOCTL_SYNC` START with this access.
    Start(Access),
    /// `DMA_BUF_IOCTL_SYNC` END with this access.
    End(Access),
    /// The CPU writes this byte to the whole buffer through mmap.
    Cpu(u8),
    /// The CPU writes this byte to the first half only.
    CpuHalf(u8),
    /// The device writes this byte to the whole buffer.
    Dev(u8),
    /// The CPU reads the buffer through mmap.
    CpuReads,
    /// The device reads the buffer.
    DevReads,
    /// The device lets go of the buffer (unmap, detach); the CPU reads it afterwards.
    Release,
    /// A START the model counts but nobody issues: what an exporter that skips its sync for
    /// the CPU looks like from here (the self-test's step).
    Forgotten(Access),
}

use Access::{Read as R, ReadWrite as RW, Write as W};
use Step::*;

/// The scenarios: the two data paths, every direction flag, a partial write, nested
/// brackets, and an END storm (the seed thread's `kmap_cnt` bug must not cost data either).
const SCENARIOS: &[(&str, &[Step])] = &[
    (
        "cpu_write_then_device_reads",
        &[Start(W), Cpu(0xa1), End(W), DevReads, Release],
    ),
    (
        "cpu_rw_then_device_reads",
        &[Start(RW), Cpu(0xa2), End(RW), DevReads, Release],
    ),
    (
        "device_writes_then_cpu_reads",
        &[Dev(0xb1), Start(R), CpuReads, End(R), Release],
    ),
    (
        "device_writes_then_cpu_rw",
        &[
            Dev(0xb2),
            Start(RW),
            CpuReads,
            Cpu(0xa3),
            End(RW),
            DevReads,
            Release,
        ],
    ),
    (
        "start_write_fetches_nothing",
        &[Dev(0xb3), Start(W), CpuReads, End(W), DevReads, Release],
    ),
    (
        "end_read_flushes_nothing",
        &[
            Dev(0xb4),
            Start(R),
            CpuReads,
            End(R),
            Cpu(0xa4),
            DevReads,
            Release,
        ],
    ),
    (
        "partial_write",
        &[Start(W), CpuHalf(0xa5), End(W), DevReads, Release],
    ),
    (
        "nested_brackets",
        &[
            Dev(0xb6),
            Start(R),
            Start(RW),
            CpuReads,
            Cpu(0xa6),
            End(RW),
            DevReads,
            End(R),
            DevReads,
            Release,
        ],
    ),
    (
        "end_storm",
        &[
            Start(W),
            Cpu(0xa7),
            End(W),
            End(W),
            End(W),
            End(RW),
            DevReads,
            Release,
        ],
    ),
];

/// What the CPU's memory and the device's copy should hold.
struct Model {
    cpu: Vec<u8>,
    dev: Vec<u8>,
}

impl Model {
    fn reads(access: Access) -> bool {
        access != Access::Write
    }

    fn writes(access: Access) -> bool {
        access != Access::Read
    }
}

/// Run-length summary of `bytes`, for the snapshot: `a5 x540672, 00 x540672`.
fn summary(bytes: &[u8]) -> String {
    let mut runs: Vec<(u8, usize)> = Vec::new();
    for &b in bytes {
        match runs.last_mut() {
            Some((v, n)) if *v == b => *n += 1,
            _ => runs.push((b, 1)),
        }
    }
    let parts: Vec<String> = runs.iter().map(|(v, n)| format!("{v:02x} x{n}")).collect();
    parts.join(", ")
}

/// Checks that the CPU reads `want` (what `source` says the buffer holds) and records it.
fn cpu_reads(ctx: &mut Ctx, at: &str, seen: &[u8], want: &[u8], source: &str) -> Outcome {
    ensure!(
        seen == want,
        "{at}: the CPU reads {}, {source} {}",
        summary(seen),
        summary(want)
    );
    ctx.fact(at, summary(seen));
    Ok(())
}

/// Runs one scenario on a fresh buffer of `heap`, held by the non-coherent device.
fn run(ctx: &mut Ctx, imp: &Importer, heap: &Heap, name: &str, steps: &[Step]) -> Outcome {
    let buf = heap.alloc(LEN).context("alloc")?;
    let mut map = buf.mmap(0, LEN as usize).context("mmap")?;
    let hold = imp
        .on(IMPORTER_ATTACH_HOLD, &buf, OP_NONE, 0)
        .context("IMPORTER_ATTACH_HOLD on the non-coherent device")?;
    // A fresh buffer is zero, and mapping it copies that to the device.
    let mut m = Model {
        cpu: vec![0; LEN as usize],
        dev: vec![0; LEN as usize],
    };
    let mut held = true;
    for (i, &step) in steps.iter().enumerate() {
        let at = format!("{name}: step {:02} {step:?}", i + 1);
        match step {
            Start(a) | Forgotten(a) => {
                if let Start(a) = step {
                    buf.sync_start(a).context(&at)?;
                }
                if Model::reads(a) {
                    m.cpu.clone_from(&m.dev);
                }
            }
            End(a) => {
                buf.sync_end(a).context(&at)?;
                if Model::writes(a) {
                    m.dev.clone_from(&m.cpu);
                }
            }
            Cpu(b) => {
                map.as_mut_slice().fill(b);
                m.cpu.fill(b);
            }
            CpuHalf(b) => {
                let half = LEN as usize / 2;
                map.as_mut_slice()[..half].fill(b);
                m.cpu[..half].fill(b);
            }
            Dev(b) => {
                imp.device_access(hold.handle, OP_FILL, b).context(&at)?;
                m.dev.fill(b);
            }
            CpuReads => cpu_reads(ctx, &at, map.as_slice(), &m.cpu, "the DMA API says")?,
            DevReads => {
                let a = imp
                    .device_access(hold.handle, OP_CHECKSUM, 0)
                    .context(&at)?;
                ensure!(
                    a.pages == LEN,
                    "{at}: the device reached {} bytes of {LEN}",
                    a.pages
                );
                ensure!(
                    a.checksum == checksum(&m.dev),
                    "{at}: the device does not read what the DMA API says it holds ({}): a \
                     sync for the device is missing or goes the wrong way",
                    summary(&m.dev)
                );
                ctx.fact(&at, summary(&m.dev));
            }
            Release => {
                imp.release(hold.handle).context(&at)?;
                held = false;
                // The mapping is bidirectional: unmapping copies the device's bytes back.
                m.cpu.clone_from(&m.dev);
                let source = "the device held before the unmap";
                cpu_reads(ctx, &at, map.as_slice(), &m.cpu, source)?;
            }
        }
    }
    if held {
        return Err(Stop::Fail(format!(
            "{name}: scenario never releases its hold"
        )));
    }
    Ok(())
}

/// Rig self-test: the device writes, and the CPU reads under a START whose sync never
/// happens; the check must see the stale bytes and fail, as it does for an exporter that
/// skips `dma_sync_sgtable_for_cpu`.
pub fn selftest_stale_cpu_read(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let imp = noncoherent_importer()?;
    let steps = [Dev(0xb1), Forgotten(R), CpuReads, Release];
    run(ctx, &imp, heap, "stale_cpu_read", &steps)
}

/// Every scenario, each on a fresh buffer of `heap`.
pub fn noncoherent_sync(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let imp = noncoherent_importer()?;
    for (name, steps) in SCENARIOS {
        run(ctx, &imp, heap, name, steps)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_run_length() {
        assert_eq!(summary(&[0xa5, 0xa5, 0, 0, 0]), "a5 x2, 00 x3");
        assert_eq!(summary(&[]), "");
    }

    #[test]
    fn every_scenario_reads_and_releases() {
        for (name, steps) in SCENARIOS {
            assert!(
                steps.iter().any(|s| matches!(s, CpuReads | DevReads)),
                "{name} checks nothing"
            );
            assert!(matches!(steps.last(), Some(Release)), "{name}");
        }
    }
}
