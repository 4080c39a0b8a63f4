//! Process metrics read from `/proc/self` at scrape time: the Rust counterpart of the
//! Go runtime metrics the seed project showed (CPU, memory, threads, fds), plus tokio's
//! own counts (alive tasks are what goroutines were).
//!
//! Rendered directly as Prometheus text, because CPU seconds is a float counter,
//! which the `metrics` facade cannot set.

use std::fmt::Write as _;

/// Linux reports CPU time in clock ticks of `USER_HZ`, which is 100 on every
/// architecture Linux exports to user space with a fixed value.
const USER_HZ: f64 = 100.0;

/// One reading of the process's resource use. Fields are `None` where `/proc` is
/// missing (not Linux) or unreadable.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub threads: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads `/proc/self`.
    pub fn read() -> Self {
        let mut stats = Self::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            let boot_time =
                std::fs::read_to_string("/proc/stat").ok().and_then(|text| parse_boot_time(&text));
            stats.apply_stat(&stat, boot_time);
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            stats.resident_memory_bytes = status_kib(&status, "VmRSS:").map(|kib| kib * 1024);
            stats.virtual_memory_bytes = status_kib(&status, "VmSize:").map(|kib| kib * 1024);
        }
        stats.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|dir| dir.count() as u64);
        stats.max_fds =
            std::fs::read_to_string("/proc/self/limits").ok().and_then(|text| parse_max_open_files(&text));
        stats
    }

    /// Fills CPU, threads and start time from the text of `/proc/<pid>/stat`.
    fn apply_stat(&mut self, stat: &str, boot_time: Option<u64>) {
        // The command name (field 2) may contain spaces and parentheses; fields after
        // the last ')' are plain. Field 3 (state) is the first after it.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|value| value.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            self.cpu_seconds = Some((user + system) as f64 / USER_HZ);
        }
        self.threads = field(20);
        if let (Some(start_ticks), Some(boot)) = (field(22), boot_time) {
            self.start_time_seconds = Some(boot as f64 + start_ticks as f64 / USER_HZ);
        }
    }

    /// Appends these figures, and the tokio runtime's, as Prometheus text.
    pub fn render(&self, service: &str, out: &mut String) {
        let labels = format!("{{service=\"{service}\"}}");
        let mut put = |name: &str, kind: &str, help: &str, value: Option<String>| {
            if let Some(value) = value {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{labels} {value}");
            }
        };
        put(
            "mm_process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent by the process, in seconds.",
            self.cpu_seconds.map(|v| v.to_string()),
        );
        put(
            "mm_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process, in bytes.",
            self.resident_memory_bytes.map(|v| v.to_string()),
        );
        put(
            "mm_process_virtual_memory_bytes",
            "gauge",
            "Virtual memory of the process, in bytes.",
            self.virtual_memory_bytes.map(|v| v.to_string()),
        );
        put("mm_process_threads", "gauge", "OS threads of the process.", self.threads.map(|v| v.to_string()));
        put(
            "mm_process_open_fds",
            "gauge",
            "Open file descriptors of the process.",
            self.open_fds.map(|v| v.to_string()),
        );
        put(
            "mm_process_max_fds",
            "gauge",
            "Limit on open file descriptors of the process.",
            self.max_fds.map(|v| v.to_string()),
        );
        put(
            "mm_process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            self.start_time_seconds.map(|v| format!("{v:.2}")),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let metrics = runtime.metrics();
            put(
                "mm_runtime_workers",
                "gauge",
                "Worker threads of the tokio runtime.",
                Some(metrics.num_workers().to_string()),
            );
            put(
                "mm_runtime_alive_tasks",
                "gauge",
                "Tokio tasks alive (spawned and not yet finished).",
                Some(metrics.num_alive_tasks().to_string()),
            );
            put(
                "mm_runtime_global_queue_depth",
                "gauge",
                "Tasks waiting in the tokio runtime's global queue.",
                Some(metrics.global_queue_depth().to_string()),
            );
        }
    }
}

fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|line| line.strip_prefix("btime ")).and_then(|value| value.trim().parse().ok())
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

fn parse_max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_even_with_odd_command_names() {
        // pid (comm) state ppid ... ; utime=field 14, stime=15, threads=20, starttime=22.
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 12345 67 18446744073709551615";
        let mut stats = ProcessStats::default();
        stats.apply_stat(stat, Some(1_700_000_000));
        assert_eq!(stats.cpu_seconds, Some(3.0));
        assert_eq!(stats.threads, Some(7));
        assert_eq!(stats.start_time_seconds, Some(1_700_000_010.0));
    }

    #[test]
    fn parses_status_and_limits() {
        let status = "Name:\tx\nVmSize:\t  2048 kB\nVmRSS:\t   512 kB\nThreads:\t3\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(512));
        assert_eq!(status_kib(status, "VmSize:"), Some(2048));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 20000                files\n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        assert_eq!(parse_boot_time("cpu 1 2 3\nbtime 1700000000\n"), Some(1_700_000_000));
    }

    #[test]
    fn reads_this_process() {
        let stats = ProcessStats::read();
        assert!(stats.resident_memory_bytes.unwrap_or(0) > 0);
        assert!(stats.threads.unwrap_or(0) >= 1);
        assert!(stats.open_fds.unwrap_or(0) >= 3, "stdin, stdout, stderr at least");
        let mut text = String::new();
        stats.render("test", &mut text);
        assert!(text.contains("# TYPE mm_process_cpu_seconds_total counter"), "{text}");
        assert!(text.contains("mm_process_resident_memory_bytes{service=\"test\"} "), "{text}");
    }
}
