//! CPU time used by this process (getrusage), to report ringload's own cost.

use std::time::Duration;

/// User plus system CPU time consumed by the whole process so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: `usage` is a plain C struct that getrusage fully initialises on success; on
    // failure we return zero and never read it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a live rusage; RUSAGE_SELF is a valid `who`.
    let result = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if result != 0 {
        return Duration::ZERO;
    }
    let timeval = |tv: libc::timeval| {
        Duration::from_secs(tv.tv_sec.max(0) as u64)
            + Duration::from_micros(tv.tv_usec.max(0) as u64)
    };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    #[test]
    fn grows_with_work() {
        let before = super::process_cpu_time();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(super::process_cpu_time() > before);
    }
}
