//! A raw peer on `/bytesandbrains/transfer/1` that breaks the protocol gets
//! a typed rejection and an event for each request, the receiver holds no
//! more than its transfer budget, and the connection keeps carrying
//! transfers that follow the rules.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bb_libp2p::codec::{Codec, Request};
use bb_libp2p::progress::Progress;
use bb_libp2p::transfer::proto::{Reply, Start};
use bb_libp2p::transfer::{Answer, Chunk, ChunkBytes, Framing, Message, Payloads, CHUNK_BYTES};
use bb_libp2p::{Behaviour, Config, Event, RejectKind};
use bb_runtime::envelope::EnvelopeCaps;
use common::models::{bytes_value, compile, wire_envelope, Ping};
use common::{listen, memory_swarm, run_for, until};
use futures::channel::mpsc;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm};
use prost::Message as _;

/// A raw peer on its own task: sends each message it is given to `dest`
/// and hands back the answer, or the failure in words.
fn raw_peer(
    dest: PeerId,
    addr: libp2p::Multiaddr,
) -> (
    mpsc::Sender<Message>,
    mpsc::Receiver<Result<Answer, String>>,
) {
    let (message_tx, mut messages) = mpsc::channel::<Message>(1);
    let (mut answer_tx, answers) = mpsc::channel(1);
    let framing = Framing::new(Codec::new(EnvelopeCaps::default(), 16 << 20), 4 << 20);
    let behaviour = request_response::Behaviour::with_codec(
        framing,
        [(bb_libp2p::TRANSFER_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
    );
    let mut swarm = memory_swarm(Keypair::generate_ed25519(), behaviour);
    swarm.add_peer_address(dest, addr);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => { swarm.behaviour_mut().send_request(&dest, message); }
                    None => return,
                },
                e = swarm.select_next_some() => {
                    let answer = match e {
                        SwarmEvent::Behaviour(request_response::Event::Message {
                            message: request_response::Message::Response { response, .. }, ..
                        }) => Ok(response),
                        SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                            Err(error.to_string())
                        }
                        _ => continue,
                    };
                    if answer_tx.try_send(answer).is_err() {
                        return;
                    }
                }
            }
        }
    });
    (message_tx, answers)
}

/// A value to hand-craft transfers of: its envelope (data fill addressed
/// to Ping's port), header and digest.
struct Value {
    payloads: Payloads,
    start: Start,
    payload: Vec<u8>,
}

impl Value {
    fn new(
        model: &bytesandbrains::proto::onnx::ModelProto,
        target: &str,
        to: PeerId,
        len: usize,
        seed: u8,
    ) -> Self {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ seed).collect();
        let envelope = wire_envelope(model, target, to, &payload);
        let mut hollow = envelope.clone();
        hollow.fills.iter_mut().for_each(|f| f.payload.clear());
        let header = hollow.encode_to_vec();
        // BLAKE3 of the header, then of each payload's BLAKE3.
        let mut hasher = blake3::Hasher::new();
        hasher.update(&header);
        envelope.fills.iter().for_each(|f| {
            hasher.update(blake3::hash(&f.payload).as_bytes());
        });
        let start = Start {
            digest: hasher.finalize().as_bytes().to_vec(),
            header,
            fill_lengths: envelope
                .fills
                .iter()
                .map(|f| f.payload.len() as u64)
                .collect(),
            chunk_bytes: CHUNK_BYTES as u64,
        };
        Self {
            payloads: Payloads::of(envelope),
            start,
            payload,
        }
    }

    fn total(&self) -> u64 {
        self.start.fill_lengths.iter().sum()
    }

    /// Chunk `len` bytes at `offset`, claiming transfer `digest`.
    fn chunk(&self, digest: &[u8], offset: u64, len: u64) -> Message {
        Message::Chunk(Chunk {
            digest: digest.to_vec(),
            offset,
            bytes: ChunkBytes::Sending {
                payloads: self.payloads.clone(),
                len,
                progress: Progress::new(),
            },
        })
    }
}

/// The kind an answer's acknowledgement refuses with, if it refuses.
fn refusal(answer: &Answer) -> Option<i32> {
    match answer {
        Answer::Reply(Reply { ack: Some(ack), .. }) | Answer::Ack(ack) if ack.status == 2 => {
            Some(ack.reason)
        }
        _ => None,
    }
}

struct Rig {
    b: Swarm<Behaviour>,
    tx: mpsc::Sender<Message>,
    rx: mpsc::Receiver<Result<Answer, String>>,
    /// The receiver's rejections, in order.
    rejections: Vec<bb_libp2p::Rejection>,
    /// Values B output.
    outputs: Vec<Vec<u8>>,
    model: bytesandbrains::proto::onnx::ModelProto,
    sender_target: String,
}

