//! The receiving side the `inbound` target feeds, and the envelopes its seed
//! corpus starts from.
//!
//! The receiver runs the receiving partition of `RoundTrip`: a value arrives
//! on port `req` and is sent back to its sender on port `reply`, so an input
//! can reach the engine's receive gates, its handling of a sender's claimed
//! addresses, and a reply resolved through its AddressBook. (One receiving
//! partition only: the compiler gives every receiver's gates the same value
//! names, and the engine resolves names across a Node's graphs, so a second
//! receiver would stall behind the first.)

use std::future::Future;
use std::sync::mpsc::{self, TryRecvError};
use std::task::{Context, Waker};

use bb_ir::proto::onnx::{NodeProto, StringStringEntryProto};
use bb_libp2p::codec::Codec;
use bb_libp2p::sites::portable_site_id;
use bb_libp2p::transfer::Framing;
use bb_libp2p::{p2p_address, to_engine_peer, Behaviour, Config, Rejection};
use bb_runtime::envelope::{
    CorrelationKind, EnvelopeCaps, SlotFill, WireCorrelation, WireEnvelope,
};
use bb_runtime::framework::Address;
use bb_runtime::ids::NodeSiteId;
use bytesandbrains::atomic::DispatchResult;
use bytesandbrains::bus::OpError;
use bytesandbrains::runtime::RuntimeResourceRef;
use bytesandbrains::slot_value::{type_hash_of, SlotValue};
use bytesandbrains::syscall::values::{BytesValue, PeerIdVecValue};
use bytesandbrains::{Compiler, Graph, Module, Output};
use libp2p::PeerId;

/// The largest frame body the target reads: far below the 16 MiB default,
/// so that runs stay fast, and below the inputs libFuzzer may generate
/// (`-max_len=70000`), so that the cap itself is reached.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// The codec of the receiver's inbound path: the engine's default caps,
/// with [`MAX_ENVELOPE_BYTES`].
pub fn codec() -> Codec {
    Codec::new(EnvelopeCaps::default(), MAX_ENVELOPE_BYTES)
}

/// The largest value the `transfer` target's receiver takes, and its
/// transfer budget: four of them.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;
pub const TRANSFER_BUDGET: usize = 4 * MAX_VALUE_BYTES;

/// The codec of both protocols, as the receiver reads them: chunks of up
/// to 64 KiB.
pub fn framing() -> Framing {
    Framing::new(codec(), 64 * 1024)
}

/// A fixed libp2p PeerId (a sha2-256 multihash of `n` repeated), so that
/// inputs replay the same way in every run.
pub fn peer(n: u8) -> PeerId {
    let bytes: Vec<u8> = [0x12, 0x20].into_iter().chain([n; 32]).collect();
    PeerId::from_bytes(&bytes).expect("a sha2-256 multihash is a PeerId")
}

/// The receiver's PeerId.
pub fn receiver_peer() -> PeerId {
    peer(1)
}

/// The authenticated peer every input arrives from.
pub fn sender_peer() -> PeerId {
    peer(2)
}

const FUZZ_DOMAIN: &str = "ai.bytesandbrains.bb_libp2p_fuzz";

/// The inbound envelope's sender as a one-peer list.
fn sender_as_peers(
    _node: &NodeProto,
    _inputs: &[(&str, &dyn SlotValue)],
    ctx: &mut RuntimeResourceRef<'_>,
) -> Result<DispatchResult, OpError> {
    let peer = ctx.current.inbound.src_peer.ok_or_else(|| OpError {
        detail: "SenderAsPeers outside an inbound delivery".into(),
        ..Default::default()
    })?;
    Ok(DispatchResult::Immediate(vec![(
        "peers".to_string(),
        Box::new(PeerIdVecValue(vec![peer])) as Box<dyn SlotValue>,
    )]))
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_fuzz",
    op_type: "SenderAsPeers",
    invoke: sender_as_peers,
}

/// A sends `x` to `peers` as `req`; the receiver sends it back to A as
/// `reply`; A outputs the reply as `y`.
struct RoundTrip;
impl Module for RoundTrip {
    fn name(&self) -> &str {
        "RoundTrip"
    }
    fn body(&self, g: &mut Graph) {
        let peers = g.input("peers");
        let x = g.input("x");
        g.net_out("req", peers, x);
        let req = g.lookup_output("req").expect("req");
        g.push_node(NodeProto {
            op_type: "SenderAsPeers".into(),
            domain: FUZZ_DOMAIN.into(),
            input: vec![req.name.clone()],
            // Named `dest` so wire.Send does not ship it as a fill.
            output: vec!["dest".into()],
            metadata_props: vec![StringStringEntryProto {
                key: bb_ir::peer_class::PEER_CLASS_KEY.into(),
                value: bb_ir::peer_class::SELF_CLASS.into(),
            }],
            ..Default::default()
        });
        g.declare_value_info("dest", &bb_ir::types::TYPE_PEER_ID_VEC);
        let dest = Output::new("dest".into(), &bb_ir::types::TYPE_PEER_ID_VEC);
        g.net_out("reply", dest, req);
        let reply = g.lookup_output("reply").expect("reply");
        g.output("y", reply);
    }
}

