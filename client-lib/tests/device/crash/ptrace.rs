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
    /// The number of each system call entered, in order, when asked for.
    pub calls: Vec<i64>,
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

/// The number of the system call `tid` is stopped in (`/proc/<tid>/syscall`'s first field).
fn syscall_number(tid: Pid) -> i64 {
    let text = std::fs::read_to_string(format!("/proc/{tid}/syscall")).unwrap_or_default();
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}
