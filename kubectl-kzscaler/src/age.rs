//! Ages and durations the way `kubectl get` prints them (`5s`, `3m12s`, `7h`, `2d`).

/// An age like kubectl's `HumanDuration`: `45s`, `3m12s`, `47m`, `5h30m`, `30h`, `3d4h`, `40d`,
/// `2y30d`. Negative ages (clock skew) print as `0s`.
pub fn human(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        two(m, "m", s % 60, "s")
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        two(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        two(d, "d", h % 24, "h")
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        two(d / 365, "y", d % 365, "d")
    } else {
        format!("{}y", d / 365)
    }
}

/// `3m12s`, or `3m` when the smaller unit is 0.
fn two(n: i64, unit: &str, rest: i64, rest_unit: &str) -> String {
    if rest == 0 {
        format!("{n}{unit}")
    } else {
        format!("{n}{unit}{rest}{rest_unit}")
    }
}

/// A short duration in milliseconds: `66ms`, `1.2s`, `2m5s`.
pub fn millis(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        human(i64::try_from(ms / 1000).unwrap_or(i64::MAX))
    }
}

/// [`millis`] of a measured duration.
pub fn duration(d: std::time::Duration) -> String {
    millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl_get() {
        assert_eq!(human(-3), "0s");
        assert_eq!(human(45), "45s");
        assert_eq!(human(119), "119s");
        assert_eq!(human(192), "3m12s");
        assert_eq!(human(300), "5m");
        assert_eq!(human(47 * 60), "47m");
        assert_eq!(human(5 * 3600 + 30 * 60), "5h30m");
        assert_eq!(human(30 * 3600), "30h");
        assert_eq!(human(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(human(40 * 86_400), "40d");
        assert_eq!(human(2 * 365 * 86_400 + 30 * 86_400), "2y30d");
        assert_eq!(human(9 * 365 * 86_400), "9y");
    }

    #[test]
    fn wake_durations_are_short_and_exact_enough() {
        assert_eq!(millis(66), "66ms");
        assert_eq!(millis(1_234), "1.2s");
        assert_eq!(millis(125_000), "2m5s");
    }
}
