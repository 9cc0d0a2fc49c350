//! The inbound path, end to end: frame bytes as a peer sends them ->
//! `Codec::read_request` -> `Behaviour::inject_envelope` (policy, site
//! rewrite, ingress) -> the engine, run until idle or for a few cycles.
//!
//! Checked: no panic anywhere on the path; a frame in memory always becomes
//! an envelope or a typed refusal of a kind reading a frame can produce,
//! never a broken stream; and memory stays bounded (run with
//! `-rss_limit_mb` and `-malloc_limit_mb`).
#![no_main]

use std::cell::RefCell;
use std::task::{Context, Waker};

use bb_libp2p::codec::Request;
use bb_libp2p::{Behaviour, RejectKind, PROTOCOL_NAME};
use bb_libp2p_fuzz::{codec, receiver, sender_peer};
use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use libp2p::request_response::Codec as _;

/// Engine cycles per input: enough for a delivery and its reply.
const CYCLES: usize = 4;

/// Engine time that passes per input, so request deadlines and timers
/// come due as they would under traffic, and replay the same way.
const TICK_NS: u64 = 10_000_000;

thread_local! {
    // Building the receiver compiles and installs graphs: once per process.
    // The Node is !Send, hence a thread-local.
    static RECEIVER: RefCell<Behaviour> = RefCell::new(receiver());
}

fuzz_target!(|frame: &[u8]| {
    let mut cursor = futures::io::Cursor::new(frame);
    let request = block_on(codec().read_request(&PROTOCOL_NAME, &mut cursor))
        .expect("a frame in memory never breaks the stream");
    let envelope = match request {
        Request::Envelope(envelope) => std::sync::Arc::unwrap_or_clone(envelope),
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
    RECEIVER.with_borrow_mut(|receiver| {
        // A refusal here is an answer like any other.
        let _ = receiver.inject_envelope(sender_peer(), envelope);
        let node = receiver.node_mut();
        let scheduler = &mut node.engine_install_handle().framework.scheduler;
        let now = scheduler.now_ns().saturating_add(TICK_NS);
        scheduler.set_now(now);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..CYCLES {
            if node.poll(&mut cx).is_pending() {
                break;
            }
        }
    });
});
