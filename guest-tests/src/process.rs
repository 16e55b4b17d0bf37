//! Child processes and fd passing, written once: fork a child that runs a closure under its
//! own alarm and `_exit`s with a code, wait for it (with or without a bound), name what it
//! died of, and send dma-buf fds between processes with SCM_RIGHTS.
//!
//! The runner forks every test into a child with these; the concurrency tests fork their
//! own children and hand fds to them; the fuzzer forks a child that reads a mapping; the
//! memory-pressure test locks its pages. Every `unsafe` call for all of them lives in this
//! module.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread;
use std::time::{Duration, Instant};

/// Exit code of a forked child whose body panicked.
pub const PANICKED: i32 = 101;

// ---------------------------------------------------------------------------------------
// Forked children

/// Forks a child that runs `body` under its own alarm of `alarm` (whole seconds, at least
/// one) and exits with the code `body` returns (`PANICKED` if it panics); the child never
/// returns into the caller, so the calling process does not continue twice.
///
/// Call it from a single-threaded process (each test runs in its own; the threaded tests
/// join their threads before returning and do not fork), or with a body that does only what
/// is safe after fork in a multi-threaded one (as the unit tests here do).
pub fn spawn(alarm: Duration, body: impl FnOnce() -> i32) -> io::Result<Child> {
    spawn_with(alarm, (), |()| body()).map(|(child, ())| child)
}

/// Like `spawn`, but `value` goes to the child's `body` by value while the parent gets its
/// own copy back: the way to hand a forked child things it must own (and close or unmap
/// itself) that the parent keeps using too.
pub fn spawn_with<T>(
    alarm: Duration,
    value: T,
    body: impl FnOnce(T) -> i32,
) -> io::Result<(Child, T)> {
    // Anything buffered would otherwise be written once per process.
    let _ = io::stdout().flush();
    // SAFETY: fork itself has no memory-safety preconditions; the child then runs only
    // `body`, which callers keep safe after fork (see the doc: each test runs in its own
    // single-threaded process, so the child may run any code), and ends in `_exit`.
    let pid = unsafe { libc::fork() };
    match pid {
        p if p < 0 => Err(io::Error::last_os_error()),
        0 => child_main(alarm, move || body(value)),
        p => Ok((
            Child {
                pid: p,
                reaped: false,
            },
            value,
        )),
    }
}

/// Runs a forked child's body under its own alarm and exits with the body's code; a panic
/// exits with `PANICKED` instead of unwinding into the caller of `spawn`.
fn child_main(alarm: Duration, body: impl FnOnce() -> i32) -> ! {
    let secs = alarm.as_secs().max(1) as libc::c_uint;
    // SAFETY: alarm has no memory-safety preconditions.
    unsafe { libc::alarm(secs) };
    let code = catch_unwind(AssertUnwindSafe(body)).unwrap_or(PANICKED);
    // SAFETY: _exit ends this process only, running no destructors or atexit handlers that
    // belong to the parent's state.
    unsafe { libc::_exit(code) }
}

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// Decodes a `waitpid` status (of a child that ended: no WUNTRACED, no WCONTINUED).
    fn from_status(status: libc::c_int) -> Exit {
        if libc::WIFEXITED(status) {
            Exit::Code(libc::WEXITSTATUS(status))
        } else {
            Exit::Signal(libc::WTERMSIG(status))
        }
    }
}

/// The name of the signals a crashing test dies of; "signal" for any other.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "signal",
    }
}

/// A forked child; killed with SIGKILL and reaped on drop unless already reaped, so no
/// early return leaves a process (and the dma-buf references it holds) behind.
pub struct Child {
    pid: libc::pid_t,
    reaped: bool,
}

