//! Writes the seed corpus of the `inbound` target to `seeds/inbound/`:
//! `cargo run --example write_seeds` in `fuzz/`.

use std::path::Path;

use bb_libp2p::codec::Request;
use bb_libp2p::{to_engine_peer, PROTOCOL_NAME};
use std::sync::Arc;

use bb_libp2p::progress::Progress;
use bb_libp2p::transfer::proto::Start;
use bb_libp2p::transfer::{Chunk, ChunkBytes, Message, Payloads};
use bb_libp2p::TRANSFER_PROTOCOL;
use bb_libp2p_fuzz::{codec, envelope, framing, peer, sender_peer, MAX_ENVELOPE_BYTES};
use bb_runtime::envelope::WireEnvelope;
use bytesandbrains::syscall::values::BytesValue;
use futures::executor::block_on;
use libp2p::request_response::Codec as _;
use prost::Message as _;

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
    write_transfer_seeds()
}

/// One request as the `transfer` target reads it: a little-endian `u16`
/// length, then the request stream.
fn request(message: Message) -> Vec<u8> {
    let mut out = futures::io::Cursor::new(Vec::new());
    block_on(framing().write_request(&TRANSFER_PROTOCOL, &mut out, message))
        .expect("writes to memory");
    let bytes = out.into_inner();
    [(bytes.len() as u16).to_le_bytes().to_vec(), bytes].concat()
}

/// Seeds of the `transfer` target, in `seeds/transfer/`: a value of 100 KiB
/// in 16 KiB chunks, whole and broken in each way the receiver refuses.
fn write_transfer_seeds() -> std::io::Result<()> {
    const CHUNK: u64 = 16 * 1024;
    let full = envelope("req", &value(&[7u8; 100 * 1024]), sender_peer());
    let mut hollow = full.clone();
    hollow.fills.iter_mut().for_each(|f| f.payload.clear());
    let header = hollow.encode_to_vec();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&header);
    full.fills.iter().for_each(|f| {
        hasher.update(blake3::hash(&f.payload).as_bytes());
    });
    let start = Start {
        digest: hasher.finalize().as_bytes().to_vec(),
        header,
        fill_lengths: full.fills.iter().map(|f| f.payload.len() as u64).collect(),
        chunk_bytes: CHUNK,
    };
    let total: u64 = start.fill_lengths.iter().sum();
    let payloads = Payloads::of(full);
    let chunk = |digest: &[u8], offset: u64, len: u64| {
        request(Message::Chunk(Chunk {
            digest: digest.to_vec(),
            offset,
            bytes: ChunkBytes::Sending {
                payloads: payloads.clone(),
                len,
                progress: Progress::new(),
            },
        }))
    };
    let chunks = |digest: &[u8]| -> Vec<u8> {
        (0..total.div_ceil(CHUNK))
            .flat_map(|i| chunk(digest, i * CHUNK, CHUNK.min(total - i * CHUNK)))
            .collect()
    };
    let opened = request(Message::Start(start.clone()));
    let mut lying = start.clone();
    lying.digest[0] ^= 1;
    let mut huge = start.clone();
    huge.fill_lengths = vec![100 << 30];
    let small = envelope("req", &value(b"small"), sender_peer());
    let seeds: [(&str, Vec<u8>); 6] = [
        ("whole", [opened.clone(), chunks(&start.digest)].concat()),
        (
            "wrong_digest",
            [
                request(Message::Start(lying.clone())),
                chunks(&lying.digest),
            ]
            .concat(),
        ),
        ("huge_claim", request(Message::Start(huge))),
        ("unknown_transfer", chunk(&[9; 32], 0, CHUNK)),
        (
            "off_boundary",
            [opened, chunk(&start.digest, CHUNK / 2, CHUNK)].concat(),
        ),
        (
            "envelope",
            request(Message::Wire(Request::Envelope(Arc::new(small)))),
        ),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/transfer");
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}
