//! Busy-polling after an answer (`Config::busy_poll`): how long an event
//! loop keeps looking for the next request before it sleeps.
//!
//! A request that arrives while a loop polls is taken without a wake-up of
//! that loop, and the loop's CPU does not go idle, so the caller's own
//! wake-up after the answer does not have to bring a halted CPU back
//! either. Under a serial stream of requests (a `find`, an `rm -rf`, an
//! untar) that is much of a round trip's cost on a virtual machine. It
//! costs CPU time that was idle: `BusyPoll::Adaptive` polls only while
//! requests keep coming, as the kernel's own `haltpoll` does for a guest's
//! idle CPU: after a sleep longer than `BUSY`, the window halves (to none
//! below an eighth of the most); after a shorter one, it is the most again.
//! An idle mount, or one that gets a request now and then, so stops
//! polling after a few requests, and a stream of them is polled for
//! throughout, which is what pays: measured on a 2-CPU VM, a window that
//! also shrank after each sleep longer than itself lost most of the gain
//! on an untar (whose requests come in bursts between the data writes
//! that bypass the daemon), and with two loops taking turns each sleeps
//! through the other's requests too.
//!
//! Polling pays while the requests come one at a time (one caller: the
//! loops' CPUs are otherwise idle). Callers that run in parallel — several
//! threads, on CPUs they keep busy between requests — lose by it: polling
//! takes CPU time from them, and a polling loop serves their requests one
//! after the other (a first `git status`, with its parallel `lstat`s, was
//! 11–14% slower). So an adaptive loop does not poll for its next `HOLD`
//! requests after one that came while another was being answered, or from
//! another thread than the request before it (`InFlight`): the first sign
//! is missed while one polling loop keeps up with both callers, the second
//! is not. Requests no caller waits for (FORGET, RELEASE, INTERRUPT) do
//! not count, and a request counts until its reply is sent, not until the
//! loop is done with it: the caller, woken by the reply, may ask again at
//! once.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Requests after an overlapping one during which an adaptive loop does
/// not poll: parallel callers usually go on for a while. (With 64, a first
/// `git status` — parallel `lstat`s — stayed 5–11% slower than without
/// polling; with 1024 and the thread check it was even in an A/B, though
/// not in every peer run, and serial streams kept their gain.)
const HOLD: u32 = 1024;

/// Requests in a row that no caller waits for (FORGET, INTERRUPT and the
/// like) after which an adaptive loop does not poll: it is serving no
/// caller. Under FUSE over io_uring that is all the /dev/fuse loops get,
/// and their polling after each FORGET was CPU time for nothing (an `rm
/// -rf` with `uring=on`: the daemon's CPU 427 against 328 ms, the same
/// wall time). In a /dev/fuse stream the FORGETs come between a caller's
/// requests, a few at a time, and the loop keeps polling.
const UNWAITED_RUN: u32 = 16;

/// A sleep longer than this means requests stopped coming for now.
const BUSY: Duration = Duration::from_millis(1);

/// How an event loop polls for the next request after answering one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyPoll {
    /// Always for this long, on /dev/fuse and on the io_uring rings. (A
    /// ring thread stopped while it polls holds up an unmount until it runs
    /// again: see `uring.rs`.)
    Fixed(Duration),
    /// For up to this long, while it pays (see the module's doc); the
    /// /dev/fuse loops only, the io_uring rings do not poll.
    Adaptive(Duration),
}

/// One event loop's polling state (each loop has its own; what the loops
/// of a session share is `InFlight`).
#[derive(Debug)]
pub(crate) struct Spinner {
    mode: Option<BusyPoll>,
    /// How long the next poll lasts.
    window: Duration,
    /// Requests left before an adaptive loop polls again after one that
    /// overlapped another.
    hold: u32,
    /// The requests no caller waits for that the loop took in a row.
    unwaited: u32,
}

impl Spinner {
    pub(crate) fn new(mode: Option<BusyPoll>) -> Self {
        let window = match mode {
            Some(BusyPoll::Fixed(d) | BusyPoll::Adaptive(d)) => d,
            None => Duration::ZERO,
        };
        Spinner {
            mode,
            window,
            hold: 0,
            unwaited: 0,
        }
    }

    /// How long to poll after the answer just given (zero: sleep at once).
    pub(crate) fn window(&mut self) -> Duration {
        if self.hold > 0 {
            self.hold -= 1;
            return Duration::ZERO;
        }
        if self.unwaited >= UNWAITED_RUN {
            return Duration::ZERO;
        }
        self.window
    }

