//! CPU time and memory of processes, read from /proc (Linux), and the
//! bench's own CPU time: the server's cost per delivery is the figure that
//! holds still on a shared machine.

/// CPU seconds (user + system) and resident memory of a set of processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// Sums the usage of `pids` (missing processes count as zero).
pub fn usage(pids: &[u32]) -> Usage {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = Usage::default();
    for pid in pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            total.cpu_seconds += cpu_ticks(&stat) as f64 / ticks;
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            total.rss_bytes += rss_kib(&status) * 1024;
        }
    }
    total
}

/// This process's usage.
pub fn own() -> Usage {
    usage(&[std::process::id()])
}

/// utime + stime from a /proc/PID/stat line (fields 14 and 15; the
/// command name in parentheses may hold spaces).
fn cpu_ticks(stat: &str) -> u64 {
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after ")": state is field 3, so utime (14) is index 11, stime index 12.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn rss_kib(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_ticks(stat), 300);
        assert_eq!(rss_kib("Name:\tx\nVmRSS:\t  1234 kB\n"), 1234);
        let me = own();
        assert!(me.rss_bytes > 0);
    }
}
