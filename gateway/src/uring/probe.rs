//! What the kernel offers the io_uring driver, found out once at start (and by `ringcast
//! doctor`): whether a ring can be set up at all, which of the operations the driver
//! submits the kernel knows, which ring setup flags it accepts. When io_uring cannot be
//! used, [`Unavailable`] says exactly what is missing and how to enable it; ringcast has
//! no epoll backend and stops (exit code 2) instead of half-working.

use io_uring::{opcode, IoUring};
use std::fmt;

/// Set to make ringcast behave as if io_uring were unavailable, for tests and for trying
/// the error path: `1` answers `io_uring_setup` with EPERM; a comma-separated list of
/// operation names (`writev,close`) reports those operations missing from the probe.
pub const FORBID_ENV: &str = "RINGCAST_FORBID_IO_URING";

/// Entries of the short-lived rings set up to probe (the smallest useful size).
const PROBE_RING_ENTRIES: u32 = 8;

/// An io_uring operation the driver submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// The name used in messages and in [`FORBID_ENV`] (`IORING_OP_` suffix, lower case).
    pub name: &'static str,
    /// The opcode the kernel's probe reports on.
    pub code: u8,
    /// The first Linux release that has it.
    pub since: &'static str,
    /// What ringcast uses it for.
    pub use_: &'static str,
}

/// Every operation `uring::Ring` submits; a kernel without one of them cannot run ringcast.
/// (Multishot accept is a flag on `accept`, optional: see [`UringSupport::multishot_accept`].)
pub const REQUIRED_OPS: [Op; 7] = [
    Op {
        name: "accept",
        code: opcode::Accept::CODE,
        since: "5.5",
        use_: "accepting connections",
    },
    Op {
        name: "recv",
        code: opcode::Recv::CODE,
        since: "5.6",
        use_: "reading requests",
    },
    Op {
        name: "writev",
        code: opcode::Writev::CODE,
        since: "5.1",
        use_: "writing responses and SSE frames",
    },
    Op {
        name: "close",
        code: opcode::Close::CODE,
        since: "5.6",
        use_: "closing connections",
    },
    Op {
        name: "read",
        code: opcode::Read::CODE,
        since: "5.6",
        use_: "reading the shard's wake-up eventfd",
    },
    Op {
        name: "write",
        code: opcode::Write::CODE,
        since: "5.6",
        use_: "waking other shards",
    },
    Op {
        name: "async_cancel",
        code: opcode::AsyncCancel::CODE,
        since: "5.5",
        use_: "cancelling the accept on shutdown",
    },
];

