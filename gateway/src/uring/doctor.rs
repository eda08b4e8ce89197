//! `ringcast doctor`: what this machine offers ringcast (kernel, io_uring and each
//! operation the driver submits, ring setup flags, fd limits, the sysctls that matter, the
//! CPUs allowed) and what ringcast will use on it. Gathering reads /proc and sets up a few
//! short-lived rings; rendering is a pure function of the gathered [`Report`].

use crate::config::Config;
use crate::uring::probe::{self, Facts, Unavailable, UringSupport};
use std::fmt;

/// Sysctls that bear on a fan-out gateway, in the order printed.
pub const SYSCTLS: [&str; 9] = [
    "kernel.io_uring_disabled",
    "kernel.io_uring_group",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "fs.file-max",
    "fs.nr_open",
];

/// The listen backlog ringcast asks for.
const LISTEN_BACKLOG: u64 = crate::runtime::LISTEN_BACKLOG as u64;
/// Descriptors a process holds besides connections (listeners, rings, eventfds, logs),
/// per shard, for the connection estimate.
const FDS_PER_SHARD: u64 = 8;

/// Everything `ringcast doctor` prints.
#[derive(Debug)]
pub struct Report {
    /// Kernel release, seccomp mode and the io_uring sysctls.
    pub facts: Facts,
    /// io_uring: what it offers, or why it is unavailable.
    pub uring: Result<UringSupport, Unavailable>,
    /// `RLIMIT_NOFILE` soft and hard.
    pub fds: Option<(u64, u64)>,
    /// `RLIMIT_MEMLOCK` soft and hard.
    pub memlock: Option<(u64, u64)>,
    /// Each of [`SYSCTLS`] and its value (`None`: absent on this kernel).
    pub sysctls: Vec<(&'static str, Option<String>)>,
    /// CPU ids this process may run on.
    pub cpus: Vec<usize>,
    /// The settings ringcast would start with (flags and `--config` as given), or why they
    /// do not load.
    pub config: Result<Config, String>,
}

impl Report {
    /// Looks at this machine.
    pub fn gather(config: Result<Config, String>) -> Report {
        Report {
            facts: Facts::gather(),
            uring: probe::probe(),
            fds: probe::rlimit(libc::RLIMIT_NOFILE),
            memlock: probe::rlimit(libc::RLIMIT_MEMLOCK),
            sysctls: SYSCTLS
                .iter()
                .map(|name| (*name, probe::read_sysctl(name)))
                .collect(),
            cpus: core_affinity::get_core_ids()
                .unwrap_or_default()
                .into_iter()
                .map(|core| core.id)
                .collect(),
            config,
        }
    }

    /// Why ringcast cannot run here, if it cannot.
    pub fn unavailable(&self) -> Option<Unavailable> {
        match &self.uring {
            Err(err) => Some(err.clone()),
            Ok(support) if !support.missing().is_empty() => Some(Unavailable::MissingOps {
                missing: support.missing(),
                facts: self.facts.clone(),
            }),
            Ok(_) => None,
        }
    }

    /// ringcast can start here: io_uring with every operation, and a config that loads.
    pub fn can_run(&self) -> bool {
        self.unavailable().is_none() && self.config.is_ok()
    }

