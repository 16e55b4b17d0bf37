//! The kernel's taint flags: the fuzzer re-reads them after every operation, the runner
//! around columns that run side by side.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const TAINTED: &str = "/proc/sys/kernel/tainted";

/// `/proc/sys/kernel/tainted`, kept open and re-read with one pread per operation.
pub struct Taint {
    pub file: File,
    last: u64,
}

impl Taint {
    pub fn open() -> io::Result<Taint> {
        let file = File::open(TAINTED)?;
        let last = Taint::read(&file)?;
        Ok(Taint { file, last })
    }

    /// The flags now.
    pub fn now() -> io::Result<u64> {
        Taint::read(&File::open(TAINTED)?)
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
    pub fn check(&mut self, after: impl FnOnce() -> String) -> Result<(), String> {
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
