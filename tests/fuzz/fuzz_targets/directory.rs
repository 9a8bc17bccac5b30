//! Bytes as a directory file (decoded as the node decodes one, with its file-size limit), then
//! trusted at a fixed time (`TrustedDirectory::bootstrap`) and offered as the next version of a
//! fixed valid directory (`accept_update`). Each is tried twice: as decoded (the signature checks
//! refuse nearly every mutation) and re-signed by the fixed federation's roots (so the mutations
//! reach the rules behind the signatures). Never a panic; an accepted update is a directory
//! that would also be trusted on its own.
#![no_main]

use cpis_node::config::DIRECTORY_FILE_BYTES_MAX;
use cpis_protocol::codec;
use cpis_protocol::directory::{SignedDirectory, TrustedDirectory};
use cpis_protocol::time::Timestamp;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static FIXED: LazyLock<(TrustedDirectory, Timestamp)> = LazyLock::new(|| (cpis_fuzz::trusted(), cpis_fuzz::now()));

fuzz_target!(|data: &[u8]| {
    let Ok(signed) = codec::decode::<SignedDirectory>(data, DIRECTORY_FILE_BYTES_MAX) else {
        return;
    };
    let again: Result<SignedDirectory, _> = codec::decode(&codec::encode(&signed), DIRECTORY_FILE_BYTES_MAX);
    assert!(again.is_ok_and(|d| d == signed), "a directory re-encoded decodes to another");
    let resigned = cpis_fuzz::resign(&signed);
    check(signed);
    check(resigned);
});

fn check(signed: SignedDirectory) {
    let (current, now) = &*FIXED;
    if let Ok(t) = TrustedDirectory::bootstrap(signed.clone(), *now) {
        assert_eq!(t.signed(), &signed, "bootstrap trusted something else than it was given");
        for m in t.members() {
            assert!(t.member(&m.code).is_some_and(|found| found == m), "member {} is not found by its code", m.code);
        }
    }
    if let Ok(next) = current.accept_update(signed.clone(), *now) {
        assert_eq!(next.version(), current.version() + 1, "an update that is not the next version was accepted");
        assert_eq!(next.signed(), &signed, "accept_update trusted something else than it was given");
        if let Err(e) = TrustedDirectory::bootstrap(signed, *now) {
            panic!("an accepted update would not be trusted on its own: {e}");
        }
    }
}