    /// The loop took a request with `opcode` from thread `pid`. An
    /// adaptive loop counts it in the session's `in_flight` until its reply
    /// is sent (the returned `Answering`: `ReplySender::Counted`), holds its
    /// polling when it overlapped another (`overlapped`), and notes whether
    /// a caller waits for it (`received`). `None` for a loop that does not
    /// adapt, and for a request no caller waits for.
    pub(crate) fn took(
        &mut self,
        in_flight: &InFlight,
        opcode: u32,
        pid: u32,
    ) -> Option<Arc<Answering>> {
        if !self.adaptive() {
            return None;
        }
        let counted = in_flight.begin(opcode, pid);
        self.received(counted.is_some());
        let (answering, overlapped) = counted?;
        if overlapped {
            self.overlapped();
        }
        Some(answering)
    }

    /// An adaptive loop took a request: one a caller waits for, or not
    /// (`InFlight::begin`). A loop that serves no caller does not poll
    /// (`UNWAITED_RUN`).
    fn received(&mut self, waited: bool) {
        self.unwaited = if waited {
            0
        } else {
            self.unwaited.saturating_add(1)
        };
    }

    /// Whether the loop adapts its polling.
    fn adaptive(&self) -> bool {
        matches!(self.mode, Some(BusyPoll::Adaptive(_)))
    }

    /// The request being answered came while another was (`InFlight`).
    fn overlapped(&mut self) {
        if self.adaptive() {
            self.hold = HOLD;
        }
    }

    /// After the loop slept `d` until a request came (zero when a poll
    /// found it): requests keep coming when `d` is within `BUSY`, and the
    /// window is the most; else it halves, down to none below an eighth of
    /// the most.
    pub(crate) fn slept(&mut self, d: Duration) {
        let Some(BusyPoll::Adaptive(most)) = self.mode else {
            return;
        };
        if d <= BUSY {
            self.window = most;
        } else {
            self.window /= 2;
            if self.window < most / 8 {
                self.window = Duration::ZERO;
            }
        }
    }
}

/// What the loops of one session share to tell overlapping requests.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    /// Requests a caller waits for that are being answered right now.
    answering: AtomicUsize,
    /// The thread that sent the last of them.
    last_pid: AtomicU32,
}

/// One request being answered (`InFlight::begin`): counted until `done`
/// (its reply is sent) or dropped, whichever comes first.
#[derive(Debug)]
pub(crate) struct Answering {
    shared: Arc<Shared>,
    done: AtomicBool,
}

impl Answering {
    /// The reply is being sent: the request no longer counts.
    pub(crate) fn done(&self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            self.shared.answering.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.done();
    }
}

