//! Writes the seed corpus of the `inbound` target to `seeds/inbound/`:
//! `cargo run --example write_seeds` in `fuzz/`.

use std::path::Path;

use bb_libp2p::codec::Request;
use bb_libp2p::{to_engine_peer, PROTOCOL_NAME};
use bb_libp2p_fuzz::{codec, envelope, peer, sender_peer, MAX_ENVELOPE_BYTES};
use bb_runtime::envelope::WireEnvelope;
use bytesandbrains::syscall::values::BytesValue;
use futures::executor::block_on;
use libp2p::request_response::Codec as _;

/// A value `x` as a sender's `invoke` takes it.
fn value(bytes: &[u8]) -> Vec<u8> {
    bincode::serialize(&BytesValue(bytes.to_vec())).expect("encodes")
}

fn frame(envelope: WireEnvelope) -> Vec<u8> {
    let mut out = futures::io::Cursor::new(Vec::new());
    block_on(codec().write_request(
        &PROTOCOL_NAME,
        &mut out,
        Request::Envelope(std::sync::Arc::new(envelope)),
    ))
    .expect("writes to memory");
    out.into_inner()
}

fn varint(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(n, &mut out);
    out
}

fn main() -> std::io::Result<()> {
    let sender = sender_peer();
    let request = frame(envelope("req", &value(b"echo"), sender));
    // Claims to come from another peer than the connection's.
    let mut claimed = envelope("req", &value(b"claimed"), peer(3));
    claimed.src_peer_bytes = to_engine_peer(&peer(3)).to_bytes();
    let seeds: [(&str, Vec<u8>); 8] = [
        ("request", request.clone()),
        ("claimed_sender", frame(claimed)),
        // For a port the receiver does not receive.
        ("no_receiver", frame(envelope("port", &value(b"?"), sender))),
        ("truncated", request[..request.len() / 2].to_vec()),
        ("oversize_prefix", [varint(1 << 40), vec![0; 8]].concat()),
        (
            "over_cap",
            [varint(MAX_ENVELOPE_BYTES as u64 + 1), vec![0; 8]].concat(),
        ),
        ("garbage", [varint(4), vec![0xff; 4]].concat()),
        ("bad_prefix", vec![0xff; 11]),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/inbound");
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}