/// The receiver: a Node running RoundTrip's receiving partition, built on
/// its engine thread by the behaviour (which bridges its ports).
pub fn receiver() -> Behaviour {
    bytesandbrains::ops::link_force();
    let model = Compiler::new()
        .compile(RoundTrip.build().expect("module builds"))
        .expect("module compiles");
    let receiving = model.functions[1].name.clone();
    let me = to_engine_peer(&receiver_peer());
    Behaviour::new(
        move || {
            bytesandbrains::install(
                me,
                vec![Address::empty().p2p(me)],
                model,
                &[&receiving],
                bytesandbrains::Config::new(),
            )
        },
        Config::default()
            .with_max_envelope_bytes(MAX_ENVELOPE_BYTES)
            .with_max_value_bytes(MAX_VALUE_BYTES)
            .with_transfer_budget(TRANSFER_BUDGET),
    )
    .expect("the receiver's Node starts")
}

/// Hands `envelope` from `peer` to `receiver` as one read from the wire
/// (`Behaviour::inject_envelope`), then moves the engine's clock on by
/// `tick_ns` and runs up to `cycles` engine cycles, or until the engine is
/// idle. Returns the refusal the peer would have been answered with.
///
/// The Node runs on its engine thread, which would otherwise take the
/// envelope on its own schedule and at wall-clock time. So the envelope is
/// injected while a call on that thread waits for it, and the same call
/// then runs the cycles: every input is processed the same way, at engine
/// time that only the inputs move, and a crash replays. What the cycles
/// yield (the reply envelope, the `AppEvent`) is dropped.
pub fn deliver(
    receiver: &mut Behaviour,
    peer: PeerId,
    envelope: WireEnvelope,
    cycles: usize,
    tick_ns: u64,
) -> Result<(), Rejection> {
    held(receiver, cycles, tick_ns, |receiver| {
        receiver.inject_envelope(peer, envelope)
    })
}

/// Runs `inject` on `receiver` while its engine thread waits, then moves
/// the engine's clock on by `tick_ns` and runs up to `cycles` engine
/// cycles there (see [`deliver`]).
pub fn held<R>(
    receiver: &mut Behaviour,
    cycles: usize,
    tick_ns: u64,
    inject: impl FnOnce(&mut Behaviour) -> R,
) -> R {
    let (started, on_started) = mpsc::channel::<()>();
    let (injected, on_injected) = mpsc::channel::<()>();
    let node = receiver.handle();
    let call = node.with_node(move |node| {
        let _ = started.send(());
        let _ = on_injected.recv();
        let scheduler = &mut node.engine_install_handle().framework.scheduler;
        let now = scheduler.now_ns().saturating_add(tick_ns);
        scheduler.set_now(now);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..cycles {
            if node.poll(&mut cx).is_pending() {
                break;
            }
        }
    });
    let mut call = std::pin::pin!(call);
    let mut cx = Context::from_waker(Waker::noop());
    // Sends the call (its queue has room at once), then waits until the
    // engine thread runs it.
    loop {
        if call.as_mut().poll(&mut cx).is_ready() {
            panic!("the receiver's engine thread stopped");
        }
        match on_started.try_recv() {
            Ok(()) => break,
            Err(TryRecvError::Empty) => std::thread::yield_now(),
            Err(TryRecvError::Disconnected) => panic!("the receiver's engine thread stopped"),
        }
    }
    let verdict = inject(receiver);
    let _ = injected.send(());
    futures::executor::block_on(call).expect("the receiver's engine thread runs");
    verdict
}

/// An envelope as a RoundTrip sender ships it to the receiver, with
/// `payload` (the value `x`, already encoded) for the receiver's `port`.
pub fn envelope(port: &str, payload: &[u8], src: PeerId) -> WireEnvelope {
    WireEnvelope {
        dest_peer_addresses: vec![p2p_address(&receiver_peer()).to_bytes()],
        fills: vec![SlotFill {
            dest_suffix: Address::empty()
                .site(NodeSiteId::from(portable_site_id(port)))
                .to_bytes(),
            payload: bincode::serialize(&BytesValue(payload.to_vec())).expect("encodes"),
            trigger_only: false,
            type_hash: type_hash_of::<BytesValue>(),
        }],
        correlation: Some(WireCorrelation {
            kind: CorrelationKind::None as i32,
            wire_req_id: 0,
        }),
        remaining_deadline_ns: 100_000_000,
        schema_version: 1,
        src_peer_addresses: vec![p2p_address(&src).to_bytes()],
        ..Default::default()
    }
}
