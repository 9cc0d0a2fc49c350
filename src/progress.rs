//! Progress, not a flat timeout: a frame may take as long as its bytes keep
//! moving.
//!
//! A flat request timeout fails a healthy slow link: a 3 MiB value over a
//! TCP link of 500 ms round trip losing 1 % of its packets moves at some
//! 35 KB/s and takes a minute and a half. So each frame is read and written
//! in pieces, and fails only when a whole stall period passes with fewer
//! than [`MIN_PROGRESS`] bytes moved (or fewer than what was left of the
//! frame). A peer trickling bytes to hold a stream open is refused at the
//! end of its first stall period.
//!
//! A sender cannot see its bytes arrive: written is not delivered, since a
//! transport buffers what it is given (QUIC takes megabytes at once, within
//! its flow-control window). So after its last byte a sender waits for the
//! acknowledgement a stall period plus the [`drain_allowance`] of what it
//! wrote: the time those bytes may take to cross at the slowest pace the
//! receiver's stall rule accepts. A live receiver always answers (its own
//! stall rule refuses a frame that stops arriving); a dead one's connection
//! closes, which ends the request sooner.
//!
//! [`Progress`] is what the sending side shares with the behaviour: the
//! bytes written so far and when they last moved, so that the behaviour's
//! watchdog ends a request whose bytes never started (or stopped) moving.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::future::{self, Either};
use futures::prelude::*;
use futures_timer::Delay;

/// Bytes that must move in each stall period (or all that is left).
pub const MIN_PROGRESS: usize = 16 * 1024;

/// Largest piece read or written at once.
const PIECE: usize = 64 * 1024;

/// How long `bytes` written may take to cross at the slowest pace the
/// stall rule accepts: [`MIN_PROGRESS`] bytes per `period`.
pub fn drain_allowance(bytes: u64, period: Duration) -> Duration {
    let periods = u32::try_from(bytes / MIN_PROGRESS as u64).unwrap_or(u32::MAX);
    period.saturating_mul(periods)
}

/// A stall: fewer than [`MIN_PROGRESS`] bytes moved in `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled {
    /// The stall period.
    pub period: Duration,
    /// Bytes of the frame moved before the stall.
    pub moved: usize,
}

/// The bytes of one outbound request moved so far, and when they last
/// moved; shared by the codec writing them and the behaviour watching them.
#[derive(Debug, Clone)]
pub struct Progress(Arc<Moved>);

#[derive(Debug)]
struct Moved {
    bytes: AtomicU64,
    /// Nanoseconds after [`base`] of the last movement (or of creation).
    at: AtomicU64,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Nothing moved yet; the idle time counts from now.
    pub fn new() -> Self {
        Self(Arc::new(Moved {
            bytes: AtomicU64::new(0),
            at: AtomicU64::new(now_ns()),
        }))
    }

    pub(crate) fn moved(&self, bytes: usize) {
        self.0.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.0.at.store(now_ns(), Ordering::Relaxed);
    }

    /// Bytes moved so far.
    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// Time since bytes last moved (or since creation).
    pub fn idle(&self) -> Duration {
        Duration::from_nanos(now_ns().saturating_sub(self.0.at.load(Ordering::Relaxed)))
    }
}

/// Watches one frame's bytes against the stall rule. A period starts when
/// the frame first has to wait: a frame that never waits (the common case
/// on a fast link) sets no timer at all.
struct Watch {
    period: Duration,
    timer: Option<Delay>,
    /// Bytes moved when the current period began.
    at_period_start: usize,
    moved: usize,
    total: usize,
}

impl Watch {
    fn new(period: Duration, total: usize) -> Self {
        Self {
            period,
            timer: None,
            at_period_start: 0,
            moved: 0,
            total,
        }
    }

    /// `io`'s output, or `None` when the current period ends first.
    async fn wait<F: Future + Unpin>(&mut self, mut io: F) -> Option<F::Output> {
        if let Poll::Ready(output) = futures::poll!(&mut io) {
            return Some(output);
        }
        if self.timer.is_none() {
            // A period starts now: what moved without waiting counts before it.
            self.at_period_start = self.moved;
            self.timer = Some(Delay::new(self.period));
        }
        let timer = self.timer.as_mut().expect("just set");
        match future::select(io, timer).await {
            Either::Left((output, _)) => Some(output),
            Either::Right(_) => None,
        }
    }

    /// The period ended: another begins if enough moved in it.
    fn period_ended(&mut self) -> Result<(), Stalled> {
        let left = self.total - self.at_period_start;
        if self.moved - self.at_period_start < MIN_PROGRESS.min(left) {
            return Err(Stalled {
                period: self.period,
                moved: self.moved,
            });
        }
        self.at_period_start = self.moved;
        self.timer = None;
        Ok(())
    }
}