impl Rig {
    async fn new(config: Config) -> Self {
        let (model, targets) = compile(Ping);
        let key = Keypair::generate_ed25519();
        let behaviour = common::models::bb_behaviour(&key, &model, &[&targets[1]], config);
        let mut b = memory_swarm(key, behaviour);
        let addr = listen(&mut b).await;
        let (tx, rx) = raw_peer(*b.local_peer_id(), addr);
        Self {
            b,
            tx,
            rx,
            rejections: Vec::new(),
            outputs: Vec::new(),
            model,
            sender_target: targets[0].clone(),
        }
    }

    fn value(&self, len: usize, seed: u8) -> Value {
        Value::new(
            &self.model,
            &self.sender_target,
            *self.b.local_peer_id(),
            len,
            seed,
        )
    }

    fn record(&mut self, e: SwarmEvent<Event>) {
        match e {
            SwarmEvent::Behaviour(Event::InboundRejected { rejection, .. }) => {
                self.rejections.push(rejection)
            }
            SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) => {
                self.outputs.push(value_bytes)
            }
            _ => {}
        }
    }

    /// Sends `message`, polling B until the answer comes back.
    async fn ask(&mut self, message: Message) -> Answer {
        self.tx.try_send(message).unwrap();
        loop {
            tokio::select! {
                answer = self.rx.next() => return answer.unwrap().unwrap_or_else(|e| panic!("{e}; receiver: {:?}", self.rejections)),
                e = self.b.select_next_some() => self.record(e),
            }
        }
    }

    /// Polls B for `duration`.
    async fn run(&mut self, duration: Duration) {
        let mut events = Vec::new();
        run_for(&mut [&mut self.b], duration, |_, e| events.push(e)).await;
        events.into_iter().for_each(|e| self.record(e));
    }

    fn last_rejection(&self) -> RejectKind {
        self.rejections.last().expect("a rejection event").kind
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_request_gets_a_typed_rejection_and_the_connection_carries_on() {
    use bb_libp2p::codec::proto::Reason;
    let mut rig = Rig::new(Config::default()).await;

    // A chunk for a transfer never started.
    let value = rig.value(2 * CHUNK_BYTES + 100, 1);
    let answer = rig.ask(value.chunk(&[7; 32], 0, CHUNK_BYTES as u64)).await;
    assert_eq!(refusal(&answer), Some(Reason::UnknownTransfer as i32));
    assert_eq!(rig.last_rejection(), RejectKind::UnknownTransfer);

    // A claimed total of 100 GiB: refused before anything is held.
    let mut huge = value.start.clone();
    huge.fill_lengths = vec![100 << 30];
    let answer = rig.ask(Message::Start(huge)).await;
    assert_eq!(refusal(&answer), Some(Reason::Oversize as i32));
    assert_eq!(rig.last_rejection(), RejectKind::Oversize);
    assert_eq!(rig.b.behaviour().transfers_receiving(), (0, 0));

    // Out-of-range, overlapping and short chunks of a transfer under way.
    let answer = rig.ask(Message::Start(value.start.clone())).await;
    assert_eq!(refusal(&answer), None, "{answer:?}");
    assert_eq!(
        rig.b.behaviour().transfers_receiving(),
        (1, value.total() as usize)
    );
    let digest = value.start.digest.clone();
    let chunk = CHUNK_BYTES as u64;
    // (Bytes for chunks past the value's end come from a larger one.)
    let larger = rig.value(5 * CHUNK_BYTES, 9);
    for (offset, len) in [(3 * chunk, chunk), (chunk / 2, chunk), (0, 100)] {
        let answer = rig.ask(larger.chunk(&digest, offset, len)).await;
        assert_eq!(
            refusal(&answer),
            Some(Reason::ChunkRange as i32),
            "{offset} {len}"
        );
        assert_eq!(rig.last_rejection(), RejectKind::ChunkRange);
    }
    // The transfer is still there, and completes: the value arrives.
    for index in 0..3u64 {
        let offset = index * chunk;
        let len = chunk.min(value.total() - offset);
        let answer = rig.ask(value.chunk(&digest, offset, len)).await;
        let done = index == 2;
        match answer {
            Answer::Reply(Reply { ack: Some(ack), .. }) => {
                assert!(done && ack.status == 1, "chunk {index}: {ack:?}")
            }
            Answer::Reply(Reply { ack: None, have }) => {
                assert!(!done, "the last chunk got no verdict");
                assert_eq!(have[0].count_ones() as u64, index + 1);
            }
            other => panic!("{other:?}"),
        }
    }
    rig.run(Duration::from_millis(500)).await;
    assert_eq!(
        rig.outputs.len(),
        1,
        "the well-formed transfer's value was not output"
    );
    assert!(
        rig.outputs[0] == bytes_value(&value.payload),
        "the value arrived changed"
    );
    assert_eq!(rig.b.behaviour().transfers_receiving(), (0, 0));

    // A wrong digest: every chunk arrives, and the value is refused whole.
    let other = rig.value(CHUNK_BYTES + 5, 2);
    let mut lying = other.start.clone();
    lying.digest = value.start.digest.clone();
    lying.digest[0] ^= 1;
    assert_eq!(refusal(&rig.ask(Message::Start(lying.clone())).await), None);
    let answer = rig.ask(other.chunk(&lying.digest, 0, chunk)).await;
    assert_eq!(refusal(&answer), None);
    let rest = other.total() - chunk;
    let answer = rig.ask(other.chunk(&lying.digest, chunk, rest)).await;
    assert_eq!(refusal(&answer), Some(Reason::Integrity as i32));
    assert_eq!(rig.last_rejection(), RejectKind::Integrity);
    rig.run(Duration::from_millis(300)).await;
    assert_eq!(
        rig.outputs.len(),
        1,
        "a value that failed its digest was output"
    );
    assert_eq!(rig.b.behaviour().transfers_receiving(), (0, 0));

    // The connection still carries an envelope in one frame.
    let small = wire_envelope(
        &rig.model,
        &rig.sender_target,
        *rig.b.local_peer_id(),
        b"still here",
    );
    let answer = rig
        .ask(Message::Wire(Request::Envelope(Arc::new(small))))
        .await;
    assert!(
        matches!(answer, Answer::Ack(ref ack) if ack.status == 1),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_starts_holds_no_more_than_the_budget() {
    use bb_libp2p::codec::proto::Reason;
    const BUDGET: usize = 64 << 20;
    let config = Config::default()
        .with_max_value_bytes(16 << 20)
        .with_transfer_budget(BUDGET);
    let mut rig = Rig::new(config).await;
    let value = rig.value(9 << 20, 3);
    let (mut open, mut busy) = (0, 0);
    for n in 0..40u8 {
        let mut start = value.start.clone();
        start.digest[0] = n;
        match refusal(&rig.ask(Message::Start(start)).await) {
            None => open += 1,
            Some(reason) => {
                assert_eq!(reason, Reason::Busy as i32);
                busy += 1;
            }
        }
        let (_, held) = rig.b.behaviour().transfers_receiving();
        assert!(
            held <= BUDGET,
            "{held} bytes held past the budget of {BUDGET}"
        );
    }
    // Seven values of 9 MiB fit 64 MiB, an eighth does not.
    assert_eq!((open, busy), (7, 33));
    assert_eq!(rig.last_rejection(), RejectKind::Busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_stalling_mid_value_is_dropped_and_its_bytes_freed() {
    let config = Config::default()
        .with_request_timeout(Duration::from_secs(1))
        .with_delivery_window(Duration::from_secs(1));
    let mut rig = Rig::new(config).await;
    let value = rig.value(3 * CHUNK_BYTES, 4);
    assert_eq!(
        refusal(&rig.ask(Message::Start(value.start.clone())).await),
        None
    );
    let digest = value.start.digest.clone();
    assert_eq!(
        refusal(&rig.ask(value.chunk(&digest, 0, CHUNK_BYTES as u64)).await),
        None
    );
    assert_eq!(
        rig.b.behaviour().transfers_receiving(),
        (1, value.total() as usize)
    );
    let mut dropped = None;
    let (b, rejections) = (&mut rig.b, &mut rig.rejections);
    until(
        &mut [b],
        Duration::from_secs(10),
        "the stalled transfer dropped",
        |_, e| {
            if let SwarmEvent::Behaviour(Event::InboundRejected { rejection, .. }) = e {
                rejections.push(rejection.clone());
                dropped = Some(rejection);
                return Some(());
            }
            None
        },
    )
    .await;
    let dropped = dropped.unwrap();
    assert_eq!(dropped.kind, RejectKind::Timeout);
    assert!(
        dropped.detail.contains("stalled") && dropped.detail.contains("1 of 4 chunks"),
        "{}",
        dropped.detail
    );
    assert_eq!(rig.b.behaviour().transfers_receiving(), (0, 0));
    // The rest of it now names a transfer the receiver does not hold.
    let answer = rig
        .ask(value.chunk(&digest, CHUNK_BYTES as u64, CHUNK_BYTES as u64))
        .await;
    assert_eq!(
        refusal(&answer),
        Some(bb_libp2p::codec::proto::Reason::UnknownTransfer as i32)
    );
}
