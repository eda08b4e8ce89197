//! Kernels without io_uring (issue 8, item 5): ringcast stops with exit code 2 and says
//! what is missing and how to enable it, and `ringcast doctor` reports what the machine
//! offers. The io_uring-less machine is made for real: the binary runs under a seccomp
//! filter that answers `io_uring_setup` with EPERM (as Docker's default profile does), and
//! by `RINGCAST_FORBID_IO_URING`, which simulates a refused setup or a missing operation.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The operations `ringcast doctor` must list (the driver's `REQUIRED_OPS`).
const OPS: [&str; 7] = [
    "accept",
    "recv",
    "writev",
    "close",
    "read",
    "write",
    "async_cancel",
];

struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command` to its end; kills it (and fails) if it is still running after 20 s, as a
/// ringcast that wrongly started serving would be.
fn run(command: &mut Command) -> Outcome {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcast");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for ringcast") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("ringcast still running after 20 s; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Outcome {
        status,
        stdout,
        stderr,
    }
}

fn ringcast() -> Command {
    let mut command = Command::new(common::RINGCAST);
    command.env_remove("RINGCAST_FORBID_IO_URING");
    command
}

/// `seccomp_data.arch` of this build's syscall ABI (linux/audit.h).
const AUDIT_ARCH: u32 = if cfg!(target_arch = "x86_64") {
    0xC000_003E // AUDIT_ARCH_X86_64
} else if cfg!(target_arch = "aarch64") {
    0xC000_00B7 // AUDIT_ARCH_AARCH64
} else {
    0 // no match: the filter allows everything and the seccomp tests see io_uring work
};

const fn statement(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Classic BPF: `io_uring_setup` → EPERM, everything else allowed.
const DENY_IO_URING_SETUP: [libc::sock_filter; 7] = [
    // A = seccomp_data.arch
    statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
    jump(
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        AUDIT_ARCH,
        1,
        0,
    ),
    statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    // A = seccomp_data.nr
    statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
    jump(
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        libc::SYS_io_uring_setup as u32,
        0,
        1,
    ),
    statement(
        libc::BPF_RET | libc::BPF_K,
        libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
    ),
    statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
];

/// Installs [`DENY_IO_URING_SETUP`] in the calling process. Runs between fork and exec
/// (`pre_exec`), so it only makes syscalls: no allocation, no locks.
fn deny_io_uring_setup() -> std::io::Result<()> {
    let program = libc::sock_fprog {
        len: DENY_IO_URING_SETUP.len() as u16,
        filter: DENY_IO_URING_SETUP.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with integer arguments; required so an unprivileged process may
    // install a filter.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `program` points at a filter that lives for the whole program; the kernel
    // copies it during the call.
    let installed = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &program as *const libc::sock_fprog,
        )
    };
    if installed != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `ringcast ARGS…` under the seccomp filter.
fn ringcast_under_seccomp() -> Command {
    let mut command = ringcast();
    // SAFETY: the closure only calls prctl and seccomp (async-signal-safe).
    unsafe { command.pre_exec(deny_io_uring_setup) };
    command
}

fn io_uring_disabled_sysctl() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|v| v.trim().to_owned())
}

#[test]
fn doctor_on_this_machine_names_io_uring_available_and_lists_the_ops() {
    let out = run(ringcast().arg("doctor"));
    if out.status.code() == Some(2) && out.stdout.contains("io_uring              ") {
        // Kernel-feature test: this machine has no usable io_uring; the report must say
        // why rather than claim it is available.
        assert!(
            out.stdout.contains("verdict: ringcast cannot run here: "),
            "{}",
            out.stdout
        );
        eprintln!("io_uring unavailable here; skipping: {}", out.stdout);
        return;
    }
    assert_eq!(out.status.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    let text = &out.stdout;
    for want in [
        "kernel                ",
        "io_uring              available\n",
        "  multishot accept      ",
        "  provided buffers      supported (5.19+)\n",
        "  setup SINGLE_ISSUER   ",
        "  setup DEFER_TASKRUN   ",
        "  setup COOP_TASKRUN    ",
        "open files            soft ",
        "CPUs allowed          ",
        "net.core.somaxconn",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
        "fs.file-max",
        "kernel.io_uring_disabled",
        "ringcast will use\n  io_uring: one ring per shard",
        "verdict: ringcast can run here",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    for op in OPS {
        assert!(
            text.contains(&format!("  op {op:<18} supported")),
            "op {op} not listed as supported:\n{text}"
        );
    }
}

#[test]
fn doctor_takes_the_flags_before_it() {
    let out = run(ringcast().args(["--shards", "1", "doctor"]));
    assert!(out.stdout.contains("  shards: 1 "), "{}", out.stdout);
    let out = run(ringcast().args(["--heartbeat", "-1", "doctor"]));
    assert_eq!(out.status.code(), Some(2), "{}", out.stdout);
    assert!(
        out.stdout.contains("  config: --heartbeat:"),
        "{}",
        out.stdout
    );
}

#[test]
fn seccomp_denying_io_uring_setup_stops_ringcast_with_exit_2_and_says_how_to_allow_it() {
    let out = run(ringcast_under_seccomp().args(["--listen", "127.0.0.1:0", "--shards", "1"]));
    assert_eq!(out.status.code(), Some(2), "stderr: {}", out.stderr);
    let stderr = &out.stderr;
    assert!(
        stderr.starts_with("ringcast: ") && stderr.contains("io_uring_setup failed with EPERM"),
        "{stderr}"
    );
    assert!(!stderr.contains("simulated"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    match io_uring_disabled_sysctl().as_deref() {
        // The sysctl allows io_uring, so the refusal can only be the filter: say so.
        Some("0") | None => {
            for want in [
                "io_uring is blocked",
                "a seccomp filter or container policy denies it",
                "`Seccomp: 2` in /proc/self/status",
                "Allow io_uring_setup, io_uring_enter and io_uring_register",
            ] {
                assert!(stderr.contains(want), "{want:?} not in {stderr}");
            }
        }
        Some(value) => assert!(
            stderr.contains(&format!("kernel.io_uring_disabled = {value}")),
            "{stderr}"
        ),
    }
}

#[test]
fn doctor_under_seccomp_says_io_uring_is_blocked_and_exits_2() {
    let out = run(ringcast_under_seccomp().arg("doctor"));
    assert_eq!(out.status.code(), Some(2), "{}\n{}", out.stdout, out.stderr);
    let text = &out.stdout;
    assert!(text.contains("seccomp               filter\n"), "{text}");
    if matches!(io_uring_disabled_sysctl().as_deref(), Some("0") | None) {
        assert!(
            text.contains("io_uring              blocked (seccomp or container policy)\n"),
            "{text}"
        );
    }
    assert!(
        text.contains("  nothing: ringcast has no backend without io_uring"),
        "{text}"
    );
    assert!(
        text.contains("verdict: ringcast cannot run here: "),
        "{text}"
    );
}

#[test]
fn forbid_env_acts_as_a_refused_setup() {
    let out = run(ringcast().env("RINGCAST_FORBID_IO_URING", "1").args([
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
    ]));
    assert_eq!(out.status.code(), Some(2), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("io_uring_setup failed with EPERM")
            && out
                .stderr
                .contains("[simulated: RINGCAST_FORBID_IO_URING is set; unset it]"),
        "{}",
        out.stderr
    );
    let out = run(ringcast()
        .env("RINGCAST_FORBID_IO_URING", "1")
        .arg("doctor"));
    assert_eq!(out.status.code(), Some(2), "{}", out.stdout);
    assert!(out.stdout.contains("verdict: ringcast cannot run here: "));
}

#[test]
fn forbid_env_with_op_names_acts_as_a_kernel_missing_them() {
    let out = run(ringcast()
        .env("RINGCAST_FORBID_IO_URING", "writev,async_cancel")
        .args(["--listen", "127.0.0.1:0", "--shards", "1"]));
    if out.status.code() == Some(2) && out.stderr.contains("io_uring_setup failed") {
        eprintln!("io_uring unavailable here; skipping: {}", out.stderr);
        return;
    }
    assert_eq!(out.status.code(), Some(2), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains(
            "lacks io_uring operations ringcast uses: writev (Linux 5.1+, for writing \
             responses and SSE frames), async_cancel (Linux 5.5+"
        ),
        "{}",
        out.stderr
    );
    let out = run(ringcast()
        .env("RINGCAST_FORBID_IO_URING", "writev")
        .arg("doctor"));
    assert_eq!(out.status.code(), Some(2), "{}", out.stdout);
    assert!(
        out.stdout.contains("  op writev             MISSING"),
        "{}",
        out.stdout
    );
}
