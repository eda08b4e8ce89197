//! Accept pacing: when a listener's accept fails because the process is out of a resource
//! that only comes back as connections close (descriptors, socket buffers, memory), the
//! shard stops accepting on it until a connection of the shard closes or a back-off passes,
//! instead of re-arming at once and spinning on the same error. Errors are logged at most
//! once per [`LOG_INTERVAL`] per listener, with a count. Sans-IO: the shard feeds in
//! completions and times, and arms the accept when [`AcceptPacer::poll_arm`] says so.

use std::time::{Duration, Instant};

/// First pause after an accept failed for lack of resources.
pub const PAUSE_MIN: Duration = Duration::from_millis(10);
/// Longest pause: the pause doubles on each failure in a row up to this, so a shard that
/// stays out of descriptors tries about once a second (and at once when one of its own
/// connections closes).
pub const PAUSE_MAX: Duration = Duration::from_secs(1);
/// At most one log line per listener in this interval; the line counts the errors since
/// the last one.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Why an accept failed, as counted in `ringcast_accept_errors_total{errno}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum AcceptErrno {
    /// `EMFILE`: the process is at `RLIMIT_NOFILE`.
    Emfile,
    /// `ENFILE`: the system is at `fs.file-max`.
    Enfile,
    /// `ENOBUFS`: no socket buffer memory.
    Enobufs,
    /// `ENOMEM`: no kernel memory.
    Enomem,
    /// Anything else (`ECONNABORTED`, `EPERM` from a firewall, …): the accept is re-armed
    /// at once.
    Other,
}

impl AcceptErrno {
    /// Every reason, in label order.
    pub const ALL: [AcceptErrno; 5] = [
        AcceptErrno::Emfile,
        AcceptErrno::Enfile,
        AcceptErrno::Enobufs,
        AcceptErrno::Enomem,
        AcceptErrno::Other,
    ];

    /// The reason of a positive `errno`.
    pub fn of(errno: i32) -> Self {
        match errno {
            libc::EMFILE => AcceptErrno::Emfile,
            libc::ENFILE => AcceptErrno::Enfile,
            libc::ENOBUFS => AcceptErrno::Enobufs,
            libc::ENOMEM => AcceptErrno::Enomem,
            _ => AcceptErrno::Other,
        }
    }

    /// The `errno` label value.
    pub fn label(self) -> &'static str {
        match self {
            AcceptErrno::Emfile => "EMFILE",
            AcceptErrno::Enfile => "ENFILE",
            AcceptErrno::Enobufs => "ENOBUFS",
            AcceptErrno::Enomem => "ENOMEM",
            AcceptErrno::Other => "other",
        }
    }

    /// Whether accepting again at once would fail the same way: the resource comes back
    /// only as connections close.
    pub fn is_exhaustion(self) -> bool {
        self != AcceptErrno::Other
    }
}

/// Errors to log: how many since the last line, and the last one's errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptTrouble {
    /// Failed accepts since the last line.
    pub errors: u64,
    /// The last failure's errno (positive).
    pub errno: i32,
    /// The pause in force, if accepting is paused.
    pub pause: Option<Duration>,
}

/// One listener's accept state on a shard.
#[derive(Debug)]
pub struct AcceptPacer {
    /// An accept is in the ring (its last completion, `more` clear, not yet seen).
    armed: bool,
    /// Accepting is paused until then.
    paused_until: Option<Instant>,
    /// The pause the next failure starts.
    pause_next: Duration,
    /// The pause in force (for the log line).
    pause_current: Duration,
    errors_unlogged: u64,
    errno_last: i32,
    logged_at: Option<Instant>,
}

impl Default for AcceptPacer {
    fn default() -> Self {
        Self {
            armed: false,
            paused_until: None,
            pause_next: PAUSE_MIN,
            pause_current: Duration::ZERO,
            errors_unlogged: 0,
            errno_last: 0,
            logged_at: None,
        }
    }
}

impl AcceptPacer {
    /// The driver armed an accept.
    pub fn handle_armed(&mut self) {
        self.armed = true;
    }

    /// The accept's last completion was reaped (`more` clear): nothing is in the ring.
    pub fn handle_ended(&mut self) {
        self.armed = false;
    }

    /// A connection was accepted: the resource is back, the next pause starts short.
    pub fn handle_accepted(&mut self) {
        self.pause_next = PAUSE_MIN;
    }

    /// An accept failed with `errno` (positive) at `now`. Returns the pause it started
    /// when the failure was for lack of resources.
    pub fn handle_error(&mut self, now: Instant, errno: i32) -> Option<Duration> {
        self.errors_unlogged += 1;
        self.errno_last = errno;
        if !AcceptErrno::of(errno).is_exhaustion() {
            return None;
        }
        let pause = self.pause_next;
        self.paused_until = Some(now + pause);
        self.pause_current = pause;
        self.pause_next = (pause * 2).min(PAUSE_MAX);
        Some(pause)
    }

