//! What the fuzz targets share: the fixed test federation the directory target updates, and the
//! properties every decoded message must have. See docs/fuzzing.md.

use cpis_protocol::directory::{SignedDirectory, TrustedDirectory};
use cpis_protocol::harness::{FederationSpec, TestFederation, test_identity};
use cpis_protocol::records::SettingType;
use cpis_protocol::sign::Identity;
use cpis_protocol::time::Timestamp;
use cpis_protocol::wire::{self, Message};

/// The name of the fixed federation.
pub const FEDERATION: &str = "fuzz";

/// The fixed federation: two hubs, two authorities, a setting; version 1 of its directory is
/// signed by 2 of its 3 test roots.
pub fn federation() -> TestFederation {
    FederationSpec::new(FEDERATION)
        .hub("HUBN")
        .hub("HUBS")
        .authority("204", "Hackney", &["HUBN"])
        .authority("E5A1B", "Brighton and Hove", &["HUBS", "HUBN"])
        .setting("RXH01", "Royal Sussex County UTC", SettingType::UrgentTreatmentCentre, &["HUBS"])
        .build()
}

/// The time every directory is judged at: the federation's start (its version 1 is valid then).
pub fn now() -> Timestamp {
    federation().start
}

/// The fixed federation's root identities `ROOT1`..`ROOT3` (the test roots of [`federation`]).
pub fn roots() -> [Identity; 3] {
    [1, 2, 3].map(|i| test_identity(FEDERATION, &format!("ROOT{i}")))
}

/// The version 1 every update is offered against.
pub fn trusted() -> TrustedDirectory {
    federation().trusted()
}

/// A directory re-signed by the fixed federation's first two roots: what lets mutated
/// directories past the signature check to the rules behind it.
pub fn resign(signed: &SignedDirectory) -> SignedDirectory {
    let [r1, r2, _] = roots();
    SignedDirectory::sign(signed.directory.clone(), &[&r1, &r2])
}

/// A decoded message re-encodes, as a frame and as a payload, to bytes that decode to itself.
pub fn assert_round_trip(message: &Message) {
    let frame = wire::encode_frame(message);
    let payload = wire::encode_payload(message);
    assert_eq!(frame[wire::FRAME_HEADER_BYTES..], payload[..], "a frame is its header and its payload");
    match wire::decode_frame(&frame) {
        Ok(again) => assert_eq!(&again, message, "a {} message re-encoded decodes to another", message.kind()),
        Err(e) => panic!("a decoded {} message re-encodes to a frame that does not decode: {e}", message.kind()),
    }
}
