//! Bytes as a plan import file (`cpis_node::import::parse_csv`): the file refused with a reason,
//! or every row answered, in order, with a plan that passes `Plan::check` or a reason.
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
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.row, i + 2, "rows are numbered from 2 (the header is row 1), in order");
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
