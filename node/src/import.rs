//! Bulk import of plans from a CSV file exported from a case-management system (format in
//! docs/api.md): the file is parsed here, off the event loop; the rows that parse go to the
//! authority as one `ImportPlans` command. Every row is answered: applied, unchanged, or refused
//! with its reason; refused rows change nothing.

use cpis_protocol::authority::RowOutcome;
use cpis_protocol::ids::{NhsNumber, PlanRef};
use cpis_protocol::records::{Plan, PlanType};
use cpis_protocol::time::Date;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Most data rows in one file.
pub const IMPORT_ROWS_MAX: usize = 200_000;

/// One data row: its line number (the header is row 1) and the plan or why it was refused.
pub struct ImportRow {
    pub row: usize,
    pub reference: String,
    pub plan: Result<Plan, String>,
}

/// The per-row report of an import, as the API answers it (docs/api.md). Typed rather than JSON
/// values: a file of 200,000 rows is a report of a few megabytes, where a tree of values would
/// take hundreds, and import jobs keep their reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    pub applied: usize,
    pub unchanged: usize,
    pub refused: usize,
    /// Present (true) for a dry run, which stored nothing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    pub rows: Vec<RowReport>,
}

/// One row's result: `applied`, `unchanged` or `refused` (with its reason).
#[derive(Clone, Debug, Serialize)]
pub struct RowReport {
    pub row: usize,
    pub reference: String,
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ImportReport {
    /// The report of `rows`: those refused while parsing, and the node's outcome for the others.
    pub fn new(rows: Vec<ImportRow>, outcomes: Vec<(usize, RowOutcome)>) -> ImportReport {
        let outcomes: BTreeMap<usize, RowOutcome> = outcomes.into_iter().collect();
        let mut report = ImportReport { rows: Vec::with_capacity(rows.len()), ..ImportReport::default() };
        for ImportRow { row, reference, plan } in rows {
            let (result, reason) = match plan {
                Err(reason) => ("refused", Some(reason)),
                Ok(_) => match outcomes.get(&row) {
                    Some(RowOutcome::Applied) => ("applied", None),
                    Some(RowOutcome::Unchanged) => ("unchanged", None),
                    Some(RowOutcome::Refused(e)) => ("refused", Some(e.to_string())),
                    None => ("refused", Some("the node gave no outcome for this row".into())),
                },
            };
            match result {
                "applied" => report.applied += 1,
                "unchanged" => report.unchanged += 1,
                _ => report.refused += 1,
            }
            report.rows.push(RowReport { row, reference, result, reason });
        }
        report
    }
}

/// Columns by name.
struct Columns {
    reference: usize,
    nhs: usize,
    plan_type: usize,
    start: usize,
    end: Option<usize>,
    due: Option<usize>,
    withdrawn: Option<usize>,
}

/// Every column the format has, in its usual order.
const COLUMNS: [&str; 7] = ["reference", "nhs_number", "plan_type", "start_date", "end_date", "due_date", "withdrawn"];

/// Checks that every column of the header is one of the format's, once: a misspelt column
/// (`withdrawl`) would otherwise be ignored, and a plan meant to be withdrawn stored open.
fn check_header(header: &csv::StringRecord) -> Result<(), String> {
    let known = COLUMNS.map(|c| format!("`{c}`")).join(", ");
    let mut seen = BTreeSet::new();
    for (i, h) in header.iter().enumerate() {
        let name = h.trim().to_ascii_lowercase();
        if !COLUMNS.contains(&name.as_str()) {
            // The first three bytes, where they end a character (a name may be any text).
            let near = name.get(..3).and_then(|start| COLUMNS.iter().find(|c| c.starts_with(start)));
            let hint = near.map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default();
            let shown: String = h.trim().chars().take(40).collect();
            return Err(format!(
                "the header's column {} `{shown}` is not a column of the format{hint}; the columns are {known}",
                i + 1
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(format!("the header names `{name}` twice"));
        }
    }
    Ok(())
}

fn columns(header: &csv::StringRecord) -> Result<Columns, String> {
    let find = |name: &str| header.iter().position(|h| h.trim().eq_ignore_ascii_case(name));
    let need = |name: &str| find(name).ok_or_else(|| format!("the header has no `{name}` column"));
    Ok(Columns {
        reference: need("reference")?,
        nhs: need("nhs_number")?,
        plan_type: need("plan_type")?,
        start: need("start_date")?,
        end: find("end_date"),
        due: find("due_date"),
        withdrawn: find("withdrawn"),
    })
}

/// Most characters of a row's reference kept in its report (a valid one has at most 64).
const REPORTED_REFERENCE_CHARS: usize = 64;

/// Parses the whole file; an error means the file itself is unusable (no header, too big, a
/// quote not closed). A row is numbered by the line of the file it starts on (the header is
/// line 1). A reference that appears more than once is refused at every row that has it: which
/// of them is meant is not for the import to guess.
pub fn parse_csv(bytes: &[u8]) -> Result<Vec<ImportRow>, String> {
    check_record_fields(bytes)?;
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(bytes);
    let header = reader.headers().map_err(|e| format!("cannot read the header row: {e}"))?.clone();
    let cols = columns(&header)?;
    check_header(&header)?;
    let mut rows = Vec::new();
    let mut r = csv::StringRecord::new();
    let at = |reader: &csv::Reader<&[u8]>| {
        usize::try_from(reader.position().byte()).map_or(bytes.len(), |b| b.min(bytes.len()))
    };
    // How far the line ends are counted (to the reader's position), and how many there were.
    let mut counted = at(&reader);
    let mut lines_ended = count_line_ends(bytes, 0, counted);
    loop {
        let read = reader.read_record(&mut r);
        // The line the record is on: line ends up to its own, which the reader is now past.
        let end = at(&reader);
        let own = end - line_end_len(&bytes[counted..end]);
        lines_ended += count_line_ends(bytes, counted, own);
        let row = lines_ended + 1;
        lines_ended += count_line_ends(bytes, own, end);
        counted = end;
        let record = match read {
            Ok(false) => break,
            Ok(true) => Ok(&r),
            Err(e) => Err(e),
        };
        if rows.len() >= IMPORT_ROWS_MAX {
            return Err(format!("more than {IMPORT_ROWS_MAX} rows: split the file"));
        }
        let (reference, plan) = match record {
            Ok(r) => {
                // No field of the format spans lines: one that does began at a quote not closed,
                // and every row after it would run together.
                if r.iter().any(|f| f.contains(['\n', '\r'])) {
                    let opened = r.position().map_or(row, |p| p.line() as usize);
                    return Err(format!(
                        "line {opened}: a quote (\") is not closed, so the rows after it run together: nothing was imported"
                    ));
                }
                let field = r.get(cols.reference).unwrap_or("");
                let mut reference: String = field.chars().take(REPORTED_REFERENCE_CHARS).collect();
                if reference.len() < field.len() {
                    reference.push('…');
                }
                (reference, row_shape(r, header.len()).and_then(|()| parse_row(&cols, r)))
            }
            Err(e) => (String::new(), Err(format!("unreadable row: {e}"))),
        };
        rows.push(ImportRow { row, reference, plan });
    }
    if rows.is_empty() {
        return Err("the file has a header but no rows: is the export empty?".into());
    }
    refuse_repeated_references(&mut rows);
    Ok(rows)
}

/// Most fields a record may hold: a row of the format has at most seven. (The CSV reader keeps
/// where each field of a record ends: a record of millions of fields would take gigabytes before
/// any check of its columns; quoted line ends can make one record of many lines.)
const RECORD_FIELDS_MAX: usize = 256;

/// Counts each record's fields as the CSV reader will split them, before it builds any.
fn check_record_fields(bytes: &[u8]) -> Result<(), String> {
    let mut reader = csv_core::Reader::new();
    let mut discard = [0u8; 4096];
    let (mut at, mut fields, mut record_start) = (0, 0, 0);
    loop {
        let (result, read, _) = reader.read_field(&bytes[at..], &mut discard);
        at += read;
        match result {
            csv_core::ReadFieldResult::InputEmpty | csv_core::ReadFieldResult::OutputFull => {}
            csv_core::ReadFieldResult::Field { record_end } => {
                fields += 1;
                if fields > RECORD_FIELDS_MAX {
                    // The record begins past the line ends (and blank lines) before it.
                    let skipped = bytes[record_start..].iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
                    let line = count_line_ends(bytes, 0, record_start + skipped) + 1;
                    return Err(format!(
                        "line {line} has more than {RECORD_FIELDS_MAX} fields, which no row of the format has: nothing was imported"
                    ));
                }
                if record_end {
                    (fields, record_start) = (0, at);
                }
            }
            csv_core::ReadFieldResult::End => return Ok(()),
        }
    }
}

/// Line ends in `bytes[from..to]` as the CSV reader takes them: `\n`, `\r\n` (counted at its
/// `\n`) or a lone `\r`.
fn count_line_ends(bytes: &[u8], from: usize, to: usize) -> usize {
    let lone_cr = |i: usize| bytes[i] == b'\r' && bytes.get(i + 1) != Some(&b'\n');
    (from..to).filter(|&i| bytes[i] == b'\n' || lone_cr(i)).count()
}

/// The length of the line end `bytes` ends with (0 if none).
fn line_end_len(bytes: &[u8]) -> usize {
    match bytes {
        [.., b'\r', b'\n'] => 2,
        [.., b'\n' | b'\r'] => 1,
        _ => 0,
    }
}

/// [`parse_csv`] on the blocking pool: a file of 64 MiB takes a while to parse, and the web
/// server's worker threads are few.
pub async fn parse_csv_apart(bytes: impl AsRef<[u8]> + Send + 'static) -> Result<Vec<ImportRow>, String> {
    tokio::task::spawn_blocking(move || parse_csv(bytes.as_ref()))
        .await
        .unwrap_or_else(|e| Err(format!("the file could not be read: {e}")))
}

/// Refuses every row whose reference another row has too (a row refused for another reason
/// counts: it may have been the one meant), naming the rows.
fn refuse_repeated_references(rows: &mut [ImportRow]) {
    let mut at: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.reference.is_empty()) {
        at.entry(r.reference.clone()).or_default().push(r.row);
    }
    for r in rows.iter_mut() {
        if r.plan.is_err() {
            continue;
        }
        let Some(lines) = at.get(&r.reference).filter(|lines| lines.len() > 1) else { continue };
        let lines: Vec<String> = lines.iter().map(usize::to_string).collect();
        r.plan = Err(format!(
            "this reference is on {} rows (lines {}): none of them is imported; keep one",
            lines.len(),
            lines.join(", ")
        ));
    }
}

/// A row must have the header's number of fields.
fn row_shape(r: &csv::StringRecord, fields: usize) -> Result<(), String> {
    if r.len() != fields {
        return Err(format!("the row has {} fields, the header has {fields}", r.len()));
    }
    Ok(())
}

fn parse_row(cols: &Columns, r: &csv::StringRecord) -> Result<Plan, String> {
    let field = |i: usize| r.get(i).unwrap_or("").trim();
    let optional = |i: Option<usize>| i.map(field).filter(|t| !t.is_empty());
    let date = |name: &str, text: &str| Date::parse(text).map_err(|e| format!("{name}: {e}"));
    let plan = Plan {
        reference: PlanRef::parse(field(cols.reference)).map_err(|e| format!("reference: {e}"))?,
        nhs: NhsNumber::parse(field(cols.nhs)).map_err(|e| format!("nhs_number: {e}"))?,
        plan_type: PlanType::parse(field(cols.plan_type))
            .ok_or_else(|| "plan_type: unknown plan type (use CPP, LAC, UCPP or the SNOMED CT code)".to_string())?,
        start: date("start_date", field(cols.start))?,
        end: optional(cols.end).map(|t| date("end_date", t)).transpose()?,
        due: optional(cols.due).map(|t| date("due_date", t)).transpose()?,
        withdrawn: match optional(cols.withdrawn).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false" | "no" | "n" | "0") => false,
            Some("true" | "yes" | "y" | "1") => true,
            Some(_) => return Err("withdrawn: use true or false".into()),
        },
    };
    // Dates against today are the node's to judge, when it records the plan.
    plan.check().map_err(|e| e.to_string())?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_more_fields_than_any_row_refuses_the_file_with_its_line() {
        let header = "reference,nhs_number,plan_type,start_date";
        let commas = format!("{header}{}\n", ",".repeat(1 << 20));
        let refused = parse_csv(commas.as_bytes()).err().unwrap();
        assert!(refused.starts_with("line 1 has more than 256 fields"), "{refused}");
        let many = format!("{header}\r\nLAC-1,9434765919,LAC,2026-01-05\r\nLAC-2{}\r\n", ",".repeat(300));
        let refused = parse_csv(many.as_bytes()).err().unwrap();
        assert!(refused.starts_with("line 3 has more"), "{refused}");
        // Quoted line ends join lines of few fields into one record of many.
        let joined = format!("{header}\nLAC-1{}\n", ",\"\n\"".repeat(300));
        let refused = parse_csv(joined.as_bytes()).err().unwrap();
        assert!(refused.starts_with("line 2 has more"), "{refused}");
        // Commas inside quotes are not fields.
        let quoted = format!("{header}\n\"LAC{}1\",9434765919,LAC,2026-01-05\n", ",".repeat(300));
        let rows = parse_csv(quoted.as_bytes()).map(|rows| rows.len()).ok();
        assert_eq!(rows, Some(1), "one row (refused for its reference, not the file)");
        let fine = format!("{header}\rLAC-1,9434765919,LAC,2026-01-05\r");
        assert_eq!(parse_csv(fine.as_bytes()).map(|rows| rows.len()).ok(), Some(1), "lines ended by CR alone");
    }

    #[test]
    fn rows_are_answered_with_row_numbers_and_reasons() {
        let csv = "reference,nhs_number,plan_type,start_date,end_date,due_date,withdrawn\n\
                   LAC-1,943 476 5919,LAC,2026-01-05,,,\n\
                   CPP-2,9876544321,CPP,2026-01-05,,,\n\
                   X-3,4010232137,ZZZ,2026-01-05,,,\n\
                   CPP-4,4010232137,CPP,2026-02-01,2026-01-01,,\n\
                   U-5,4010232137,UCPP,2026-02-01,,,\n\
                   LAC-1,4010232137,LAC,2026-01-05,,,\n";
        let rows = parse_csv(csv.as_bytes()).unwrap();
        let reasons: Vec<(usize, Result<(), String>)> =
            rows.iter().map(|r| (r.row, r.plan.as_ref().map(|_| ()).map_err(Clone::clone))).collect();
        assert_eq!(reasons[0].0, 2);
        assert!(reasons[1].1.as_ref().unwrap_err().contains("check digit"));
        assert!(reasons[2].1.as_ref().unwrap_err().contains("unknown plan type"));
        assert!(reasons[3].1.as_ref().unwrap_err().contains("end date is before"));
        assert!(reasons[4].1.as_ref().unwrap_err().contains("due date"));
        assert_eq!(reasons[5].0, 7);
        assert!(reasons[5].1.as_ref().unwrap_err().contains("on 2 rows (lines 2, 7)"), "{reasons:?}");
        assert_eq!(reasons[0].1, reasons[5].1, "both rows of the reference refused: {reasons:?}");

        // The other row of the reference is refused for its own reason: this one is not taken.
        let csv = "reference,nhs_number,plan_type,start_date,withdrawn\n\
                   LAC-1,9434765919,LAC,2026-01-05,no\n\
                   LAC-1,943476591,LAC,2026-01-05,yes\n";
        let rows = parse_csv(csv.as_bytes()).unwrap();
        assert!(rows[0].plan.as_ref().is_err_and(|e| e.contains("on 2 rows (lines 2, 3)")), "{:?}", rows[0].plan);
        assert!(rows[1].plan.as_ref().is_err_and(|e| e.contains("nhs_number")), "{:?}", rows[1].plan);
    }

    #[test]
    fn a_misspelt_or_repeated_column_or_an_empty_export_is_refused_whole() {
        let typo = parse_csv(b"reference,nhs_number,plan_type,start_date,withdrawl\nA,9434765919,LAC,2026-01-05,yes\n");
        let err = typo.err().unwrap();
        assert!(err.contains("column 5 `withdrawl`") && err.contains("did you mean `withdrawn`"), "{err}");
        let twice = parse_csv(b"reference,nhs_number,plan_type,start_date,Reference\nA,9434765919,LAC,2026-01-05,B\n");
        assert!(twice.err().unwrap().contains("`reference` twice"));
        let empty = parse_csv(b"reference,nhs_number,plan_type,start_date\n").err().unwrap();
        assert!(empty.contains("no rows"), "{empty}");
    }

    #[test]
    fn a_header_column_of_any_text_is_named_in_the_refusal_never_a_panic() {
        // Found by fuzzing: a multi-byte character across the third byte of an unknown column.
        let err = parse_csv("reference,nhs_number,plan_type,start_date,e5\u{3be}026\n".as_bytes()).err().unwrap();
        assert!(err.contains("column 5 `e5\u{3be}026` is not a column of the format"), "{err}");
        let err = parse_csv("reference,nhs_number,plan_type,start_date,st\u{e9}rt\n".as_bytes()).err().unwrap();
        assert!(err.contains("is not a column of the format;"), "{err}");
        let err = parse_csv(b"reference,nhs_number,plan_type,start_date,withdrawl\n").err().unwrap();
        assert!(err.contains("(did you mean `withdrawn`?)"), "{err}");
    }

    #[test]
    fn rows_of_the_wrong_shape_are_refused_and_an_open_quote_refuses_the_whole_file() {
        let csv = "reference,nhs_number,plan_type,start_date\n\
                   A-1,9434765919,LAC,2026-01-05,extra\n\
                   A-2,9434765919\n";
        let rows = parse_csv(csv.as_bytes()).unwrap();
        let reasons: Vec<String> = rows.iter().map(|r| r.plan.as_ref().err().cloned().unwrap_or_default()).collect();
        assert!(reasons[0].contains("5 fields, the header has 4"), "{reasons:?}");
        assert!(reasons[1].contains("2 fields"), "{reasons:?}");

        // The quote opened on line 3 closes on line 5: without the refusal, lines 3 to 5 would
        // be one refused row and line 6 imported.
        let csv = "reference,nhs_number,plan_type,start_date\n\
                   A-1,9434765919,LAC,2026-01-05\n\
                   \"A-3,9434765919,LAC,2026-01-05\n\
                   A-4,4010232137,CPP,2026-01-05\n\
                   A-5\",4010232137,CPP,2026-01-05\n\
                   A-6,4010232137,CPP,2026-01-05\n";
        let err = parse_csv(csv.as_bytes()).err().unwrap();
        assert!(err.contains("line 3: a quote") && err.contains("nothing was imported"), "{err}");
    }

    #[test]
    fn a_row_is_numbered_by_its_line_blank_lines_counted_and_a_long_reference_is_reported_short() {
        // Found by fuzzing: a lone carriage return ends a row (and a line), as a newline does.
        let csv = "reference,nhs_number,plan_type,start_date\r\nA-1,9434765919,LAC,2026-01\r05\rA-2,9434765919,LAC,2026-01-05\n";
        let rows = parse_csv(csv.as_bytes()).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.row).collect::<Vec<_>>(),
            [2, 3, 4],
            "{:?}",
            rows.iter().map(|r| &r.plan).collect::<Vec<_>>()
        );

        let long = "R".repeat(10_000);
        let csv = format!(
            "reference,nhs_number,plan_type,start_date\n\nA-1,9434765919,LAC,2026-01-05\n{long},9434765919,LAC,2026-01-05\n"
        );
        let rows = parse_csv(csv.as_bytes()).unwrap();
        assert_eq!(rows.iter().map(|r| r.row).collect::<Vec<_>>(), [3, 4], "the blank line 2 is counted");
        assert_eq!(rows[1].reference.chars().count(), 65, "64 characters and an ellipsis");
        assert!(rows[1].plan.is_err());
    }

    #[test]
    fn a_file_without_the_needed_columns_is_refused_whole() {
        let err = parse_csv(b"ref,nhs\nA,1\n").err().unwrap();
        assert!(err.contains("`reference`"));
    }
}
