//! The transfer path: a sequence of requests as a peer sends them on
//! `/bytesandbrains/transfer/1` -> `Framing::read_request` ->
//! `Behaviour::inject_request` (a `Start` opens a transfer within the
//! budget, chunks fill it, the last one's value goes through the digest
//! check into the engine) -> the engine, run for a few cycles.
//!
//! An input is up to 16 requests, each a little-endian `u16` length and
//! that many bytes of one request stream.
//!
//! Checked: no panic; each request in memory becomes a message, never a
//! broken stream; a transfer's request is answered with a transfer reply
//! and an envelope's with an acknowledgement; and what transfers hold
//! never passes the budget.
#![no_main]

use std::sync::{LazyLock, Mutex};

use bb_libp2p::transfer::{Answer, Message};
use bb_libp2p::{Behaviour, TRANSFER_PROTOCOL};
use bb_libp2p_fuzz::{framing, held, receiver, sender_peer, TRANSFER_BUDGET};
use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use libp2p::request_response::Codec as _;

const CYCLES: usize = 4;
const TICK_NS: u64 = 10_000_000;
const MAX_REQUESTS: usize = 16;

static RECEIVER: LazyLock<Mutex<Behaviour>> = LazyLock::new(|| Mutex::new(receiver()));

fuzz_target!(|input: &[u8]| {
    let mut receiver = RECEIVER.lock().unwrap_or_else(|e| e.into_inner());
    let mut rest = input;
    for _ in 0..MAX_REQUESTS {
        if rest.len() < 2 {
            break;
        }
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (request, tail) = rest[2..].split_at(len);
        rest = tail;
        let mut cursor = futures::io::Cursor::new(request);
        let message = block_on(framing().read_request(&TRANSFER_PROTOCOL, &mut cursor))
            .expect("a request in memory never breaks the stream");
        let transfer = !matches!(message, Message::Wire(_));
        let answer = held(&mut receiver, CYCLES, TICK_NS, |r| {
            r.inject_request(sender_peer(), message)
        });
        assert_eq!(
            matches!(answer, Answer::Reply(_)),
            transfer,
            "answered {answer:?}"
        );
        let (_, bytes) = receiver.transfers_receiving();
        assert!(bytes <= TRANSFER_BUDGET, "{bytes} bytes held");
    }
});
