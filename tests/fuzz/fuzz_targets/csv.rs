//! Bytes as a plan import file (`cpis_node::import::parse_csv`): the file refused with a reason,
//! or every row answered, in order and numbered by its line, with a plan that passes `Plan::check`
//! or a reason.
#![no_main]

use cpis_node::import::{IMPORT_ROWS_MAX, parse_csv};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;

fuzz_target!(|data: &[u8]| {
    let rows = match parse_csv(data) {
        Ok(rows) => rows,
        Err(reason) => {
            assert!(!reason.trim().is_empty(), "a file refused without a reason");
            return;
        }
    };
    assert!(rows.len() <= IMPORT_ROWS_MAX, "more rows than the maximum");
    let mut references = BTreeSet::new();
    let lines = 1 + data.iter().enumerate().filter(|&(i, b)| *b == b'\n' || (*b == b'\r' && data.get(i + 1) != Some(&b'\n'))).count();
    let mut last = 1;
    for row in &rows {
        assert!(row.row > last && row.row <= lines, "rows are numbered by their line, after the header's, in order");
        last = row.row;
        match &row.plan {
            Ok(plan) => {
                if let Err(e) = plan.check() {
                    panic!("row {} parsed to a plan that fails Plan::check: {e}", row.row);
                }
                assert!(references.insert(plan.reference.clone()), "two accepted rows share a reference");
            }
            Err(reason) => assert!(!reason.trim().is_empty(), "row {} refused without a reason", row.row),
        }
    }
});
