//! An envelope's claims about its sender (`src_peer_bytes`,
//! `src_peer_addresses`) never decide whom the receiving engine answers:
//! that is the connection's authenticated peer.

mod common;

use std::time::Duration;

use bb_libp2p::sites::portable_site_id;
use bb_libp2p::{p2p_address, to_engine_peer, Event};
use bb_runtime::envelope::{CorrelationKind, SlotFill, WireCorrelation, WireEnvelope};
use bb_runtime::framework::Address;
use bb_runtime::ids::NodeSiteId;
use bytesandbrains::slot_value::type_hash_of;
use bytesandbrains::syscall::values::BytesValue;
use common::models::{bb_swarm, bytes_value, compile, RoundTrip};
use common::{connect, listen, on_node, run_for, until};
use libp2p::swarm::SwarmEvent;
use libp2p::PeerId;
use prost::Message;

/// The request a RoundTrip sender ships to `dest` for
/// `x = bytes_value(payload)`, claiming to come from `claimed`.
fn spoofed_request(dest: PeerId, claimed: PeerId, payload: &[u8]) -> WireEnvelope {
    WireEnvelope {
        dest_peer_addresses: vec![p2p_address(&dest).to_bytes()],
        fills: vec![SlotFill {
            dest_suffix: Address::empty()
                .site(NodeSiteId::from(portable_site_id("req")))
                .to_bytes(),
            // The engine ships the value it was invoked with (already
            // encoded) wrapped once more as a BytesValue.
            payload: bincode::serialize(&BytesValue(bytes_value(payload))).unwrap(),
            trigger_only: false,
            type_hash: type_hash_of::<BytesValue>(),
        }],
        correlation: Some(WireCorrelation {
            kind: CorrelationKind::None as i32,
            wire_req_id: 0,
        }),
        remaining_deadline_ns: 1_000_000_000,
        src_peer_bytes: to_engine_peer(&claimed).to_bytes(),
        schema_version: 1,
        src_peer_addresses: vec![p2p_address(&claimed).to_bytes()],
        ..Default::default()
    }
}

/// B answers whoever its engine says sent the request. C sends one that
/// names D as its sender; D runs the same partition as C and is connected
/// to B, so a reply addressed by the claim would reach it.
#[tokio::test(flavor = "current_thread")]
async fn a_reply_goes_to_the_connection_peer_not_the_claimed_sender() {
    let (model, targets) = compile(RoundTrip);
    let mut b = bb_swarm(&model, &[&targets[1]]);
    let mut c = bb_swarm(&model, &[&targets[0]]);
    let mut d = bb_swarm(&model, &[&targets[0]]);
    connect(&mut c, &mut b).await;
    connect(&mut d, &mut b).await;

    let payload = b"from C, signed D";
    let envelope = spoofed_request(*b.local_peer_id(), *d.local_peer_id(), payload);
    let size = envelope.encoded_len() as u64;
    // C's behaviour ships what its engine queued, as it is.
    on_node(&c, move |node| {
        node.engine_install_handle()
            .framework
            .outbound_queue
            .push(envelope)
    });
    let got = until(
        &mut [&mut c, &mut b, &mut d],
        Duration::from_secs(10),
        "the reply on C",
        |i, e| match e {
            SwarmEvent::Behaviour(Event::AppEvent {
                topic, value_bytes, ..
            }) => {
                assert_eq!((i, topic.as_str()), (0, "y"), "only C may get the reply");
                Some(value_bytes)
            }
            SwarmEvent::Behaviour(Event::InboundRejected { rejection, .. }) => {
                panic!("swarm {i} refused an envelope: {rejection}")
            }
            _ => None,
        },
    )
    .await;
    assert_eq!(got, bytes_value(payload));

    // Nothing reaches D later either.
    run_for(
        &mut [&mut c, &mut b, &mut d],
        Duration::from_millis(300),
        |i, e| {
            if let SwarmEvent::Behaviour(e @ Event::AppEvent { .. }) = e {
                panic!("swarm {i} emitted {e:?}");
            }
        },
    )
    .await;
    let (b, c, d) = (
        b.behaviour().wire_stats(),
        c.behaviour().wire_stats(),
        d.behaviour().wire_stats(),
    );
    // B took the claim as C sent it, and answered once, to C.
    assert_eq!((b.envelopes_received, b.bytes_received), (1, size));
    assert_eq!(b.envelopes_sent, 1);
    assert_eq!((c.envelopes_sent, c.envelopes_received), (1, 1));
    assert_eq!((d.envelopes_sent, d.envelopes_received), (0, 0));
}

/// The same claim handed in with `inject_envelope` for a peer the swarm
/// has no address of: B has no way to answer C, and must not answer D.
#[tokio::test(flavor = "current_thread")]
async fn an_injected_claim_is_no_route_to_the_claimed_sender() {
    let (model, targets) = compile(RoundTrip);
    let mut b = bb_swarm(&model, &[&targets[1]]);
    let mut c = bb_swarm(&model, &[&targets[0]]);
    let mut d = bb_swarm(&model, &[&targets[0]]);
    listen(&mut c).await;
    connect(&mut d, &mut b).await;

    let (c_id, d_id) = (*c.local_peer_id(), *d.local_peer_id());
    let envelope = spoofed_request(*b.local_peer_id(), d_id, b"relayed");
    b.behaviour_mut()
        .inject_envelope(c_id, envelope)
        .expect("B takes the envelope");
    run_for(
        &mut [&mut c, &mut b, &mut d],
        Duration::from_secs(1),
        |i, e| {
            if let SwarmEvent::Behaviour(e @ Event::AppEvent { .. }) = e {
                panic!("swarm {i} emitted {e:?}");
            }
        },
    )
    .await;
    assert_eq!(d.behaviour().wire_stats().envelopes_received, 0);
}
