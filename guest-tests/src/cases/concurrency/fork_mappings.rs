//! `fork_with_live_mappings`: mappings inherited across fork.

use crate::ensure;
use crate::expect::optional_importer;
use crate::harness::{Context, Ctx, Outcome, Stop};
use crate::process;
use crate::uapi::importer::{checksum, IMPORTER_VMAP, OP_CHECKSUM};
use crate::uapi::{Access, DmaBuf, Heap, Importer, Mapping, KIB};

use super::{
    check, child_exit_meaning, fill, first_mismatch, fork_failed, thread_byte, CHILD_ALARM,
    CHILD_EXIT_LIMIT, FORK_A_WRONG, FORK_SYNC_FAILED, FORK_VMAP_FAILED, FORK_VMAP_WRONG,
};

const FORK_LEN: usize = 256 * KIB as usize;
const SEED_A: u32 = 0xa0a0;
const SEED_B: u32 = 0xb0b0;

/// The whole buffer as it should read after the child ran: A, then B.
fn fork_expected() -> Vec<u8> {
    let half = FORK_LEN / 2;
    (0..FORK_LEN)
        .map(|i| thread_byte(if i < half { SEED_A } else { SEED_B }, i))
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
    let imp = optional_importer()?;
    let buf = heap.alloc(FORK_LEN as u64).context("alloc 256 KiB")?;
    let mut map = buf.mmap(0, FORK_LEN).context("mmap")?;
    let half = FORK_LEN / 2;
    buf.sync_start(Access::Write).context("SYNC START|WRITE")?;
    fill(&mut map.as_mut_slice()[..half], 0, SEED_A);
    buf.sync_end(Access::Write).context("SYNC END|WRITE")?;

    let (mut kid, (buf, map, imp)) =
        process::spawn_with(CHILD_ALARM, (buf, map, imp), |(buf, map, imp)| {
            fork_child(buf, map, imp)
        })
        .map_err(fork_failed)?;
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
