//! A process's CPU time from /proc, for the benchmarks (which measure CPU, not wall time).

use anyhow::Context as _;

/// Clock ticks per second (`getconf CLK_TCK`): the unit of /proc's CPU times.
pub fn clock_ticks() -> anyhow::Result<f64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    String::from_utf8(out.stdout)?
        .trim()
        .parse()
        .context("getconf CLK_TCK")
}

/// CPU seconds (user + system) process `pid` has spent so far, given [`clock_ticks`].
pub fn cpu_seconds(pid: u32, tick: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).context("utime")?.parse()?;
    let stime: f64 = f.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / tick)
}
