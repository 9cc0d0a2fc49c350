//! A process's peak resident set, for the measuring examples.

/// This process's peak resident set, from `/proc/self/status` (`n/a`
/// where there is none).
pub fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or("n/a".into(), |kib| {
            format!("{:.1} MiB", kib as f64 / 1024.0)
        })
}