/// Reads exactly `len` bytes into a buffer that grows only with what
/// arrives. `Ok(Err(got))` when the stream ended after `got` bytes.
pub(crate) async fn read_body<T: AsyncRead + Unpin>(
    io: &mut T,
    len: usize,
    period: Option<Duration>,
) -> io::Result<Result<Result<Vec<u8>, usize>, Stalled>> {
    // `body[..filled]` arrived; `body[filled..]` is zeroed room for the next
    // read, zeroed once however many reads it takes to fill.
    let mut body: Vec<u8> = Vec::new();
    let mut filled = 0;
    let mut watch = period.map(|p| Watch::new(p, len));
    while filled < len {
        if filled == body.len() {
            let want = PIECE.min(len - filled);
            if body.capacity() - filled < want {
                // Double, but never past the frame: the last growth is exact.
                body.reserve_exact(want.max(filled).min(len - filled));
            }
            body.resize(filled + want, 0);
        }
        let read = io.read(&mut body[filled..]);
        let step = match watch.as_mut() {
            None => Some(read.await),
            Some(watch) => watch.wait(read).await,
        };
        let Some(n) = step else {
            match watch.as_mut().map(Watch::period_ended) {
                Some(Err(stalled)) => return Ok(Err(stalled)),
                _ => continue,
            }
        };
        let n = n?;
        if n == 0 {
            return Ok(Ok(Err(filled)));
        }
        filled += n;
        if let Some(watch) = watch.as_mut() {
            watch.moved += n;
        }
    }
    Ok(Ok(Ok(body)))
}

/// Writes `bytes`, failing with `TimedOut` on a stall and recording what
/// moved in `progress`.
pub(crate) async fn write_all<T: AsyncWrite + Unpin>(
    io: &mut T,
    bytes: &[u8],
    period: Option<Duration>,
    progress: Option<&Progress>,
) -> io::Result<()> {
    let mut watch = period.map(|p| Watch::new(p, bytes.len()));
    let mut written = 0;
    while written < bytes.len() {
        let end = bytes.len().min(written + PIECE);
        let write = io.write(&bytes[written..end]);
        let step = match watch.as_mut() {
            None => Some(write.await),
            Some(watch) => watch.wait(write).await,
        };
        let Some(n) = step else {
            match watch.as_mut().map(Watch::period_ended) {
                Some(Err(stalled)) => return Err(stalled.into()),
                _ => continue,
            }
        };
        let n = n?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
        if let Some(watch) = watch.as_mut() {
            watch.moved += n;
        }
        if let Some(progress) = progress {
            progress.moved(n);
        }
    }
    Ok(())
}

/// `future`, or `TimedOut` after `period`.
pub(crate) async fn within<F, T>(period: Option<Duration>, future: F) -> io::Result<T>
where
    F: Future<Output = io::Result<T>>,
{
    let Some(period) = period else {
        return future.await;
    };
    futures::pin_mut!(future);
    // Most answers are there at once: no timer for those.
    if let Poll::Ready(output) = futures::poll!(&mut future) {
        return output;
    }
    match future::select(future, Delay::new(period)).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("nothing arrived within {period:?}"),
        )),
    }
}

impl From<Stalled> for io::Error {
    fn from(stalled: Stalled) -> Self {
        io::Error::new(io::ErrorKind::TimedOut, stalled.to_string())
    }
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fewer than {MIN_PROGRESS} bytes moved in {:?} (after {} bytes)",
            self.period, self.moved
        )
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::executor::block_on;

    use super::*;

    /// Yields `per_read` bytes per read, sleeping `gap` before each.
    struct Slow {
        left: usize,
        per_read: usize,
        gap: Duration,
        sleeping: Option<Delay>,
    }

    impl AsyncRead for Slow {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let gap = self.gap;
            let sleeping = self.sleeping.get_or_insert_with(|| Delay::new(gap));
            if Pin::new(sleeping).poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleeping = None;
            let n = self.per_read.min(self.left).min(buf.len());
            buf[..n].fill(7);
            self.left -= n;
            Poll::Ready(Ok(n))
        }
    }

    fn slow(len: usize, per_read: usize, gap_ms: u64) -> Slow {
        Slow {
            left: len,
            per_read,
            gap: Duration::from_millis(gap_ms),
            sleeping: None,
        }
    }

    #[test]
    fn a_slow_frame_that_keeps_moving_arrives_whole() {
        // 100 KiB at 16 KiB every 40 ms: longer than two stall periods.
        let period = Some(Duration::from_millis(60));
        let got = block_on(read_body(
            &mut slow(100 * 1024, 16 * 1024, 40),
            100 * 1024,
            period,
        ));
        let body = got.unwrap().unwrap().unwrap();
        assert_eq!(body.len(), 100 * 1024);
        assert_eq!(body.capacity(), 100 * 1024, "the buffer grew exactly");
    }

    #[test]
    fn a_trickle_stalls_at_the_end_of_its_first_period() {
        let period = Some(Duration::from_millis(50));
        let started = Instant::now();
        let got = block_on(read_body(&mut slow(100, 1, 5), 100, period)).unwrap();
        let stalled = got.unwrap_err();
        assert!(stalled.moved > 0 && stalled.moved < 100, "{stalled:?}");
        assert!(started.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn the_last_period_needs_only_what_is_left() {
        // MIN_PROGRESS bytes, then 10 more 30 ms later, in periods of 40 ms:
        // the second period moves all that was left, fewer than
        // MIN_PROGRESS.
        let len = MIN_PROGRESS + 10;
        let period = Some(Duration::from_millis(40));
        let got = block_on(read_body(&mut slow(len, MIN_PROGRESS, 30), len, period));
        assert_eq!(got.unwrap().unwrap().unwrap(), vec![7; len]);
    }

    #[test]
    fn writes_record_their_progress() {
        let progress = Progress::new();
        let mut sink = futures::io::Cursor::new(Vec::new());
        let bytes = vec![1u8; 200 * 1024];
        block_on(write_all(
            &mut sink,
            &bytes,
            Some(Duration::from_secs(1)),
            Some(&progress),
        ))
        .unwrap();
        assert_eq!(progress.bytes(), 200 * 1024);
        assert_eq!(sink.into_inner(), bytes);
    }
}
