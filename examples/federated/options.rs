//! The command line: what the coordinator runs, and what it tells each
//! client process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;

use super::hashed;
use super::ml::{self, Dataset, Features};
use super::Result;

/// The most buckets `--buckets` takes: a parameter vector within the
/// behaviour's default largest value (1 GiB), with room for the message
/// around it.
const MAX_BUCKETS: usize = (1 << 28) - 1024;

/// What the program says when its arguments are wrong.
pub const USAGE: &str =
    "usage: federated [--clients N] [--rounds R] [--cohort M] [--transport tcp|quic]
                 [--model dense|hashed] [--buckets B] [--non-iid] [--samples S]
                 [--seed X] [--round-deadline-ms T] [--kill-client-after-round K]
                 [--plot PATH] [--metrics <host:port>]";

/// The transport the coordinator listens on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP with noise and yamux.
    Tcp,
    /// QUIC.
    Quic,
}

impl Transport {
    /// A loopback address on a free port.
    pub fn listen_address(self) -> Multiaddr {
        match self {
            Transport::Tcp => "/ip4/127.0.0.1/tcp/0",
            Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        }
        .parse()
        .expect("a valid multiaddr")
    }
}

/// The learning task, which the coordinator and every client derive alike
/// from the same options.
#[derive(Clone)]
pub struct Task {
    /// Client processes.
    pub clients: usize,
    /// Training samples, over all shards.
    pub samples: usize,
    /// Seed of the data.
    pub seed: u64,
    /// Whether shards are skewed by label.
    pub non_iid: bool,
    /// The model.
    pub features: Features,
}

impl Task {
    /// The clients' shards and the held-out test split.
    pub fn data(&self) -> (Vec<Dataset>, Dataset) {
        let (train, test) = self
            .features
            .synthetic_task(self.seed, self.samples, self.samples / 4);
        (
            ml::shards(&train, self.clients, self.non_iid, self.seed),
            test,
        )
    }

    /// The options that reproduce it in a client process.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--clients".into(),
            self.clients.to_string(),
            "--samples".into(),
            self.samples.to_string(),
            "--seed".into(),
            self.seed.to_string(),
        ];
        if self.non_iid {
            args.push("--non-iid".into());
        }
        if let Features::Hashed { buckets } = self.features {
            args.extend(["--model".into(), "hashed".into()]);
            args.extend(["--buckets".into(), buckets.to_string()]);
        }
        args
    }
}

/// The coordinator's options.
pub struct Options {
    /// The task.
    pub task: Task,
    /// Rounds to run.
    pub rounds: u64,
    /// Clients sampled per round (all, if `None`).
    pub cohort: Option<u32>,
    /// The transport.
    pub transport: Transport,
    /// How long a round takes updates.
    pub round_deadline: Duration,
    /// Kill the last client after this round.
    pub kill_after: Option<u64>,
    /// Where the curves go.
    pub plot: PathBuf,
    /// Where the coordinator serves its metrics.
    pub metrics: Option<SocketAddr>,
}

/// What this process is.
pub enum Mode {
    /// The coordinator.
    Coordinator(Options),
    /// A client process: the coordinator's address, the client's index and
    /// where it serves its metrics.
    Client(Task, Multiaddr, usize, Option<SocketAddr>),
}

/// Reads the program's arguments.
pub fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Mode> {
    let mut task = Task {
        clients: 4,
        samples: 8000,
        seed: 7,
        non_iid: false,
        features: Features::Dense,
    };
    let mut options = Options {
        task: task.clone(),
        rounds: 10,
        cohort: None,
        transport: Transport::Tcp,
        round_deadline: Duration::from_millis(2000),
        kill_after: None,
        plot: "federated.svg".into(),
        metrics: None,
    };
    let (mut hashed, mut buckets, mut deadline) = (false, None, None);
    let mut client = false;
    let mut coordinator = None;
    let mut index = None;
    fn value<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse().map_err(|e| format!("{flag} {v}: {e}").into())
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--clients" => task.clients = value(&arg, args.next())?,
            "--samples" => task.samples = value(&arg, args.next())?,
            "--seed" => task.seed = value(&arg, args.next())?,
            "--non-iid" => task.non_iid = true,
            "--rounds" => options.rounds = value(&arg, args.next())?,
            "--cohort" => options.cohort = Some(value(&arg, args.next())?),
            "--transport" => {
                options.transport = match args.next().as_deref() {
                    Some("tcp") => Transport::Tcp,
                    Some("quic") => Transport::Quic,
                    _ => return Err("--transport takes tcp or quic".into()),
                }
            }
            "--model" => {
                hashed = match args.next().as_deref() {
                    Some("dense") => false,
                    Some("hashed") => true,
                    _ => return Err("--model takes dense or hashed".into()),
                }
            }
            "--buckets" => buckets = Some(value::<usize>(&arg, args.next())?),
            "--round-deadline-ms" => {
                deadline = Some(Duration::from_millis(value(&arg, args.next())?))
            }
            "--kill-client-after-round" => options.kill_after = Some(value(&arg, args.next())?),
            "--plot" => options.plot = value(&arg, args.next())?,
            "--metrics" => options.metrics = Some(value(&arg, args.next())?),
            // Hidden: how the coordinator starts its clients.
            "client" => client = true,
            "--coordinator" => coordinator = Some(value::<Multiaddr>(&arg, args.next())?),
            "--index" => index = Some(value::<usize>(&arg, args.next())?),
            _ => return Err(format!("unexpected argument {arg:?}").into()),
        }
    }
    if task.clients == 0 || task.samples < 4 * task.clients {
        return Err("needs at least one client and four samples per client".into());
    }
    task.features = match (hashed, buckets) {
        (false, None) => Features::Dense,
        (false, Some(_)) => return Err("--buckets goes with --model hashed".into()),
        (true, buckets) => {
            let buckets = buckets.unwrap_or(hashed::DEFAULT_BUCKETS);
            if !(1..=MAX_BUCKETS).contains(&buckets) {
                return Err(format!("--buckets takes 1 to {MAX_BUCKETS}").into());
            }
            Features::Hashed { buckets }
        }
    };
    // A big model's round moves hundreds of MiB each way.
    options.round_deadline = deadline.unwrap_or(match task.features {
        Features::Dense => Duration::from_secs(2),
        Features::Hashed { .. } => Duration::from_secs(120),
    });
    options.task = task.clone();
    match (client, coordinator, index) {
        (true, Some(address), Some(index)) if index < task.clients => {
            Ok(Mode::Client(task, address, index, options.metrics))
        }
        (false, None, None) => Ok(Mode::Coordinator(options)),
        _ => Err("a client takes client --coordinator <address> --index <i>".into()),
    }
}
