//! What the benchmark reads from /proc: CPU time and memory of the processes
//! under test, the machine's total CPU use (to show how busy the machine was
//! with other work), and the machine description for the report.
//!
//! Linux only, like the agent. No libc calls (the workspace forbids
//! `unsafe`): the clock tick comes from `getconf CLK_TCK`.

use std::process::Command;

use anyhow::{Context as _, bail};
use serde::Serialize;

/// Fields of /proc/PID/stat that the benchmark uses.
pub struct Stat {
    pub state: char,
    pub ppid: u32,
    /// utime + stime, all threads, in clock ticks.
    pub cpu_ticks: u64,
}

pub fn stat(pid: u32) -> anyhow::Result<Stat> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // `comm` is in parentheses and may contain spaces or ')': split at the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("/proc/{pid}/stat: no ')'"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': [0] state (field 3), [1] ppid (4), ... [11] utime (14), [12] stime (15).
    if f.len() < 13 {
        bail!("/proc/{pid}/stat: too few fields");
    }
    let num = |i: usize| -> anyhow::Result<u64> {
        f[i].parse()
            .with_context(|| format!("/proc/{pid}/stat field {}", i + 3))
    };
    Ok(Stat {
        state: f[0].chars().next().unwrap_or('?'),
        ppid: u32::try_from(num(1)?)?,
        cpu_ticks: num(11)? + num(12)?,
    })
}

/// A `kB` line of /proc/PID/status (`VmHWM`, `VmRSS`).
pub fn status_kb(pid: u32, key: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    kb_line(&text, key).with_context(|| format!("/proc/{pid}/status has no {key}"))
}

/// Proportional set size: resident memory with pages shared between
/// processes (the binary's text, libc) divided among them. Summing RSS over
/// N copies of one program counts those pages N times; summing PSS does not.
pub fn pss_kb(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    kb_line(&text, "Pss").with_context(|| format!("/proc/{pid}/smaps_rollup has no Pss"))
}

fn kb_line(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Direct children of `pid` (nginx's workers), by scanning /proc.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| stat(p).is_ok_and(|s| s.ppid == pid))
        .collect()
}

/// Seconds per clock tick of /proc/PID/stat.
pub fn tick_seconds() -> anyhow::Result<f64> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    let hz: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK printed no number")?;
    anyhow::ensure!(hz > 0.0, "CLK_TCK is {hz}");
    Ok(1.0 / hz)
}

/// The machine's CPU time from the first line of /proc/stat, in ticks.
#[derive(Debug, Clone, Copy)]
pub struct SystemCpu {
    /// Everything but idle and iowait.
    pub busy: u64,
    /// Time the hypervisor gave to other guests.
    pub steal: u64,
}

pub fn system_cpu() -> anyhow::Result<SystemCpu> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().next().context("/proc/stat is empty")?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user.
    if v.len() < 8 {
        bail!("/proc/stat: short cpu line");
    }
    let total: u64 = v[..8].iter().sum();
    Ok(SystemCpu {
        busy: total - v[3] - v[4],
        steal: v[7],
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub kernel: String,
    pub mem_total_gib: f64,
    pub os: String,
    pub loadavg_before: String,
}

pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
        .unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        model,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        mem_total_gib: kb_line(&read("/proc/meminfo"), "MemTotal").map_or(0.0, |kb| kb as f64 / 1024.0 / 1024.0),
        os,
        loadavg_before: loadavg(),
    }
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
