//! Small helpers for what the command line prints: times, ages, JSON field access and tables.

use cpis_protocol::time::Timestamp;
use serde_json::Value;

/// The current time as a protocol timestamp.
pub fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(ms)
}

/// A duration in words: `3 s`, `2 min`, `5 h`, `4 days`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..=119 => format!("{s} s"),
        120..=7_199 => format!("{} min", s / 60),
        7_200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// How long ago `then` was: `just now`, `40 s ago`, `2 min ago`, ...
pub fn ago(now: Timestamp, then: Timestamp) -> String {
    let ms = now.since(then);
    if ms < 2_000 { "just now".to_string() } else { format!("{} ago", duration(ms)) }
}

/// A string field of a JSON object, or `""`.
pub fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value.get(field).and_then(Value::as_str).unwrap_or("")
}

/// A number field of a JSON object, or 0.
pub fn number(value: &Value, field: &str) -> u64 {
    value.get(field).and_then(Value::as_u64).unwrap_or(0)
}

/// An array field of a JSON object, or an empty slice.
pub fn items<'a>(value: &'a Value, field: &str) -> &'a [Value] {
    value.get(field).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Lays out rows as columns separated by two spaces, the first row being the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[c].saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Writes to standard output. A reader that went away (`cpis … | head`) ends the command
/// quietly, with exit 0, instead of a panic.
pub fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
    if written.is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_words() {
        let now = Timestamp(10_000_000);
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now, Timestamp(10_000_000 - 40_000)), "40 s ago");
        assert_eq!(ago(now, Timestamp(10_000_000 - 150_000)), "2 min ago");
        assert_eq!(duration(3 * 86_400_000), "3 days");
        assert_eq!(duration(250), "250 ms");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&[vec!["A".into(), "BB".into(), "C".into()], vec!["long".into(), "x".into(), "y".into()]]);
        assert_eq!(t, "A     BB  C\nlong  x   y\n");
    }
}
