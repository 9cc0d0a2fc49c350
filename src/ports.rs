//! Which compiled target sends on a port and which receives.
//!
//! `g.net_out(port, peers, value)` splits a Module into targets: the one
//! holding the `wire.Send` (named after the Module, `Gossip#<hash>`) and the
//! one holding the matching `wire.Recv` (named after the input the received
//! value flows into, `Gossip_peers#<hash>`). The names say little about the
//! roles; [`port`] reads them from the compiled model instead.
//!
//! ```
//! # use bytesandbrains::{Compiler, Graph, Module};
//! struct Gossip;
//! impl Module for Gossip {
//!     fn name(&self) -> &str { "Gossip" }
//!     fn body(&self, g: &mut Graph) {
//!         let peers = g.input("peers");
//!         let x = g.input("x");
//!         g.net_out("gossip", peers, x);
//!         let received = g.lookup_output("gossip").expect("the port's output");
//!         g.output("heard", received);
//!     }
//! }
//! bytesandbrains::ops::link_force();
//! let model = Compiler::new().compile(Gossip.build().unwrap()).unwrap();
//! let gossip = bb_libp2p::ports::port(&model, "gossip").unwrap();
//! assert!(gossip.sender.starts_with("Gossip#"));
//! assert!(gossip.receiver.starts_with("Gossip_peers#"));
//! ```

use std::fmt;

use bb_ir::proto::onnx::ModelProto;

use crate::compat::sites::{is_wire, recv_port, send_port};

/// The targets at the two ends of one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The port's name, as given to `g.net_out`.
    pub name: String,
    /// The target to `invoke` on the sending Node: it holds the `wire.Send`.
    pub sender: String,
    /// The target to install on the receiving Node: it holds the
    /// `wire.Recv`, and publishes what arrives.
    pub receiver: String,
}

/// Every port of `model` with both ends in it, in the order of their
/// senders.
pub fn ports(model: &ModelProto) -> Vec<Port> {
    let mut found = Vec::new();
    for function in &model.functions {
        for send in function.node.iter().filter(|n| is_wire(n, "Send")) {
            let Some(name) = send_port(send) else {
                continue;
            };
            if found.iter().any(|p: &Port| p.name == name) {
                continue;
            }
            let receiver = model.functions.iter().find(|f| {
                f.node
                    .iter()
                    .any(|n| is_wire(n, "Recv") && recv_port(n) == Some(name))
            });
            if let Some(receiver) = receiver {
                found.push(Port {
                    name: name.to_string(),
                    sender: function.name.clone(),
                    receiver: receiver.name.clone(),
                });
            }
        }
    }
    found
}

/// The targets at the two ends of `name`.
pub fn port(model: &ModelProto, name: &str) -> Result<Port, UnknownPort> {
    let all = ports(model);
    match all.iter().position(|p| p.name == name) {
        Some(i) => Ok(all.into_iter().nth(i).expect("found above")),
        None => Err(UnknownPort {
            name: name.to_string(),
            known: all.into_iter().map(|p| p.name).collect(),
        }),
    }
}

/// The model has no port of that name with both ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPort {
    /// The name asked for.
    pub name: String,
    /// The ports the model has.
    pub known: Vec<String>,
}

impl fmt::Display for UnknownPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the model has no port {:?}; its ports are {:?}",
            self.name, self.known
        )
    }
}

impl std::error::Error for UnknownPort {}
