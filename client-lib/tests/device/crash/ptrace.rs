//! Runs a program under ptrace, counts the system calls its threads enter, and kills it
//! (its whole process group, every thread) with SIGKILL on entry to the Nth: that call and
//! everything after it never run, everything before it did. No timers, no sleeps: a kill
//! point is a count of system calls, the same point on every run of a single-threaded phase.
//!
//! The program is started as `sh -c 'kill -STOP $$ && exec PROGRAM ARGS'` in a process group
//! of its own: the shell stops itself, is seized (`PTRACE_SEIZE`, which needs no `unsafe`
//! `pre_exec`), continued, and counting starts at the exec of the program. Threads and
//! children are followed (`PTRACE_O_TRACECLONE`, `TRACEFORK`, `TRACEVFORK`); only the
//! stops of a thread alternate between entry and exit (`PTRACE_GET_SYSCALL_INFO` would say
//! which, but nix 0.30 passes it no buffer size); only the
//! tracees of that group are waited for (`waitpid(-pgid, __WALL)`), so the children of
//! other tests running in the same process are never reaped here.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::sys::ptrace::{self, Event, Options};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// A system call's number and its first three arguments.
pub type Call = (i64, [u64; 3]);

/// How a traced run ended.
#[derive(Debug)]
pub struct Traced {
    /// System calls the program's threads entered after its exec, the one it was killed at
    /// included.
    pub entered: u64,
    /// Killed at `kill_at` (else it ran to its end).
    pub killed: bool,
    /// The exit code of a run that ended by itself.
    pub code: Option<i32>,
    /// The number and first three arguments of each system call entered, in order, when
    /// asked for.
    pub calls: Vec<Call>,
}

/// Runs `program args` traced; kills it on entry to system call number `kill_at` (counted
/// from 1 over all its threads) if it gets that far. With `record`, the number of every
/// system call entered is kept (read from `/proc/<tid>/syscall`, slower).
pub fn run(program: &Path, args: &[OsString], kill_at: Option<u64>, record: bool) -> Traced {
    use std::os::unix::process::CommandExt;
    // Reaped by the `waitpid` loop below, with every thread it starts.
    #[allow(clippy::zombie_processes)]
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"kill -STOP $$ && exec "$0" "$@""#)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawning /bin/sh");
    let pid = Pid::from_raw(child.id() as i32);
    match waitpid(pid, Some(WaitPidFlag::WUNTRACED)) {
        Ok(WaitStatus::Stopped(_, Signal::SIGSTOP)) => {}
        other => panic!("the shell did not stop itself: {other:?}"),
    }
    let options = Options::PTRACE_O_TRACESYSGOOD
        | Options::PTRACE_O_TRACECLONE
        | Options::PTRACE_O_TRACEFORK
        | Options::PTRACE_O_TRACEVFORK
        | Options::PTRACE_O_TRACEEXEC
        | Options::PTRACE_O_EXITKILL;
    ptrace::seize(pid, options).expect("PTRACE_SEIZE");
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let group = Pid::from_raw(-pid.as_raw());
    let mut out = Traced {
        entered: 0,
        killed: false,
        code: None,
        calls: Vec::new(),
    };
    let mut counting = false;
    // Whether each thread is between a system call's entry and its exit.
    let mut in_call: std::collections::HashMap<Pid, bool> = std::collections::HashMap::new();
    loop {
        let status = match waitpid(group, Some(WaitPidFlag::__WALL)) {
            Ok(s) => s,
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => break,
            Err(e) => panic!("waitpid: {e}"),
        };
        // The signal to pass on when the stopped thread is resumed.
        let mut deliver = None;
        let tid = match status {
            WaitStatus::PtraceSyscall(tid) => {
                // Stops alternate entry, exit, per thread (a new thread's first is an entry).
                let inside = in_call.entry(tid).or_insert(false);
                *inside = !*inside;
                let entry = *inside;
                if counting && entry && !out.killed {
                    out.entered += 1;
                    if record {
                        out.calls.push(syscall_number(tid));
                    }
                    if Some(out.entered) == kill_at {
                        // The whole group, every thread: the call it stopped at never runs.
                        kill(group, Signal::SIGKILL).expect("SIGKILL");
                        out.killed = true;
                        continue;
                    }
                }
                tid
            }
            WaitStatus::PtraceEvent(tid, _, ev) => {
                if ev == Event::PTRACE_EVENT_EXEC as i32 {
                    // Inside execve: its exit is the next stop.
                    counting = true;
                    in_call.insert(tid, true);
                }
                tid
            }
            WaitStatus::Stopped(tid, sig) => {
                deliver = Some(sig);
                tid
            }
            WaitStatus::Exited(p, code) => {
                if p == pid {
                    out.code = Some(code);
                }
                continue;
            }
            WaitStatus::Signaled(..) => continue,
            other => panic!("unexpected wait status {other:?}"),
        };
        if out.killed {
            continue;
        }
        // A thread that died in the meantime cannot be resumed: its exit is reported next.
        match ptrace::syscall(tid, deliver) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => panic!("PTRACE_SYSCALL: {e}"),
        }
    }
    out
}