    /// A connection of the shard closed: a descriptor is free, so accepting may resume at
    /// once.
    pub fn handle_descriptor_freed(&mut self) {
        self.paused_until = None;
    }

    /// Whether accepting is paused.
    pub fn paused(&self) -> bool {
        self.paused_until.is_some()
    }

    /// Whether an accept is in the ring.
    pub fn armed(&self) -> bool {
        self.armed
    }

    /// Whether the driver should arm an accept now (none in the ring, no pause in force).
    pub fn poll_arm(&mut self, now: Instant) -> bool {
        if self.armed {
            return false;
        }
        if let Some(until) = self.paused_until {
            if now < until {
                return false;
            }
            self.paused_until = None;
        }
        true
    }

    /// When the pause ends, if accepting is paused.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.armed {
            None
        } else {
            self.paused_until
        }
    }

    /// Errors to log now: at most one line per [`LOG_INTERVAL`], counting every error
    /// since the last line.
    pub fn poll_log(&mut self, now: Instant) -> Option<AcceptTrouble> {
        if self.errors_unlogged == 0
            || self
                .logged_at
                .is_some_and(|at| now.saturating_duration_since(at) < LOG_INTERVAL)
        {
            return None;
        }
        self.logged_at = Some(now);
        Some(AcceptTrouble {
            errors: std::mem::take(&mut self.errors_unlogged),
            errno: self.errno_last,
            pause: self.paused().then_some(self.pause_current),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_pauses_with_a_doubling_bounded_back_off() {
        let start = Instant::now();
        let mut pacer = AcceptPacer::default();
        assert!(pacer.poll_arm(start));
        pacer.handle_armed();
        assert!(!pacer.poll_arm(start), "one accept in the ring at a time");
        let mut now = start;
        let mut pauses = Vec::new();
        for _ in 0..10 {
            pacer.handle_ended();
            let pause = pacer.handle_error(now, libc::EMFILE).expect("paused");
            pauses.push(pause.as_millis());
            assert!(!pacer.poll_arm(now));
            assert_eq!(pacer.poll_timeout(), Some(now + pause));
            assert!(!pacer.poll_arm(now + pause - Duration::from_millis(1)));
            now += pause;
            assert!(pacer.poll_arm(now));
            pacer.handle_armed();
        }
        assert_eq!(
            pauses,
            [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000],
            "10 ms doubling to 1 s"
        );
        pacer.handle_accepted();
        pacer.handle_ended();
        assert_eq!(pacer.handle_error(now, libc::ENFILE), Some(PAUSE_MIN));
    }

    #[test]
    fn a_closed_connection_ends_the_pause() {
        let now = Instant::now();
        let mut pacer = AcceptPacer::default();
        assert_eq!(pacer.handle_error(now, libc::ENOBUFS), Some(PAUSE_MIN));
        assert!(pacer.paused());
        pacer.handle_descriptor_freed();
        assert!(pacer.poll_arm(now));
        assert_eq!(pacer.poll_timeout(), None);
    }

    #[test]
    fn other_errors_rearm_at_once() {
        let now = Instant::now();
        let mut pacer = AcceptPacer::default();
        assert_eq!(pacer.handle_error(now, libc::ECONNABORTED), None);
        assert!(pacer.poll_arm(now));
    }

    #[test]
    fn logs_once_per_interval_with_a_count() {
        let start = Instant::now();
        let mut pacer = AcceptPacer::default();
        assert_eq!(pacer.poll_log(start), None);
        for _ in 0..1000 {
            pacer.handle_error(start, libc::EMFILE);
        }
        let first = pacer.poll_log(start).expect("a line");
        assert_eq!((first.errors, first.errno), (1000, libc::EMFILE));
        pacer.handle_error(start, libc::EMFILE);
        assert_eq!(pacer.poll_log(start + LOG_INTERVAL / 2), None);
        let second = pacer.poll_log(start + LOG_INTERVAL).expect("next interval");
        assert_eq!(second.errors, 1);
        assert_eq!(
            pacer.poll_log(start + LOG_INTERVAL * 3),
            None,
            "nothing new"
        );
    }

    #[test]
    fn errno_labels() {
        for (errno, label) in [
            (libc::EMFILE, "EMFILE"),
            (libc::ENFILE, "ENFILE"),
            (libc::ENOBUFS, "ENOBUFS"),
            (libc::ENOMEM, "ENOMEM"),
            (libc::ECONNABORTED, "other"),
        ] {
            assert_eq!(AcceptErrno::of(errno).label(), label);
            assert_eq!(AcceptErrno::of(errno).is_exhaustion(), label != "other");
        }
        for (index, reason) in AcceptErrno::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index);
        }
    }
}
