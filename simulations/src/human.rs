//! Durations for people: every time the simulator prints or draws goes through [`duration`].

const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// A duration in milliseconds as a person reads it: the two largest units, rounded down
/// ("6 d 10 h", "2 min 3 s", "1 h"), seconds with one decimal below ten seconds ("1.5 s"), and
/// milliseconds below one second ("450 ms").
pub fn duration(ms: u64) -> String {
    if ms < SECOND_MS {
        return format!("{ms} ms");
    }
    if ms < 10 * SECOND_MS {
        let tenths = ms / 100;
        return match tenths % 10 {
            0 => format!("{} s", tenths / 10),
            t => format!("{}.{t} s", tenths / 10),
        };
    }
    let units = [(DAY_MS, "d"), (HOUR_MS, "h"), (MINUTE_MS, "min"), (SECOND_MS, "s")];
    let Some(first) = units.iter().position(|(size, _)| ms >= *size) else {
        return format!("{ms} ms");
    };
    let (size, name) = units[first];
    let mut text = format!("{} {name}", ms / size);
    if let Some((next, next_name)) = units.get(first + 1) {
        let rest = ms % size / next;
        if rest > 0 {
            text += &format!(" {rest} {next_name}");
        }
    }
    text
}

/// An optional duration, or `none` in words.
pub fn duration_or(ms: Option<u64>, none: &str) -> String {
    ms.map_or_else(|| none.to_string(), duration)
}

#[cfg(test)]
#[allow(non_snake_case)] // Test names read as specifications: situation__expectation.
mod tests {
    use super::duration;

    #[test]
    fn below_a_second__milliseconds() {
        assert_eq!(duration(0), "0 ms");
        assert_eq!(duration(450), "450 ms");
        assert_eq!(duration(999), "999 ms");
    }

    #[test]
    fn below_ten_seconds__seconds_with_one_decimal_rounded_down() {
        assert_eq!(duration(1_000), "1 s");
        assert_eq!(duration(1_500), "1.5 s");
        assert_eq!(duration(9_999), "9.9 s");
    }

    #[test]
    fn longer__the_two_largest_units_rounded_down() {
        assert_eq!(duration(10_000), "10 s");
        assert_eq!(duration(123_000), "2 min 3 s");
        assert_eq!(duration(120_000), "2 min");
        assert_eq!(duration(3_600_000), "1 h");
        assert_eq!(duration(3_660_000), "1 h 1 min");
        // A latency the summary once printed as `p99 555008828 ms`.
        assert_eq!(duration(555_008_828), "6 d 10 h");
        assert_eq!(duration(7 * 86_400_000 + 59_000), "7 d");
    }

    #[test]
    fn the_largest_duration__still_in_days() {
        assert_eq!(duration(u64::MAX), "213503982334 d 14 h");
    }
}
