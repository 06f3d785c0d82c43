//! RFC 3339 timestamps (UTC, whole seconds) without a calendar crate.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

pub fn now() -> String {
    rfc3339(SystemTime::now())
}

/// Now, in seconds since the epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (fractions and offsets are not used by
/// this server's own timestamps).
pub fn parse(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let days = days_from_civil(n(0..4)?, n(5..7)? as u32, n(8..10)? as u32);
    let secs = days * 86_400 + n(11..13)? * 3600 + n(14..16)? * 60 + n(17..19)?;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// RFC 3339 in UTC from Unix seconds and nanoseconds: whole seconds (Go's
/// `metav1.Time`) or six fraction digits (`metav1.MicroTime`).
pub fn format_unix(secs: i64, nanos: i32, micros: bool) -> String {
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    let fraction = if micros {
        format!(".{:06}", nanos.max(0) / 1000)
    } else {
        String::new()
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{fraction}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Parses RFC 3339 with an optional fraction and a `Z` or `±HH:MM` offset
/// into Unix seconds and nanoseconds.
pub fn parse_unix(s: &str) -> Option<(i64, i32)> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (month, day) = (n(5..7)?, n(8..10)?);
    let (h, mi, sec) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0i32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let scaled = format!("{:0<9}", &frac[..digits.min(9)]);
        nanos = scaled.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    let days = days_from_civil(n(0..4)?, month as u32, day as u32);
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset, nanos))
}

/// `kubectl`-style age: `45s`, `12m`, `3h`, `5d`.
pub fn age(since: SystemTime) -> String {
    let s = SystemTime::now()
        .duration_since(since)
        .unwrap_or_default()
        .as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_305_600 + 3_723); // 2026-11-22T01:02:03Z
        assert_eq!(rfc3339(t), "2026-11-22T01:02:03Z");
        assert_eq!(parse("2026-11-22T01:02:03Z"), Some(t));
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse_unix("2026-11-22T01:02:03Z"),
            Some((1_795_305_600 + 3_723, 0))
        );
        assert_eq!(
            parse_unix("2026-11-22T02:02:03.5+01:00"),
            Some((1_795_305_600 + 3_723, 500_000_000))
        );
        assert_eq!(
            format_unix(1_795_305_600 + 3_723, 500_000_000, true),
            "2026-11-22T01:02:03.500000Z"
        );
        assert_eq!(
            format_unix(1_795_305_600 + 3_723, 500_000_000, false),
            "2026-11-22T01:02:03Z"
        );
        assert_eq!(parse_unix("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_unix("yesterday"), None);
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
