//! The inbound path, end to end: frame bytes as a peer sends them ->
//! `Codec::read_request` -> `Behaviour::inject_envelope` (policy, site
//! rewrite, ingress) -> the engine, run until idle or for a few cycles.
//!
//! Checked: no panic anywhere on the path; a frame in memory always becomes
//! an envelope or a typed refusal of a kind reading a frame can produce,
//! never a broken stream; and memory stays bounded (run with
//! `-rss_limit_mb` and `-malloc_limit_mb`).
#![no_main]

use std::sync::{LazyLock, Mutex};

use bb_libp2p::codec::Request;
use bb_libp2p::{Behaviour, RejectKind, PROTOCOL_NAME};
use bb_libp2p_fuzz::{codec, deliver, receiver, sender_peer};
use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use libp2p::request_response::Codec as _;

/// Engine cycles per input: enough for a delivery and its reply.
const CYCLES: usize = 4;

/// Engine time that passes per input, so request deadlines and timers
/// come due as they would under traffic, and replay the same way.
const TICK_NS: u64 = 10_000_000;

/// Building the receiver compiles and installs graphs: once per process.
/// Its Node runs on an engine thread of its own; a panic there aborts the
/// process as one here does.
static RECEIVER: LazyLock<Mutex<Behaviour>> = LazyLock::new(|| Mutex::new(receiver()));

fuzz_target!(|frame: &[u8]| {
    let mut cursor = futures::io::Cursor::new(frame);
    let request = block_on(codec().read_request(&PROTOCOL_NAME, &mut cursor))
        .expect("a frame in memory never breaks the stream");
    let envelope = match request {
        Request::Envelope(envelope) | Request::Sending(envelope, _) => {
            std::sync::Arc::unwrap_or_clone(envelope)
        }
        Request::Invalid(rejection) => {
            assert!(
                matches!(
                    rejection.kind,
                    RejectKind::LengthPrefix
                        | RejectKind::Oversize
                        | RejectKind::Truncated
                        | RejectKind::Malformed
                        | RejectKind::CapsExceeded
                        | RejectKind::Expired
                ),
                "{rejection}"
            );
            return;
        }
    };
    let mut receiver = RECEIVER.lock().unwrap_or_else(|e| e.into_inner());
    // A refusal here is an answer like any other.
    let _ = deliver(&mut receiver, sender_peer(), envelope, CYCLES, TICK_NS);
});
