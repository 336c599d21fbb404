//! What the bench reads from /proc: peak resident set size (VmHWM) and
//! who is whose child, so the daemons under sj-proxy and the sj-c2s
//! processes under tcpserver can be found without pgrep.

use std::fs;

/// Memory of one process, KiB: the peak RSS, and what the RSS is now made
/// of (anonymous = private to it; file = mapped files, mostly libc and the
/// program's text, shared through the page cache with every process that
/// maps them).
#[derive(Debug, Clone)]
pub struct Mem {
    pub name: String,
    pub hwm: u64,
    pub anon: u64,
    pub file: u64,
    /// Proportional set size now: each shared page divided among the
    /// processes that map it, so the PSS of several processes adds up to
    /// what they cost the machine together (0 where smaps_rollup is missing).
    pub pss: u64,
    /// Pages mapped by this process alone (Private_Clean + Private_Dirty).
    pub private: u64,
}

fn status_field(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn mem(pid: i32, name: &str) -> Option<Mem> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let r = |field| status_field(&rollup, field).unwrap_or(0);
    Some(Mem {
        name: name.to_string(),
        hwm: status_field(&s, "VmHWM:")?,
        anon: status_field(&s, "RssAnon:").unwrap_or(0),
        file: status_field(&s, "RssFile:").unwrap_or(0),
        pss: r("Pss:"),
        private: r("Private_Clean:") + r("Private_Dirty:"),
    })
}

pub fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// User and system CPU time of a process so far, in clock ticks.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "pid (comm)": state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
}

/// The process state letter (R, S, D, Z ...) from /proc/PID/stat.
pub fn state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// (pid, command name) of the live children of `parent`.
pub fn children(parent: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for ent in rd.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(parent) {
            out.push((pid, comm));
        }
    }
    out.sort();
    out
}

/// Memory of each child of `parent`.
pub fn children_mem(parent: i32) -> Vec<Mem> {
    children(parent)
        .into_iter()
        .filter_map(|(pid, name)| mem(pid, &name))
        .collect()
}