/// The number and first three arguments of the system call `tid` is stopped in
/// (`/proc/<tid>/syscall`: the number in decimal, then the arguments in hex).
fn syscall_number(tid: Pid) -> Call {
    let text = std::fs::read_to_string(format!("/proc/{tid}/syscall")).unwrap_or_default();
    let mut fields = text.split_whitespace();
    let nr = fields.next().and_then(|n| n.parse().ok()).unwrap_or(-1);
    let mut args = [u64::MAX; 3];
    for (a, f) in args.iter_mut().zip(fields) {
        *a = u64::from_str_radix(f.trim_start_matches("0x"), 16).unwrap_or(u64::MAX);
    }
    (nr, args)
}

/// Whether a system call changes what a SIGKILL leaves on disk: a kill right before it and
/// right after it are the states a run passes through. Left out: writes to standard output
/// and error (the agent's log), opens only to read, and syncs (a killed process loses no
/// page cache).
pub fn changes_disk((nr, args): Call) -> bool {
    use nix::libc as c;
    let writes = [c::SYS_write, c::SYS_pwrite64, c::SYS_writev, c::SYS_pwritev];
    if writes.contains(&nr) {
        return args[0] > 2;
    }
    let writing = |flags: u64| {
        let flags = flags as i32;
        flags & (c::O_WRONLY | c::O_RDWR | c::O_CREAT | c::O_TRUNC) != 0
    };
    if nr == c::SYS_openat {
        return writing(args[2]);
    }
    #[cfg(target_arch = "x86_64")]
    if nr == c::SYS_open {
        return writing(args[1]);
    }
    let changes = [
        c::SYS_openat2,
        c::SYS_mkdirat,
        c::SYS_unlinkat,
        c::SYS_renameat,
        c::SYS_renameat2,
        c::SYS_linkat,
        c::SYS_symlinkat,
        c::SYS_fchmodat,
        c::SYS_fchmod,
        c::SYS_fchownat,
        c::SYS_fchown,
        c::SYS_setxattr,
        c::SYS_lsetxattr,
        c::SYS_fsetxattr,
        c::SYS_ftruncate,
        c::SYS_fallocate,
        c::SYS_copy_file_range,
        c::SYS_utimensat,
    ];
    #[cfg(target_arch = "x86_64")]
    let legacy = [
        c::SYS_creat,
        c::SYS_mkdir,
        c::SYS_rmdir,
        c::SYS_unlink,
        c::SYS_rename,
        c::SYS_link,
        c::SYS_symlink,
        c::SYS_chmod,
        c::SYS_chown,
        c::SYS_lchown,
    ];
    #[cfg(not(target_arch = "x86_64"))]
    let legacy: [i64; 0] = [];
    changes.contains(&nr) || legacy.contains(&nr)
}