impl Child {
    /// The child's process id (kmemleak names the allocating task by it).
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Waits up to `limit` for the child to exit and returns its exit code; a child that
    /// overruns is killed, and one killed by a signal is reported as such.
    pub fn wait(&mut self, limit: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + limit;
        loop {
            let mut status = 0;
            // SAFETY: `pid` is our unreaped child and `status` a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                self.reaped = true;
                if libc::WIFEXITED(status) {
                    return Ok(libc::WEXITSTATUS(status));
                }
                let sig = libc::WTERMSIG(status);
                let why = if sig == libc::SIGALRM {
                    " (its own alarm: it hung)"
                } else {
                    ""
                };
                return Err(format!("child {} killed by signal {sig}{why}", self.pid));
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // ECHILD: nothing left to reap.
                self.reaped = true;
                return Err(format!("waitpid({}): {e}", self.pid));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "child {} still running after {limit:?}; killed it with SIGKILL",
                    self.pid
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the child is still running (not exited, not killed); reaps it if it ended.
    pub fn is_running(&mut self) -> bool {
        if self.reaped {
            return false;
        }
        let mut status = 0;
        // SAFETY: `pid` is our unreaped child and `status` a valid out-pointer.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if r == 0 {
            return true;
        }
        self.reaped = true;
        false
    }

    /// Waits without a bound of its own (the child's alarm is the bound) and says how the
    /// child ended. A failed waitpid other than EINTR leaves nothing to reap.
    pub fn wait_exit(&mut self) -> io::Result<Exit> {
        loop {
            let mut status = 0;
            // SAFETY: `pid` is our unreaped child and `status` a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                self.reaped = true;
                return Ok(Exit::from_status(status));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                self.reaped = true;
                return Err(e);
            }
        }
    }

    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: `pid` is our child and not yet reaped, so it names no other process.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        loop {
            let mut status = 0;
            // SAFETY: as above; `status` is a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        self.reaped = true;
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// Memory

/// Locks every page this process maps now, its own code included, into memory. A test that
/// drives the machine out of memory needs it: otherwise reclaim evicts the test binary's text
/// and the test dies of the OOM killer faulting its own code back in.
pub fn lock_memory() -> io::Result<()> {
    // SAFETY: mlockall has no memory-safety preconditions.
    if unsafe { libc::mlockall(libc::MCL_CURRENT) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Pipes

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

// ---------------------------------------------------------------------------------------
// SCM_RIGHTS

/// Control buffer for SCM_RIGHTS, aligned for `cmsghdr`; room for a few fds, so a peer
/// that sends more than one is detected rather than truncated.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// Sends all of `data` over a connected Unix stream socket, with `fd` attached to its first
/// byte as SCM_RIGHTS when given. MSG_NOSIGNAL: a dead peer is an EPIPE, not a SIGPIPE.
pub fn send_with_fd(sock: &UnixStream, data: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let sock = sock.as_raw_fd();
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: msghdr is plain data, and all zeroes is an empty header (on every libc,
    // including padding fields some have).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        let one = std::mem::size_of::<RawFd>() as libc::c_uint;
        // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
        let (space, len) = unsafe { (libc::CMSG_SPACE(one), libc::CMSG_LEN(one)) };
        if space as usize > cbuf.0.len() {
            return Err(io::Error::other("control buffer too small for one fd"));
        }
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg_control` points at `space` zeroed bytes of `cbuf`, aligned for
        // cmsghdr and large enough for one header carrying one int, so CMSG_FIRSTHDR
        // returns a pointer to a header inside `cbuf` (checked for null anyway), and
        // CMSG_DATA points at the int's room after it; it may be unaligned, hence the
        // unaligned write.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            if c.is_null() {
                return Err(io::Error::other("CMSG_FIRSTHDR found no room"));
            }
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = len as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: `msg` points only at `iov` (which points at `data`) and `cbuf`, all of which
    // outlive the call; sendmsg only reads them.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut sent = n as usize;
    // A stream socket may take the record in pieces; the fd went with the first one.
    while sent < data.len() {
        let rest = &data[sent..];
        // SAFETY: `rest` is valid for reads of `rest.len()` bytes for the call.
        let n = unsafe { libc::send(sock, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

/// Receives exactly `buf.len()` bytes from a connected Unix stream socket, and the fd sent
/// with them if any (close-on-exec). The protocols using it are lockstep (one record in flight
/// per direction), so the rest of a short read can never belong to a record carrying an fd.
pub fn recv_with_fd(sock: &UnixStream, buf: &mut [u8]) -> io::Result<Option<OwnedFd>> {
    let sock = sock.as_raw_fd();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: as in `send_with_fd`, an all-zero msghdr is an empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.0.len() as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (which points at `buf`) and `cbuf`, both writable
        // and alive for the call, with their true lengths.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            // SO_RCVTIMEO expired.
            io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no reply in time"))
            }
            _ => return Err(e),
        }
    };
    // Own every fd that arrived before anything can fail, so none leaks.
    let mut fds = Vec::new();
    // SAFETY: the kernel wrote `msg_controllen` bytes of well-formed control headers into
    // `cbuf`; CMSG_FIRSTHDR/CMSG_NXTHDR stay within them. An SCM_RIGHTS payload is ints
    // (read unaligned, as CMSG_DATA need not be aligned for int) that the kernel has just
    // installed in our fd table and that nothing else owns.
    unsafe {
        let header = libc::CMSG_LEN(0) as usize;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count =
                    ((*c).cmsg_len as usize).saturating_sub(header) / std::mem::size_of::<RawFd>();
                for k in 0..count {
                    let fd = std::ptr::read_unaligned(data.add(k));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("SCM_RIGHTS control data truncated"));
    }
    if n == 0 && !buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the socket",
        ));
    }
    let mut got = n;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes for the call.
        let n = unsafe { libc::recv(sock, rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the socket mid-record",
            ));
        }
        got += n as usize;
    }
    if fds.len() > 1 {
        return Err(io::Error::other(format!(
            "{} fds arrived with one record, expected at most one",
            fds.len()
        )));
    }
    Ok(fds.pop())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forked children's own alarm in these tests.
    const ALARM: Duration = Duration::from_secs(10);

    // The forked children below only sleep or return: safe after fork from the
    // multi-threaded test harness.
    #[test]
    fn kid_wait_returns_the_exit_code() {
        let mut kid = spawn(ALARM, || 7).unwrap_or_else(|_| panic!("fork"));
        assert_eq!(kid.wait(Duration::from_secs(10)), Ok(7));
    }

    #[test]
    fn kid_wait_kills_an_overrunning_child() {
        let mut kid = spawn(ALARM, || loop {
            thread::sleep(Duration::from_secs(1));
        })
        .unwrap_or_else(|_| panic!("fork"));
        let pid = kid.pid;
        let e = kid.wait(Duration::from_millis(50)).unwrap_err();
        assert!(e.contains("killed it with SIGKILL"), "{e}");
        // Reaped: the pid no longer names our child.
        // SAFETY: waitpid on a pid with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut 0, libc::WNOHANG) };
        assert_eq!(r, -1);
    }

    #[test]
    fn kid_drop_reaps() {
        let kid = spawn(ALARM, || loop {
            thread::sleep(Duration::from_secs(1));
        })
        .unwrap_or_else(|_| panic!("fork"));
        let pid = kid.pid;
        drop(kid);
        // SAFETY: waitpid on a pid with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut 0, libc::WNOHANG) };
        assert_eq!(r, -1);
    }
}
