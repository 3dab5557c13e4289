//! Human durations for the command line: `30s`, `500ms`, `2m`, `1h`, `1m30s`, `1.5s`; a bare
//! number is seconds.

use std::time::Duration;

/// Parses a duration such as `30s`, `250ms`, `2m`, `1h`, `1m30s` or `1.5s` (bare number: seconds).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return from_secs(secs, raw);
    }
    let mut total = 0.0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {raw:?}: expected a number"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration {raw:?}: bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" | "" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "invalid duration {raw:?}: unknown unit {other:?} (use ms, s, m or h)"
                ))
            }
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    from_secs(total, raw)
}

fn from_secs(secs: f64, raw: &str) -> Result<Duration, String> {
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("invalid duration {raw:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `MIN..MAX` (two durations, MIN <= MAX) or a single duration (both bounds).
pub fn parse_range(s: &str) -> Result<(Duration, Duration), String> {
    let (min, max) = match s.split_once("..") {
        Some((a, b)) => (parse_duration(a)?, parse_duration(b)?),
        None => {
            let d = parse_duration(s)?;
            (d, d)
        }
    };
    if min > max {
        return Err(format!("{s:?}: the first bound is above the second"));
    }
    Ok((min, max))
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_range};
    use std::time::Duration;

    #[test]
    fn units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration(" 7 ").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "s", "10x", "-1s", "1..2s", "ms5", "inf"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ranges() {
        let s = Duration::from_secs;
        assert_eq!(parse_range("1s..3s"), Ok((s(1), s(3))));
        assert_eq!(parse_range("2"), Ok((s(2), s(2))));
        assert_eq!(
            parse_range("10ms..1.5s"),
            Ok((Duration::from_millis(10), Duration::from_millis(1500)))
        );
        assert!(parse_range("3s..1s").is_err());
        assert!(parse_range("1s..x").is_err());
    }
}
