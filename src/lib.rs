//! Run [bytesandbrains](https://crates.io/crates/bytesandbrains) Nodes over
//! libp2p.
//!
//! The bytesandbrains engine (`bb-runtime`) is sans-IO: a `Node` runs compiled
//! graphs and, whenever a value must reach another peer, yields
//! `EngineStep::SendEnvelope`; it takes what peers send as
//! `IngressEvent::EnvelopeFrom`. [`Behaviour`] is that transport: a libp2p
//! `NetworkBehaviour` that ships a Node's envelopes on the [`PROTOCOL_NAME`]
//! and [`TRANSFER_PROTOCOL`] request-response protocols (values up to 1 GiB
//! by default, the large ones in chunks: see [`transfer`]), feeds inbound
//! envelopes to it, and moves its clock. It keeps the engine's AddressBook in step with the peers the swarm
//! knows, and applies the engine's PeerGovernor (block and allow lists,
//! failure back-off) to libp2p connections; see [`Behaviour`].
//!
//! The Node is `!Send` and its graphs may compute for seconds, so it lives on
//! an engine thread ([`EnginePool`]), built there by a closure you pass to
//! [`Behaviour::new`]. The behaviour is `Send`: spawn the swarm on any
//! executor. Reach the Node through a [`NodeHandle`].
//!
//! [`values`] builds and decodes the common values (peer lists, bytes,
//! `f32`s), [`ports`] says which compiled target sends on a port and which
//! receives, and [`Metrics`] records Prometheus metrics.
//!
//! # Usage
//!
//! ```no_run
//! # fn compiled() -> bb_ir::proto::onnx::ModelProto { unimplemented!() }
//! use bb_libp2p::{to_engine_peer, Address, Behaviour, Config, Event};
//! use libp2p::{futures::StreamExt, identity::Keypair};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let key = Keypair::generate_ed25519();
//! let me = to_engine_peer(&key.public().to_peer_id());
//! // The Node is installed on its engine thread, with the engine PeerId of
//! // the swarm's key.
//! let behaviour = Behaviour::new(
//!     move || {
//!         bytesandbrains::install(
//!             me,
//!             vec![Address::empty().p2p(me)],
//!             compiled(),
//!             &["Ping_peers#..."],
//!             bytesandbrains::Config::new(),
//!         )
//!     },
//!     Config::default(),
//! )?;
//! let node = behaviour.handle();
//! let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
//!     .with_tokio()
//!     .with_tcp(Default::default(), libp2p::noise::Config::new, libp2p::yamux::Config::default)?
//!     .with_behaviour(|_| behaviour)?
//!     .build();
//! swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
//! // The swarm is Send: run it on a task of its own.
//! tokio::spawn(async move {
//!     loop {
//!         if let libp2p::swarm::SwarmEvent::Behaviour(Event::AppEvent { sender, topic, value_bytes }) =
//!             swarm.select_next_some().await
//!         {
//!             // `sender` is the authenticated peer the value came from.
//!             println!("{topic} from {sender:?}: {:?}", bb_libp2p::values::decode_bytes(&value_bytes));
//!         }
//!     }
//! });
//! // Any task reaches the Node through its handle.
//! let peer = node.with_node(|node| node.peer_id()).await?;
//! # let _ = peer;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod ack;
mod address_book;
mod admission;
mod behaviour;
mod clock;
pub mod codec;
mod compat;
mod config;
mod engine;
mod error;
mod event;
mod health;
mod inbound;
mod ingress_share;
mod metrics;
mod outbound;
mod outbox;
pub mod peer;
pub mod ports;
pub mod progress;
mod redelivery;
mod relayed;
mod stats;
pub mod transfer;
pub mod values;

pub use behaviour::Behaviour;
pub use codec::PROTOCOL_NAME;
pub use compat::sites;
pub use config::Config;
pub use engine::{AppEvents, EnginePool, NodeHandle};
pub use error::{EngineStopped, SnapshotFailed, StartError};
pub use event::{AppEvent, Denial, Event, PeerDenied, RejectKind, Rejection, SendFailure};
pub use metrics::Metrics;
pub use peer::{p2p_address, to_engine_peer, to_libp2p_peer, PeerIdConversionError};
pub use stats::WireStats;
pub use transfer::TRANSFER_PROTOCOL;

/// The engine types an application names when it uses this crate, so that
/// it need not depend on `bb-runtime` itself.
pub use bb_runtime::{
    engine::EngineStep, envelope::WireEnvelope, framework::Address, ingress::IngressEvent,
    node::Node, snapshot::NodeSnapshot,
};

/// The README's Rust examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