impl InFlight {
    /// Counts the request with `opcode` from thread `pid` until it is
    /// answered, unless no caller waits for it (`None`); with whether it
    /// overlaps: another was being answered, or the last came from another
    /// thread.
    pub(crate) fn begin(&self, opcode: u32, pid: u32) -> Option<(Arc<Answering>, bool)> {
        use crate::ll::fuse_abi::fuse_opcode as op;
        let unwaited = [
            op::FUSE_FORGET as u32,
            op::FUSE_BATCH_FORGET as u32,
            op::FUSE_RELEASE as u32,
            op::FUSE_RELEASEDIR as u32,
            op::FUSE_INTERRUPT as u32,
        ];
        if unwaited.contains(&opcode) {
            return None;
        }
        let others = self.0.answering.fetch_add(1, Ordering::Relaxed);
        let last = self.0.last_pid.swap(pid, Ordering::Relaxed);
        let answering = Answering {
            shared: Arc::clone(&self.0),
            done: AtomicBool::new(false),
        };
        Some((
            Arc::new(answering),
            others > 0 || (last != 0 && last != pid),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOST: Duration = Duration::from_micros(30);

    #[test]
    fn fixed_always_polls_its_window() {
        let mut s = Spinner::new(Some(BusyPoll::Fixed(MOST)));
        for _ in 0..10 {
            assert_eq!(s.window(), MOST);
            s.slept(Duration::from_secs(1));
        }
    }

    /// A request that came while another was answered stops an adaptive
    /// loop's polling for `HOLD` requests; then it polls as before.
    #[test]
    fn adaptive_holds_off_after_an_overlap() {
        let mut s = Spinner::new(Some(BusyPoll::Adaptive(MOST)));
        s.overlapped();
        for i in 0..HOLD {
            assert_eq!(s.window(), Duration::ZERO, "request {i} after the overlap");
            s.slept(Duration::ZERO);
        }
        assert_eq!(s.window(), MOST);
        let mut f = Spinner::new(Some(BusyPoll::Fixed(MOST)));
        f.overlapped();
        assert_eq!(f.window(), MOST, "a fixed window is kept");
    }

    /// Requests overlap while one is counted, until its reply is sent (or
    /// it is dropped unanswered); FORGET, RELEASE and the like are never
    /// counted.
    #[test]
    fn in_flight_tells_overlapping_requests() {
        use crate::ll::fuse_abi::fuse_opcode as op;
        let f = InFlight::default();
        let (a, overlap) = f.begin(op::FUSE_LOOKUP as u32, 7).unwrap();
        assert!(!overlap);
        let (b, overlap) = f.begin(op::FUSE_GETATTR as u32, 7).unwrap();
        assert!(overlap);
        assert!(f.begin(op::FUSE_FORGET as u32, 9).is_none());
        assert!(f.begin(op::FUSE_RELEASE as u32, 9).is_none());
        a.done();
        let (c, overlap) = f.begin(op::FUSE_UNLINK as u32, 7).unwrap();
        assert!(overlap, "the GETATTR is not answered yet");
        b.done();
        b.done();
        drop(b);
        drop(a);
        drop(c);
        let (d, overlap) = f.begin(op::FUSE_UNLINK as u32, 7).unwrap();
        assert!(
            !overlap,
            "each counted once, whether done or dropped; the FORGET's and \
             RELEASE's threads are not looked at"
        );
        drop(d);
        let (_e, overlap) = f.begin(op::FUSE_LOOKUP as u32, 8).unwrap();
        assert!(overlap, "one at a time, but from another thread");
    }

    /// `took`: an adaptive loop counts what a caller waits for, holds after
    /// an overlap; a fixed or no window counts nothing.
    #[test]
    fn took_counts_only_in_an_adaptive_loop() {
        use crate::ll::fuse_abi::fuse_opcode as op;
        let f = InFlight::default();
        let mut fixed = Spinner::new(Some(BusyPoll::Fixed(MOST)));
        assert!(fixed.took(&f, op::FUSE_LOOKUP as u32, 7).is_none());
        let mut s = Spinner::new(Some(BusyPoll::Adaptive(MOST)));
        assert!(s.took(&f, op::FUSE_FORGET as u32, 7).is_none());
        let a = s.took(&f, op::FUSE_LOOKUP as u32, 7).expect("counted");
        assert_eq!(s.window(), MOST, "the first request overlaps nothing");
        let _b = s.took(&f, op::FUSE_LOOKUP as u32, 7).expect("counted");
        assert_eq!(
            s.window(),
            Duration::ZERO,
            "held: the LOOKUP before is not answered"
        );
        drop(a);
    }

    /// A loop that takes only requests no caller waits for (FORGETs, all
    /// the /dev/fuse loops get under io_uring) stops polling; a caller's
    /// request brings the window back.
    #[test]
    fn adaptive_stops_polling_when_no_caller_waits() {
        let mut s = Spinner::new(Some(BusyPoll::Adaptive(MOST)));
        for i in 0..UNWAITED_RUN {
            assert_eq!(s.window(), MOST, "{i} FORGETs in a row");
            s.received(false);
            s.slept(Duration::ZERO);
        }
        assert_eq!(s.window(), Duration::ZERO);
        s.received(false);
        assert_eq!(s.window(), Duration::ZERO);
        s.received(true);
        assert_eq!(s.window(), MOST, "a caller's request");
    }

    #[test]
    fn none_never_polls() {
        let mut s = Spinner::new(None);
        s.slept(Duration::ZERO);
        assert_eq!(s.window(), Duration::ZERO);
    }

    /// Long sleeps between requests (an idle mount, isolated requests)
    /// shrink the window to nothing; one request soon after an answer
    /// brings the whole window back.
    #[test]
    fn adaptive_shrinks_when_requests_stop_and_grows_when_they_come_soon() {
        let mut s = Spinner::new(Some(BusyPoll::Adaptive(MOST)));
        assert_eq!(s.window(), MOST);
        s.slept(Duration::ZERO);
        assert_eq!(s.window(), MOST, "found by the poll");
        s.slept(Duration::from_millis(40));
        assert_eq!(s.window(), MOST / 2);
        s.slept(Duration::from_millis(40));
        assert_eq!(s.window(), MOST / 4);
        s.slept(Duration::from_millis(40));
        assert_eq!(s.window(), MOST / 8);
        s.slept(Duration::from_millis(40));
        assert_eq!(s.window(), Duration::ZERO);
        s.slept(Duration::from_millis(40));
        assert_eq!(s.window(), Duration::ZERO);
        s.slept(BUSY + Duration::from_nanos(1));
        assert_eq!(s.window(), Duration::ZERO, "requests stopped for now");
        s.slept(BUSY);
        assert_eq!(s.window(), MOST, "requests keep coming");
        s.slept(Duration::from_micros(12));
        assert_eq!(s.window(), MOST);
    }
}
