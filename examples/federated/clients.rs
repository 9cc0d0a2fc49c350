//! The client processes the coordinator starts.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

use super::options::Task;
use super::Result;

/// The client processes, killed if still running when dropped.
pub struct Clients {
    children: Vec<Child>,
    /// Their PeerIds, in start order.
    pub peers: Vec<PeerId>,
}

impl Clients {
    /// Starts `task.clients` copies of this program as clients of the
    /// coordinator at `address`; returns once each has said who it is.
    /// With `metrics`, client k serves its metrics on the port after it
    /// plus k (or a free one, for port 0).
    pub fn spawn(task: &Task, address: &Multiaddr, metrics: Option<SocketAddr>) -> Result<Self> {
        let mut clients = Self {
            children: Vec::new(),
            peers: Vec::new(),
        };
        for index in 0..task.clients {
            let mut command = Command::new(std::env::current_exe()?);
            command
                .args(["client", "--coordinator", &address.to_string()])
                .args(["--index", &index.to_string()])
                .args(task.args());
            if let Some(mut at) = metrics {
                if at.port() != 0 {
                    at.set_port(at.port() + 1 + index as u16);
                }
                command.args(["--metrics", &at.to_string()]);
            }
            let child = command.stdout(Stdio::piped()).spawn()?;
            clients.children.push(child);
        }
        for (index, child) in clients.children.iter_mut().enumerate() {
            let mut line = String::new();
            let stdout = child.stdout.take().expect("stdout is piped");
            BufReader::new(stdout).read_line(&mut line)?;
            let peer = line
                .trim_end()
                .strip_prefix("peer ")
                .ok_or_else(|| format!("client {} printed {line:?}", index + 1))?;
            clients.peers.push(peer.parse()?);
        }
        Ok(clients)
    }

    /// `client k`, numbered from 1 in start order.
    pub fn name(&self, peer: &PeerId) -> String {
        match self.peers.iter().position(|p| p == peer) {
            Some(i) => format!("client {}", i + 1),
            None => format!("unknown peer {peer}"),
        }
    }

    /// Kills the last client; returns its name.
    pub fn kill_last(&mut self) -> Result<String> {
        let child = self.children.last_mut().ok_or("no client")?;
        child.kill()?;
        child.wait()?;
        Ok(format!("client {}", self.children.len()))
    }

    /// Waits for every client to exit, at most until `timeout` has passed;
    /// the ones still running are killed when `self` is dropped.
    pub fn wait(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}