/// What the kernel's io_uring offers, when a ring could be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UringSupport {
    /// Each of [`REQUIRED_OPS`] and whether the probe lists it.
    pub ops: Vec<(Op, bool)>,
    /// Multishot accept (5.19+): one accept armed for every connection.
    pub multishot_accept: bool,
    /// `IORING_SETUP_SINGLE_ISSUER` (6.0+) accepted.
    pub single_issuer: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` (6.1+, with single-issuer) accepted.
    pub defer_taskrun: bool,
    /// `IORING_SETUP_COOP_TASKRUN` (5.19+) accepted.
    pub coop_taskrun: bool,
    /// A buffer ring of provided buffers (`IORING_REGISTER_PBUF_RING`, 5.19+) accepted:
    /// idle WebSocket receives hold no buffer of their own (ring/pool.rs).
    pub provided_buffers: bool,
}

impl UringSupport {
    /// Names of the required operations the kernel lacks.
    pub fn missing(&self) -> Vec<&'static str> {
        self.ops
            .iter()
            .filter(|(_, supported)| !supported)
            .map(|(op, _)| op.name)
            .collect()
    }
}

/// Facts about the machine that explain why io_uring is unavailable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `uname -r`.
    pub release: String,
    /// `kernel.io_uring_disabled` (6.6+; `None` where the sysctl does not exist).
    pub io_uring_disabled: Option<u32>,
    /// `kernel.io_uring_group` (-1: no group).
    pub io_uring_group: Option<i64>,
    /// `Seccomp:` of /proc/self/status: 0 none, 1 strict, 2 filter.
    pub seccomp: Option<u32>,
    /// The soft `RLIMIT_MEMLOCK` in bytes (rings count against it before 5.12).
    pub memlock_bytes: Option<u64>,
    /// The failure was simulated by [`FORBID_ENV`].
    pub forced: bool,
}

impl Facts {
    /// Reads them from /proc.
    pub fn gather() -> Facts {
        Facts {
            release: kernel_release(),
            io_uring_disabled: read_sysctl("kernel.io_uring_disabled").and_then(|v| v.parse().ok()),
            io_uring_group: read_sysctl("kernel.io_uring_group").and_then(|v| v.parse().ok()),
            seccomp: seccomp_mode(),
            memlock_bytes: rlimit(libc::RLIMIT_MEMLOCK).map(|(soft, _)| soft),
            forced: false,
        }
    }
}

/// Why ringcast cannot use io_uring here. Its `Display` is the whole explanation, with how
/// to enable what is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// `io_uring_setup` failed with this errno.
    Setup {
        /// The errno.
        errno: i32,
        /// What explains it.
        facts: Facts,
    },
    /// Registering the operation probe (`io_uring_register`) failed with this errno.
    Probe {
        /// The errno.
        errno: i32,
        /// What explains it.
        facts: Facts,
    },
    /// The kernel lacks operations ringcast submits.
    MissingOps {
        /// The names of the missing operations.
        missing: Vec<&'static str>,
        /// What explains it.
        facts: Facts,
    },
}

impl Unavailable {
    /// A short phrase for `ringcast doctor`: "disabled by sysctl", "blocked by seccomp", ….
    pub fn summary(&self) -> &'static str {
        match self {
            Unavailable::Setup { errno, facts } => match (*errno, facts.io_uring_disabled) {
                (libc::EPERM | libc::EACCES, Some(2)) => "disabled (kernel.io_uring_disabled = 2)",
                (libc::EPERM | libc::EACCES, Some(1)) => {
                    "restricted (kernel.io_uring_disabled = 1)"
                }
                (libc::EPERM | libc::EACCES, _) => "blocked (seccomp or container policy)",
                (libc::ENOSYS, _) => "absent (kernel too old or built without io_uring)",
                (libc::ENOMEM, _) => "cannot set up a ring (ENOMEM)",
                _ => "cannot set up a ring",
            },
            Unavailable::Probe { .. } => "operations cannot be probed",
            Unavailable::MissingOps { .. } => "too old for operations ringcast uses",
        }
    }
}

fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENOSYS => "ENOSYS",
        libc::ENOMEM => "ENOMEM",
        libc::EINVAL => "EINVAL",
        libc::EFAULT => "EFAULT",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        _ => return std::io::Error::from_raw_os_error(errno).to_string(),
    };
    name.to_owned()
}

/// The three syscalls a policy must allow for io_uring.
const SYSCALLS: &str = "io_uring_setup, io_uring_enter and io_uring_register";

fn seccomp_note(facts: &Facts) -> &'static str {
    match facts.seccomp {
        Some(2) => " (this process runs under a seccomp filter: `Seccomp: 2` in /proc/self/status)",
        Some(1) => " (this process runs in seccomp strict mode)",
        _ => "",
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::Setup { errno, facts } => {
                let name = errno_name(*errno);
                match (*errno, facts.io_uring_disabled) {
                    (libc::EPERM | libc::EACCES, Some(2)) => write!(
                        f,
                        "io_uring is disabled on this machine: io_uring_setup failed with {name} \
                         and kernel.io_uring_disabled = 2 (no process may create a ring). Enable \
                         it as root with `sysctl -w kernel.io_uring_disabled=0` (persist it in \
                         /etc/sysctl.d/), or set it to 1 and run ringcast in the group named by \
                         kernel.io_uring_group"
                    )?,
                    (libc::EPERM | libc::EACCES, Some(1)) => match facts.io_uring_group {
                        Some(group) if group >= 0 => write!(
                            f,
                            "io_uring is restricted on this machine: io_uring_setup failed with \
                             {name}; kernel.io_uring_disabled = 1 allows only processes in group \
                             {group} (kernel.io_uring_group) or with CAP_SYS_ADMIN, and ringcast \
                             is in neither. Run ringcast with group {group} as a supplementary \
                             group (systemd `SupplementaryGroups=`, or `usermod -aG`), or as root \
                             `sysctl -w kernel.io_uring_disabled=0`"
                        )?,
                        _ => write!(
                            f,
                            "io_uring is restricted on this machine: io_uring_setup failed with \
                             {name}; kernel.io_uring_disabled = 1 and kernel.io_uring_group = -1 \
                             allow only processes with CAP_SYS_ADMIN. As root, either `sysctl -w \
                             kernel.io_uring_group=GID` and run ringcast in group GID, or `sysctl \
                             -w kernel.io_uring_disabled=0`"
                        )?,
                    },
                    (libc::EPERM | libc::EACCES, disabled) => {
                        let sysctl = match disabled {
                            Some(value) => format!("kernel.io_uring_disabled = {value}"),
                            None => "this kernel has no kernel.io_uring_disabled sysctl".to_owned(),
                        };
                        write!(
                            f,
                            "io_uring is blocked: io_uring_setup failed with {name} although \
                             {sysctl}, so a seccomp filter or container policy denies it{}. \
                             Allow {SYSCALLS}: a seccomp profile that permits them (`docker run \
                             --security-opt seccomp=PROFILE.json`; recent Docker and containerd \
                             default profiles deny them), Kubernetes `securityContext.seccompProfile` with \
                             such a profile, or drop them from systemd's `SystemCallFilter=`",
                            seccomp_note(facts)
                        )?
                    }
                    (libc::ENOSYS, _) => write!(
                        f,
                        "this kernel ({}) has no io_uring: io_uring_setup failed with ENOSYS. \
                         The kernel is too old (io_uring arrived in 5.1; ringcast needs 5.6 or \
                         newer) or was built without CONFIG_IO_URING (or a seccomp policy answers \
                         ENOSYS{}). Run ringcast on Linux 5.6+ built with CONFIG_IO_URING=y",
                        facts.release,
                        seccomp_note(facts)
                    )?,
                    (libc::ENOMEM, _) => write!(
                        f,
                        "cannot set up an io_uring ring: io_uring_setup failed with ENOMEM. \
                         Kernels before 5.12 ({} here) count ring memory against \
                         RLIMIT_MEMLOCK (soft limit {}): raise it (`ulimit -l`, systemd \
                         `LimitMEMLOCK=`) or free memory",
                        facts.release,
                        facts
                            .memlock_bytes
                            .map_or("unknown".to_owned(), |b| format!("{} KiB", b / 1024))
                    )?,
                    _ => write!(
                        f,
                        "cannot set up an io_uring ring: io_uring_setup failed with {name}"
                    )?,
                }
            }
            Unavailable::Probe { errno, facts } => match *errno {
                libc::EINVAL => write!(
                    f,
                    "this kernel ({}) cannot list its io_uring operations \
                     (IORING_REGISTER_PROBE arrived in 5.6): ringcast needs 5.6 or newer for \
                     recv, read, write and close. Run ringcast on Linux 5.6 or newer",
                    facts.release
                )?,
                errno => write!(
                    f,
                    "io_uring is blocked: probing its operations (io_uring_register) failed with \
                     {}, so a seccomp filter or container policy denies it{}. Allow {SYSCALLS}",
                    errno_name(errno),
                    seccomp_note(facts)
                )?,
            },
            Unavailable::MissingOps { missing, facts } => {
                let named: Vec<String> = missing
                    .iter()
                    .map(|name| {
                        let op = REQUIRED_OPS.iter().find(|op| op.name == *name);
                        match op {
                            Some(op) => {
                                format!("{} (Linux {}+, for {})", op.name, op.since, op.use_)
                            }
                            None => (*name).to_owned(),
                        }
                    })
                    .collect();
                write!(
                    f,
                    "this kernel ({}) lacks io_uring operations ringcast uses: {}. Run ringcast \
                     on Linux 5.6 or newer (5.19+ also gives multishot accept)",
                    facts.release,
                    named.join(", ")
                )?
            }
        }
        let forced = match self {
            Unavailable::Setup { facts, .. }
            | Unavailable::Probe { facts, .. }
            | Unavailable::MissingOps { facts, .. } => facts.forced,
        };
        if forced {
            write!(f, " [simulated: {FORBID_ENV} is set; unset it]")?;
        }
        Ok(())
    }
}

impl std::error::Error for Unavailable {}

/// What [`FORBID_ENV`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Forbid {
    /// Nothing: the real kernel answers.
    Nothing,
    /// `io_uring_setup` answers EPERM.
    Setup,
    /// These operations are missing from the probe.
    Ops(Vec<String>),
}

fn forbid(value: Option<&str>) -> Forbid {
    match value.map(str::trim) {
        None | Some("" | "0") => Forbid::Nothing,
        Some("1" | "setup") => Forbid::Setup,
        Some(list) => Forbid::Ops(list.split(',').map(|s| s.trim().to_owned()).collect()),
    }
}

/// Sets up a short-lived ring and probes it: the operations ringcast needs, multishot
/// accept and the setup flags. `Err` when no ring can be set up or probed; a kernel that
/// lacks operations is `Ok` here (see [`UringSupport::missing`], and [`require`]).
pub fn probe() -> Result<UringSupport, Unavailable> {
    let forbid = forbid(std::env::var(FORBID_ENV).ok().as_deref());
    let facts = || Facts {
        forced: forbid != Forbid::Nothing,
        ..Facts::gather()
    };
    if forbid == Forbid::Setup {
        return Err(Unavailable::Setup {
            errno: libc::EPERM,
            facts: facts(),
        });
    }
    let ring: IoUring = IoUring::builder()
        .build(PROBE_RING_ENTRIES)
        .map_err(|err| Unavailable::Setup {
            errno: err.raw_os_error().unwrap_or(libc::EINVAL),
            facts: facts(),
        })?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|err| Unavailable::Probe {
            errno: err.raw_os_error().unwrap_or(libc::EINVAL),
            facts: facts(),
        })?;
    let forbidden =
        |op: &Op| matches!(&forbid, Forbid::Ops(names) if names.iter().any(|n| n == op.name));
    let ops = REQUIRED_OPS
        .iter()
        .map(|op| (*op, probe.is_supported(op.code) && !forbidden(op)))
        .collect();
    let accepts = |builder: &mut io_uring::Builder| builder.build(PROBE_RING_ENTRIES).is_ok();
    Ok(UringSupport {
        ops,
        multishot_accept: crate::uring::multishot_accept(&probe),
        single_issuer: accepts(IoUring::builder().setup_single_issuer()),
        defer_taskrun: accepts(
            IoUring::builder()
                .setup_single_issuer()
                .setup_defer_taskrun(),
        ),
        coop_taskrun: accepts(IoUring::builder().setup_coop_taskrun()),
        provided_buffers: crate::uring::Ring::with_pool(PROBE_RING_ENTRIES, 1)
            .is_ok_and(|ring| ring.provides_buffers()),
    })
}

/// [`probe`], and every required operation present: what ringcast checks before starting.
pub fn require() -> Result<UringSupport, Unavailable> {
    let support = probe()?;
    let missing = support.missing();
    if missing.is_empty() {
        return Ok(support);
    }
    Err(Unavailable::MissingOps {
        missing,
        facts: Facts {
            forced: std::env::var_os(FORBID_ENV).is_some(),
            ..Facts::gather()
        },
    })
}

/// `uname -r`, or "unknown".
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// A sysctl's value by its dotted name (`net.core.somaxconn`), whitespace collapsed; `None`
/// when this kernel has no such sysctl or it cannot be read.
pub fn read_sysctl(name: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn seccomp_mode() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A resource limit's soft and hard values (`u64::MAX` for unlimited).
pub fn rlimit(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    super::sys::rlimit(resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(disabled: Option<u32>, group: Option<i64>, seccomp: Option<u32>) -> Facts {
        Facts {
            release: "6.9.0".into(),
            io_uring_disabled: disabled,
            io_uring_group: group,
            seccomp,
            memlock_bytes: Some(65536),
            forced: false,
        }
    }

    #[test]
    fn each_cause_names_what_is_missing_and_how_to_enable_it() {
        let setup = |errno, facts| Unavailable::Setup { errno, facts }.to_string();
        let cases: Vec<(String, &[&str])> = vec![
            (
                setup(libc::EPERM, facts(Some(2), Some(-1), Some(0))),
                &[
                    "kernel.io_uring_disabled = 2",
                    "sysctl -w kernel.io_uring_disabled=0",
                ],
            ),
            (
                setup(libc::EPERM, facts(Some(1), Some(1234), Some(0))),
                &[
                    "kernel.io_uring_disabled = 1",
                    "group 1234",
                    "kernel.io_uring_group",
                ],
            ),
            (
                setup(libc::EPERM, facts(Some(1), Some(-1), Some(0))),
                &["CAP_SYS_ADMIN", "sysctl -w kernel.io_uring_group=GID"],
            ),
            (
                setup(libc::EPERM, facts(Some(0), Some(-1), Some(2))),
                &["seccomp filter or container policy", "Seccomp: 2", SYSCALLS],
            ),
            (
                setup(libc::EACCES, facts(None, None, Some(0))),
                &["has no kernel.io_uring_disabled sysctl", "seccomp"],
            ),
            (
                setup(libc::ENOSYS, facts(None, None, Some(0))),
                &["ENOSYS", "too old", "CONFIG_IO_URING", "6.9.0"],
            ),
            (
                setup(libc::ENOMEM, facts(None, None, None)),
                &["RLIMIT_MEMLOCK", "64 KiB"],
            ),
            (
                Unavailable::Probe {
                    errno: libc::EINVAL,
                    facts: facts(None, None, None),
                }
                .to_string(),
                &["IORING_REGISTER_PROBE", "5.6"],
            ),
            (
                Unavailable::Probe {
                    errno: libc::EPERM,
                    facts: facts(Some(0), None, Some(2)),
                }
                .to_string(),
                &["io_uring_register", "seccomp"],
            ),
            (
                Unavailable::MissingOps {
                    missing: vec!["writev", "close"],
                    facts: facts(None, None, None),
                }
                .to_string(),
                &[
                    "lacks io_uring operations",
                    "writev (Linux 5.1+",
                    "close (Linux 5.6+",
                ],
            ),
        ];
        for (message, wants) in &cases {
            for want in *wants {
                assert!(message.contains(want), "{want:?} not in {message:?}");
            }
            assert!(!message.contains("simulated"), "{message}");
        }
    }

    #[test]
    fn forbid_env_values() {
        assert_eq!(forbid(None), Forbid::Nothing);
        assert_eq!(forbid(Some("0")), Forbid::Nothing);
        assert_eq!(forbid(Some("1")), Forbid::Setup);
        assert_eq!(
            forbid(Some("writev, close")),
            Forbid::Ops(vec!["writev".into(), "close".into()])
        );
        let forced = Unavailable::Setup {
            errno: libc::EPERM,
            facts: Facts {
                forced: true,
                ..facts(Some(0), None, Some(0))
            },
        };
        assert!(forced
            .to_string()
            .ends_with(&format!("[simulated: {FORBID_ENV} is set; unset it]")));
    }

    #[test]
    fn required_ops_have_distinct_codes_and_names() {
        for (i, a) in REQUIRED_OPS.iter().enumerate() {
            for b in &REQUIRED_OPS[i + 1..] {
                assert_ne!(a.code, b.code);
                assert_ne!(a.name, b.name);
            }
        }
    }

    /// Kernel-feature test: probes and skips where io_uring is unavailable (the suite also
    /// runs on machines without it).
    #[test]
    fn probe_on_this_machine_agrees_with_require() {
        if std::env::var_os(FORBID_ENV).is_some() {
            return;
        }
        match probe() {
            Ok(support) => {
                assert_eq!(support.ops.len(), REQUIRED_OPS.len());
                assert_eq!(require().is_ok(), support.missing().is_empty());
            }
            Err(err) => eprintln!("io_uring unavailable here, skipping: {err}"),
        }
    }
}
