//! The wire never panics, and the signed bytes never change unseen.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.

use cpis_protocol::feed::FeedHead;
use cpis_protocol::feed::{EntryBody, FeedEntry};
use cpis_protocol::harness::test_identity;
use cpis_protocol::ids::{NhsNumber, OdsCode, PlanRef};
use cpis_protocol::merkle::Digest;
use cpis_protocol::records::{Plan, PlanType};
use cpis_protocol::sign::signing_bytes;
use cpis_protocol::time::{Date, Timestamp};
use cpis_protocol::wire::{self, DIGEST_BUCKETS, FRAME_BYTES_MAX, FeedBatch, Mark, Message, WireError};
use proptest::prelude::*;

fn golden_entry() -> FeedEntry {
    FeedEntry {
        origin: OdsCode::parse("204").unwrap(),
        seq: 7,
        at: Timestamp(1_795_478_400_000),
        body: EntryBody::Plan(Plan {
            reference: PlanRef::parse("LAC-2026-0001").unwrap(),
            nhs: NhsNumber::parse("943 476 5919").unwrap(),
            plan_type: PlanType::LookedAfter,
            start: Date::parse("2026-01-05").unwrap(),
            end: None,
            due: None,
            withdrawn: false,
        }),
    }
}

/// Golden vector: if this changes, the signed format changed and FORMAT_VERSION must go up.
#[test]
fn signed_entry_bytes_and_signature_match_golden_vector() {
    let entry = golden_entry();
    let bytes = signing_bytes(&entry);
    assert_eq!(hex(&bytes), GOLDEN_BYTES);
    let signed = test_identity("golden", "204").sign(entry);
    assert_eq!(hex(&[signed.signature.0, signed.signature.1].concat()), GOLDEN_SIGNATURE);
}

const GOLDEN_BYTES: &str = "637069732f656e74727900000203000000000000003230340700000000000000002cda0aa2010000000000000d000000000000004c41432d323032362d303030315f1a5b320200000001000000ea4f0000000000";
const GOLDEN_SIGNATURE: &str = "c6d590e4fdd95e1769cda6ee57aced80f22afa3c3979b370c413b2dddab51462bd1832df9828e6daadf12bc1d09ba4a76fa997eb8e580fa2543d51efb5e26c0e";

fn golden_head() -> FeedHead {
    FeedHead {
        origin: OdsCode::parse("204").unwrap(),
        seq: 7,
        at: Timestamp(1_795_478_400_000),
        plans_root: Digest([0xAB; 16]),
        children: 1,
        contacts: None,
    }
}

/// Golden vector of a head: its signed bytes never change unseen either.
#[test]
fn signed_head_bytes_match_golden_vector() {
    assert_eq!(hex(&signing_bytes(&golden_head())), GOLDEN_HEAD_BYTES);
}

const GOLDEN_HEAD_BYTES: &str = "637069732f6865616400000203000000000000003230340700000000000000002cda0aa2010000abababababababababababababababab010000000000000000";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn frame_round_trip() {
    let signed = test_identity("golden", "204").sign(golden_entry());
    let batch = FeedBatch {
        origin: OdsCode::parse("204").unwrap(),
        after: 6,
        upto: 7,
        entries: vec![signed],
        head: Some(test_identity("golden", "204").sign(golden_head())),
        more: false,
    };
    let message = Message::Feed(batch);
    assert_eq!(wire::decode_frame(&wire::encode_frame(&message)).unwrap(), message);
}

#[test]
fn oversized_frame_is_refused_from_its_header() {
    let header = ((FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
    assert!(matches!(wire::frame_len(header), Err(WireError::FrameTooLarge { .. })));
}

#[test]
fn other_protocol_version_is_refused_by_name() {
    let mut payload = wire::encode_payload(&Message::Sync { directory_version: 1, marks: vec![] });
    payload[1] = 9;
    assert!(matches!(wire::decode_payload(&payload), Err(WireError::UnsupportedVersion(9))));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut payload = wire::encode_payload(&Message::Sync { directory_version: 1, marks: vec![] });
    payload.push(0);
    assert!(matches!(wire::decode_payload(&payload), Err(WireError::Decode(_))));
}

fn mark(origin: &str, seq: u64, head_at: u64) -> Mark {
    Mark { origin: OdsCode::parse(origin).unwrap(), seq, head_at: Timestamp(head_at) }
}

#[test]
fn digest_fingerprints_are_order_free_a_zero_mark_is_no_mark_and_a_change_shows_in_its_bucket_only() {
    let marks: Vec<Mark> = ["204", "316", "E5A1B", "HUBN", "HUBS"].iter().map(|o| mark(o, 7, 1_000)).collect();
    let base = wire::fingerprints(&marks);
    let mut reversed = marks.clone();
    reversed.reverse();
    assert_eq!(wire::fingerprints(&reversed), base, "the order of marks does not matter");
    let mut with_zero = marks.clone();
    with_zero.push(mark("801", 0, 0));
    assert_eq!(wire::fingerprints(&with_zero), base, "a mark at zero counts as none");
    for (i, changed) in [mark("316", 8, 1_000), mark("316", 7, 2_000)].into_iter().enumerate() {
        let mut moved = marks.clone();
        moved[1] = changed;
        let differ: Vec<usize> = (0..DIGEST_BUCKETS).filter(|&b| wire::fingerprints(&moved)[b] != base[b]).collect();
        assert_eq!(differ, [wire::bucket_of(&moved[1].origin)], "change {i} shows in 316's bucket only");
    }
}

#[test]
fn digest_and_sync_part_round_trip_and_a_sync_part_over_the_mark_limit_is_refused() {
    let fingerprints = wire::fingerprints(&[mark("204", 3, 9)]);
    let digest = Message::Digest { directory_version: 4, directory: 7, fingerprints };
    assert_eq!(wire::decode_frame(&wire::encode_frame(&digest)).unwrap(), digest);
    let part = Message::SyncPart { directory_version: 4, buckets: 0b101, marks: vec![mark("204", 3, 9)] };
    assert_eq!(wire::decode_frame(&wire::encode_frame(&part)).unwrap(), part);
    let marks = vec![mark("204", 3, 9); wire::SYNC_MARKS_MAX + 1];
    let payload = wire::encode_payload(&Message::SyncPart { directory_version: 4, buckets: 1, marks });
    assert!(matches!(wire::decode_payload(&payload), Err(WireError::TooMany { what: "marks", .. })));
}

#[test]
fn held_round_trips_and_a_held_naming_more_hubs_than_a_directory_may_hold_is_refused() {
    let held =
        |n: usize| Message::Held { hubs: vec![wire::HeldBy { hub: OdsCode::parse("HUBN").unwrap(), seq: 7 }; n] };
    assert_eq!(wire::decode_frame(&wire::encode_frame(&held(2))).unwrap(), held(2));
    let payload = wire::encode_payload(&held(wire::SYNC_MARKS_MAX + 1));
    assert!(matches!(wire::decode_payload(&payload), Err(WireError::TooMany { what: "hubs", .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_bytes_decode_to_a_message_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode_payload(&bytes);
        let _ = wire::decode_frame(&bytes);
    }

    #[test]
    fn corrupted_real_frames_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let signed = test_identity("golden", "204").sign(golden_entry());
        let batch = FeedBatch { origin: OdsCode::parse("204").unwrap(), after: 6, upto: 7, entries: vec![signed], head: None, more: false };
        let mut frame = wire::encode_frame(&Message::Feed(batch));
        for (i, b) in flips {
            let at = i.index(frame.len());
            frame[at] ^= b;
        }
        let _ = wire::decode_frame(&frame);
    }
}
