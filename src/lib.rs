//! Run [bytesandbrains](https://crates.io/crates/bytesandbrains) Nodes over
//! libp2p.
//!
//! The bytesandbrains engine (`bb-runtime`) is sans-IO: a `Node` runs compiled
//! graphs and, whenever a value must reach another peer, yields
//! `EngineStep::SendEnvelope`; it takes what peers send as
//! `IngressEvent::EnvelopeFrom`. [`Behaviour`] is that transport: a libp2p
//! `NetworkBehaviour` that owns a Node, ships its envelopes on the
//! [`PROTOCOL_NAME`] request-response protocol, feeds inbound envelopes to
//! it, and moves its clock. It keeps the engine's AddressBook in step with
//! the peers the swarm knows, and applies the engine's PeerGovernor (block
//! and allow lists, failure back-off) to libp2p connections; see
//! [`Behaviour`].
//!
//! # Usage
//!
//! ```no_run
//! # fn compiled() -> bb_ir::proto::onnx::ModelProto { unimplemented!() }
//! use bb_libp2p::{to_engine_peer, Behaviour, Config, Event};
//! use bb_runtime::framework::Address;
//! use libp2p::{futures::StreamExt, identity::Keypair};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let key = Keypair::generate_ed25519();
//! let me = to_engine_peer(&key.public().to_peer_id());
//! // Install the Node with the engine PeerId of the swarm's key.
//! let node = bytesandbrains::install(
//!     me,
//!     vec![Address::empty().p2p(me)],
//!     compiled(),
//!     &["Ping_peers#..."],
//!     bytesandbrains::Config::new(),
//! )?;
//! let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
//!     .with_tokio()
//!     .with_tcp(Default::default(), libp2p::noise::Config::new, libp2p::yamux::Config::default)?
//!     .with_behaviour(|_| Behaviour::new(node, Config::default()))?
//!     .build();
//! swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
//! loop {
//!     if let libp2p::swarm::SwarmEvent::Behaviour(Event::AppEvent { topic, value_bytes, .. }) =
//!         swarm.select_next_some().await
//!     {
//!         println!("{topic}: {value_bytes:?}");
//!     }
//! }
//! # }
//! ```
//!
//! The Node is `!Send`: drive the swarm on one task (a current-thread tokio
//! runtime, a `LocalSet`, or `futures::executor::block_on`), never
//! `tokio::spawn`.
#![warn(missing_docs, unreachable_pub)]

mod address_book;
mod admission;
mod behaviour;
mod clock;
pub mod codec;
mod config;
mod contexts;
mod event;
mod outbox;
pub mod peer;
pub mod sites;
mod stats;

pub use behaviour::Behaviour;
pub use codec::PROTOCOL_NAME;
pub use config::Config;
pub use event::{Denial, Event, PeerDenied, RejectKind, Rejection, SendFailure};
pub use peer::{p2p_address, to_engine_peer, to_libp2p_peer, PeerIdConversionError};
pub use stats::WireStats;

/// The README's Rust examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
