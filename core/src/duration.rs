//! Go-style durations (`300ms`, `10m`, `1h30m`, `1.5s`), as in `kzscaler.io/idle-timeout`.

use std::time::Duration;

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a duration: {reason} (expected e.g. \"30s\", \"10m\", \"1h30m\")")]
pub struct DurationError {
    /// The input as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses a Go-style duration: one or more `<number><unit>` with units `ns`, `us` (`µs`), `ms`,
/// `s`, `m`, `h`; a bare `0` is allowed. Negative durations are refused.
pub fn parse_duration(value: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        value: value.to_owned(),
        reason,
    };
    let s = value.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    if s.starts_with('-') {
        return Err(err("it is negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(err("a number is missing before a unit"));
        }
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(err("a unit is missing (ns, us, ms, s, m, h)")),
            _ => return Err(err("unknown unit (expected ns, us, ms, s, m or h)")),
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(err("a number is malformed"));
        }
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| err("a number is too large"))?
        };
        let mut part = int
            .checked_mul(nanos_per_unit)
            .ok_or_else(|| err("it is too large"))?;
        // Fractions: add digit by digit, as Go does, so "1.5s" is exact.
        let mut scale = nanos_per_unit;
        for d in frac.bytes() {
            scale /= 10;
            part += u128::from(d - b'0') * scale;
        }
        total = total
            .checked_add(part)
            .ok_or_else(|| err("it is too large"))?;
        rest = next;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err("it is too large"))?;
    // The remainder is below 1e9, so it fits in u32.
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Formats a duration the short way Go does for whole units: `90s` → `1m30s`, `0` → `0s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if secs > 0 || out.is_empty() {
        out.push_str(&format!("{secs}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let cases = [
            ("0", Duration::ZERO),
            ("10m", Duration::from_secs(600)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
            ("300ms", Duration::from_millis(300)),
            ("2us", Duration::from_micros(2)),
            ("2µs", Duration::from_micros(2)),
            ("7ns", Duration::from_nanos(7)),
            (".5m", Duration::from_secs(30)),
            ("1h0m5s", Duration::from_secs(3605)),
            (" 45s ", Duration::from_secs(45)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn refuses_bad_durations_with_the_reason() {
        let cases = [
            ("", "empty"),
            ("10", "unit is missing"),
            ("-5s", "negative"),
            ("5d", "unknown unit"),
            ("ms", "number is missing"),
            ("1.2.3s", "malformed"),
            ("99999999999999999999999h", "too large"),
        ];
        for (input, reason) in cases {
            let err = parse_duration(input).unwrap_err();
            assert!(err.reason.contains(reason), "{input}: {err}");
            assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        for s in ["10m", "1h30m", "45s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
