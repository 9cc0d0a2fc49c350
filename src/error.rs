//! Errors of starting a Node and of reaching it.

use std::error::Error;
use std::fmt;

/// The Node's engine thread is gone: its behaviour was dropped (or the
/// thread panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStopped;

impl fmt::Display for EngineStopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the Node's engine thread has stopped")
    }
}

impl Error for EngineStopped {}

/// Why [`Behaviour::new`](crate::Behaviour::new) could not start a Node.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The closure that builds the Node failed (or panicked).
    Install(Box<dyn Error + Send + Sync>),
    /// No engine thread could be started.
    Thread(std::io::Error),
    /// The engine thread stopped before the Node started.
    EngineStopped,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Install(e) => write!(f, "installing the Node failed: {e}"),
            StartError::Thread(e) => write!(f, "starting an engine thread failed: {e}"),
            StartError::EngineStopped => f.write_str("the engine thread stopped"),
        }
    }
}

impl Error for StartError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            StartError::Install(e) => Some(e.as_ref()),
            StartError::Thread(e) => Some(e),
            StartError::EngineStopped => None,
        }
    }
}

/// Why [`Behaviour::snapshot`](crate::Behaviour::snapshot) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SnapshotFailed {
    /// The engine could not snapshot the Node.
    Engine(bb_runtime::errors::SnapshotError),
    /// The Node's engine thread is gone.
    EngineStopped,
    /// The envelopes not yet acknowledged, with those in the engine's own
    /// outbound queue, are more than that queue holds
    /// (`NodeConfig::max_outbound_queue`): a snapshot would lose some.
    /// Take it when fewer are outstanding, or raise the engine's cap.
    TooManyUnacknowledged {
        /// Envelopes the snapshot would have to carry.
        held: usize,
        /// What the engine's outbound queue holds.
        cap: usize,
    },
}

impl fmt::Display for SnapshotFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotFailed::Engine(e) => write!(f, "snapshot failed: {e:?}"),
            SnapshotFailed::TooManyUnacknowledged { held, cap } => write!(
                f,
                "{held} unacknowledged envelopes do not fit the engine's outbound queue of {cap}"
            ),
            SnapshotFailed::EngineStopped => f.write_str("the engine thread stopped"),
        }
    }
}

impl Error for SnapshotFailed {}