    fn sysctl(&self, name: &str) -> Option<&str> {
        self.sysctls
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// CPU ids as ranges: `0-3,6`.
fn cpu_ranges(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        out.push(if sorted[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", sorted[i])
        });
        i += 1;
    }
    out.join(",")
}

fn limit(value: u64) -> String {
    if value == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        value.to_string()
    }
}

fn yes(flag: bool, yes: &'static str, no: &'static str) -> &'static str {
    if flag {
        yes
    } else {
        no
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let facts = &self.facts;
        writeln!(
            f,
            "ringcast doctor: what this machine offers, and what ringcast will use"
        )?;
        writeln!(f)?;
        writeln!(f, "kernel                {}", facts.release)?;
        let seccomp = match facts.seccomp {
            Some(0) => "none",
            Some(1) => "strict",
            Some(2) => "filter",
            _ => "unknown",
        };
        writeln!(f, "seccomp               {seccomp}")?;
        match &self.uring {
            Ok(support) => {
                let missing = support.missing();
                if missing.is_empty() {
                    writeln!(f, "io_uring              available")?;
                } else {
                    writeln!(
                        f,
                        "io_uring              available, but missing: {}",
                        missing.join(", ")
                    )?;
                }
                for (op, supported) in &support.ops {
                    writeln!(
                        f,
                        "  op {:<18} {:<10} {} (Linux {}+)",
                        op.name,
                        yes(*supported, "supported", "MISSING"),
                        op.use_,
                        op.since
                    )?;
                }
                writeln!(
                    f,
                    "  multishot accept      {}",
                    yes(
                        support.multishot_accept,
                        "supported (5.19+)",
                        "no (one accept per connection)"
                    )
                )?;
                writeln!(
                    f,
                    "  provided buffers      {}",
                    yes(
                        support.provided_buffers,
                        "supported (5.19+)",
                        "no (idle WebSocket receives hold their own buffer)"
                    )
                )?;
                for (name, accepted) in [
                    ("SINGLE_ISSUER", support.single_issuer),
                    ("DEFER_TASKRUN", support.defer_taskrun),
                    ("COOP_TASKRUN", support.coop_taskrun),
                ] {
                    writeln!(
                        f,
                        "  setup {name:<15} {}",
                        yes(accepted, "accepted", "not accepted")
                    )?;
                }
            }
            Err(err) => writeln!(f, "io_uring              {}", err.summary())?,
        }
        writeln!(f)?;
        if let Some((soft, hard)) = self.fds {
            writeln!(
                f,
                "open files            soft {}, hard {}",
                limit(soft),
                limit(hard)
            )?;
        }
        if let Some((soft, hard)) = self.memlock {
            // Rings count against it only before 5.12; shown for those kernels.
            writeln!(
                f,
                "locked memory         soft {}, hard {} (bytes)",
                limit(soft),
                limit(hard)
            )?;
        }
        writeln!(
            f,
            "CPUs allowed          {} ({})",
            self.cpus.len(),
            cpu_ranges(&self.cpus)
        )?;
        for (name, value) in &self.sysctls {
            writeln!(f, "{name:<30} {}", value.as_deref().unwrap_or("(absent)"))?;
        }
        writeln!(f)?;
        writeln!(f, "ringcast will use")?;
        match &self.uring {
            Ok(support) => {
                let hints = if support.single_issuer && support.defer_taskrun {
                    "with SINGLE_ISSUER + DEFER_TASKRUN"
                } else {
                    "without task-run hints"
                };
                writeln!(
                    f,
                    "  io_uring: one ring per shard ({} entries) {hints}; accept {}",
                    crate::uring::RING_ENTRIES,
                    yes(support.multishot_accept, "multishot", "one at a time")
                )?;
            }
            Err(_) => writeln!(f, "  nothing: ringcast has no backend without io_uring")?,
        }
        match &self.config {
            Ok(config) => {
                writeln!(
                    f,
                    "  shards: {} (one pinned per allowed CPU unless --shards)",
                    config.fixed.shards
                )?;
                writeln!(f, "  listen: {}", config.fixed.listen)?;
                if let Some((soft, _)) = self.fds {
                    let reserved = FDS_PER_SHARD * config.fixed.shards as u64;
                    let fd_connections = soft.saturating_sub(reserved);
                    let connections = fd_connections.min(config.live.max_connections as u64);
                    writeln!(
                        f,
                        "  connections: about {connections} (--max-connections {}, open-files soft limit {})",
                        config.live.max_connections,
                        limit(soft)
                    )?;
                }
            }
            Err(err) => writeln!(f, "  config: {err}")?,
        }
        // Advice: only what would limit a deployment.
        let mut notes = Vec::new();
        if let Some((soft, hard)) = self.fds {
            if soft < hard {
                notes.push(format!(
                    "open files: soft limit {} is below the hard {}; raise it (`ulimit -n \"$(ulimit -Hn)\"`, systemd `LimitNOFILE=`)",
                    limit(soft),
                    limit(hard)
                ));
            }
        }
        if let Some(somaxconn) = self
            .sysctl("net.core.somaxconn")
            .and_then(|v| v.parse::<u64>().ok())
        {
            if somaxconn < LISTEN_BACKLOG {
                notes.push(format!(
                    "net.core.somaxconn = {somaxconn} caps the listen backlog ringcast asks for ({LISTEN_BACKLOG})"
                ));
            }
        }
        if !notes.is_empty() {
            writeln!(f)?;
            for note in notes {
                writeln!(f, "note: {note}")?;
            }
        }
        writeln!(f)?;
        match (self.unavailable(), &self.config) {
            (None, Ok(_)) => writeln!(f, "verdict: ringcast can run here")?,
            (Some(err), _) => writeln!(f, "verdict: ringcast cannot run here: {err}")?,
            (None, Err(_)) => writeln!(f, "verdict: ringcast cannot start with this config")?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uring::probe::REQUIRED_OPS;

    fn report(uring: Result<UringSupport, Unavailable>) -> Report {
        Report {
            facts: Facts {
                release: "6.9.0".into(),
                io_uring_disabled: Some(0),
                io_uring_group: Some(-1),
                seccomp: Some(0),
                memlock_bytes: Some(8 << 20),
                forced: false,
            },
            uring,
            fds: Some((1024, 1_048_576)),
            memlock: Some((8 << 20, 8 << 20)),
            sysctls: vec![
                ("net.core.somaxconn", Some("128".into())),
                ("fs.nr_open", None),
            ],
            cpus: vec![0, 1, 2, 5],
            config: Config::load(crate::config::Flags {
                shards: Some(2),
                ..Default::default()
            })
            .map_err(|e| e.to_string()),
        }
    }

    fn support(missing: &[&str]) -> UringSupport {
        UringSupport {
            ops: REQUIRED_OPS
                .iter()
                .map(|op| (*op, !missing.contains(&op.name)))
                .collect(),
            multishot_accept: true,
            single_issuer: true,
            defer_taskrun: true,
            coop_taskrun: false,
            provided_buffers: true,
        }
    }

    #[test]
    fn a_capable_machine_lists_every_op_and_can_run() {
        let report = report(Ok(support(&[])));
        let text = report.to_string();
        assert!(report.can_run());
        for op in REQUIRED_OPS {
            assert!(
                text.contains(&format!("  op {:<18} supported", op.name)),
                "{text}"
            );
        }
        for want in [
            "io_uring              available\n",
            "setup COOP_TASKRUN    not accepted",
            "CPUs allowed          4 (0-2,5)",
            "fs.nr_open                     (absent)",
            "with SINGLE_ISSUER + DEFER_TASKRUN; accept multishot",
            "shards: 2",
            "note: net.core.somaxconn = 128",
            "note: open files: soft limit 1024",
            "verdict: ringcast can run here",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    #[test]
    fn missing_ops_or_no_io_uring_cannot_run() {
        let report_missing = report(Ok(support(&["close"])));
        assert!(!report_missing.can_run());
        let text = report_missing.to_string();
        assert!(text.contains("available, but missing: close"), "{text}");
        assert!(text.contains("  op close              MISSING"), "{text}");
        assert!(text.contains("verdict: ringcast cannot run here: this kernel (6.9.0) lacks"));

        let blocked = report(Err(Unavailable::Setup {
            errno: libc::EPERM,
            facts: Facts {
                io_uring_disabled: Some(0),
                ..Facts::default()
            },
        }));
        assert!(!blocked.can_run());
        let text = blocked.to_string();
        assert!(
            text.contains("io_uring              blocked (seccomp"),
            "{text}"
        );
        assert!(text.contains("nothing: ringcast has no backend without io_uring"));
        assert!(text.contains("verdict: ringcast cannot run here: io_uring is blocked"));
    }

    #[test]
    fn cpu_ranges_table() {
        let cases: &[(&[usize], &str)] = &[
            (&[], ""),
            (&[0], "0"),
            (&[0, 1, 2, 3], "0-3"),
            (&[3, 0, 1, 7, 8, 10], "0-1,3,7-8,10"),
        ];
        for (cpus, want) in cases {
            assert_eq!(cpu_ranges(cpus), *want);
        }
    }
}
