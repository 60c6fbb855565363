//! FUSE over io_uring (Linux ≥ 6.14, fuse module parameter `enable_uring=Y`).
//!
//! Added to the vendored fuser 0.18 (see PATCHED.md). The kernel keeps one
//! request queue per possible CPU and hands a request to the queue of the CPU
//! the caller runs on. Each queue here is served by `threads_per_queue`
//! threads pinned to that CPU, each owning an io_uring with one ring entry
//! (a 288-byte header buffer and a payload buffer). A request therefore wakes
//! a thread on the caller's own CPU: no cross-CPU wake-up, which on a VM is an
//! inter-processor interrupt and often a halted vCPU to bring back.
//!
//! Protocol, per entry: REGISTER once (the command completes when the first
//! request is in the buffers), then COMMIT_AND_FETCH with the reply (it
//! completes when the next request is there). The header buffer holds the
//! `fuse_in_header`/`fuse_out_header` (128 bytes), the opcode's own header
//! (128 bytes) and `fuse_uring_ent_in_out` (32 bytes); everything else is in
//! the payload, both ways. The request is put back together as the bytes a
//! read of /dev/fuse would give, parsed and dispatched exactly as the
//! /dev/fuse loop does, and its reply is collected and copied into the entry.
//!
//! Not through the ring (the kernel's choice): INIT, FORGET, INTERRUPT and
//! notifications, so the /dev/fuse loops keep running beside these threads.
//! If registering fails the kernel goes on using /dev/fuse, so a failure here
//! costs speed, never service.
//!
//! Locks: each request's reply slot has a mutex, held only to store or take
//! the reply bytes. The ring and its entry belong to one thread and are never
//! shared.

use std::io;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread;
use std::thread::JoinHandle;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::warn;
use nix::unistd::Uid;
use parking_lot::Mutex;

use crate::Filesystem;
use crate::channel::Channel;
use crate::channel::ChannelSender;
use crate::reply::ReplySender;
use crate::request::RequestWithSender;
use crate::session::FilesystemHolder;
use crate::session::SessionACL;
use crate::session::SessionEventLoop;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;
/// `struct fuse_uring_req_header`: in_out[128], op_in[128], ring_ent_in_out.
const OP_IN_AT: usize = 128;
const OP_IN_LEN: usize = 128;
const ENT_IN_OUT_AT: usize = 256;
const HEADER_LEN: usize = 256 + 32;
/// Offsets inside `fuse_uring_ent_in_out`: flags u64, commit_id u64,
/// payload_sz u32, padding u32, reserved u64.
const COMMIT_ID_AT: usize = ENT_IN_OUT_AT + 8;
const PAYLOAD_SZ_AT: usize = ENT_IN_OUT_AT + 16;

/// Collects the reply of one ring request. Replies may be sent from any
/// thread, so the bytes go through a mutex; the ring thread takes them once
/// the dispatch returns.
#[derive(Debug, Clone)]
pub(crate) struct RingSender {
    slot: Arc<Mutex<Option<Vec<u8>>>>,
    ch: ChannelSender,
}

impl RingSender {
    pub(crate) fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let mut v = Vec::with_capacity(data.iter().map(|b| b.len()).sum());
        for b in data {
            v.extend_from_slice(b);
        }
        let mut slot = self.slot.lock();
        if slot.is_some() {
            return Err(io::Error::other("a second reply to one ring request"));
        }
        *slot = Some(v);
        Ok(())
    }

    /// The /dev/fuse channel, for the ioctls a reply may need (backing files).
    pub(crate) fn channel(&self) -> &ChannelSender {
        &self.ch
    }
}

/// The possible CPUs, as the kernel counts its queues (`num_possible_cpus`).
fn possible_cpus() -> usize {
    let parse = |s: &str| -> Option<usize> {
        let mut last = 0usize;
        for part in s.trim().split(',') {
            let hi = part.rsplit('-').next()?;
            last = last.max(hi.parse::<usize>().ok()?);
        }
        Some(last + 1)
    };
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse(&s))
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Starts the ring threads: `threads_per_queue` for each possible CPU.
pub(crate) fn spawn<FS: Filesystem>(
    ch: &Channel,
    filesystem: &Arc<FilesystemHolder<FS>>,
    allowed: SessionACL,
    session_owner: Uid,
    payload: usize,
    threads_per_queue: usize,
    busy_poll: Option<crate::BusyPoll>,
) -> Vec<JoinHandle<io::Result<()>>> {
    let mut threads = Vec::new();
    for qid in 0..possible_cpus() {
        for k in 0..threads_per_queue {
            let name = format!("fuser-ring-{qid}.{k}");
            let se = SessionEventLoop {
                thread_name: name.clone(),
                filesystem: filesystem.clone(),
                ch: ch.clone(),
                allowed,
                session_owner,
                busy_poll,
                // (unused: a ring keeps no polling state, see ring_loop)
                in_flight: crate::spin::InFlight::default(),
            };
            match thread::Builder::new().name(name).spawn(move || {
                // A ring that cannot run leaves its CPU's requests to
                // /dev/fuse (the kernel uses the rings only once every
                // queue has an entry); it never fails the session.
                if let Err(e) = ring_loop(&se, qid, payload) {
                    warn!("{}: no FUSE over io_uring here: {e}", se.thread_name);
                }
                Ok(())
            }) {
                Ok(t) => threads.push(t),
                Err(e) => warn!("cannot start an io_uring thread: {e}"),
            }
        }
    }
    threads
}

/// One ring entry's buffers. They are leaked, never freed: the kernel may
/// hold a command pointing at them until the ring is torn down, which can
/// be after the thread has gone (it ends only when the connection does).
struct Entry {
    header: Vec<u8>,
    payload: Vec<u8>,
    iov: [libc::iovec; 2],
}

fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        // An offline or forbidden CPU only costs the locality.
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// A URING_CMD for this entry. The kernel wants `sqe->len == 2` (the iovec
/// count), which the io-uring crate has no setter for.
fn command(
    fd: i32,
    op: u32,
    qid: usize,
    commit_id: u64,
    iov: *const libc::iovec,
) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&(qid as u16).to_ne_bytes());
    let sqe = opcode::UringCmd80::new(types::Fd(fd), op)
        .cmd(cmd)
        .addr(Some(iov as u64))
        .build();
    // SAFETY: `squeue::Entry128` is `#[repr(C)]` over the 128-byte SQE
    // (`struct io_uring_sqe` followed by its 64-byte extension); `len` is
    // the u32 at byte 24 of `struct io_uring_sqe` in the kernel ABI. The
    // round trip through bytes changes nothing else.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    // SAFETY: as above; every byte pattern is a valid SQE value.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

fn ring_loop<FS: Filesystem>(
    se: &SessionEventLoop<FS>,
    qid: usize,
    payload: usize,
) -> io::Result<()> {
    pin_to_cpu(qid);
    let fd = se.ch.as_fd().as_raw_fd();
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4)?;
    let ent: &'static mut Entry = Box::leak(Box::new(Entry {
        header: vec![0u8; HEADER_LEN],
        payload: vec![0u8; payload],
        iov: [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2],
    }));
    ent.iov[0] = libc::iovec {
        iov_base: ent.header.as_mut_ptr().cast(),
        iov_len: ent.header.len(),
    };
    ent.iov[1] = libc::iovec {
        iov_base: ent.payload.as_mut_ptr().cast(),
        iov_len: ent.payload.len(),
    };
    let mut next = command(fd, CMD_REGISTER, qid, 0, ent.iov.as_ptr());
    let mut request = Vec::with_capacity(IN_HEADER_LEN + OP_IN_LEN + payload);
    let sender = se.ch.sender();
    let (mut registered, mut retries) = (false, 0);
    // A ring thread polls only for a fixed window asked for: a request the
    // kernel hands to a thread that is between looks waits for the thread's
    // next look (its task work), and one stopped there (SIGSTOP, a frozen
    // cgroup) keeps the connection's teardown, so umount(2), waiting until
    // it runs again; a thread that sleeps in the ring does not. So
    // `BusyPoll::Adaptive` — the default of a program that does not tune —
    // leaves the rings alone (they share the caller's CPU anyway), and
    // a ring thread keeps no polling state of its own.
    let fixed = match se.busy_poll {
        Some(crate::BusyPoll::Fixed(d)) => d,
        _ => std::time::Duration::ZERO,
    };
    loop {
        // SAFETY: the SQE points at `ent.iov` and its buffers, which are
        // leaked: they stay put and alive for as long as the kernel may
        // use them.
        unsafe { ring.submission().push(&next) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        // Busy-polling (see `Config::busy_poll`): the commit is submitted
        // alone, then the ring is looked at (running the task work that
        // delivers a new request) until one came or the time is up.
        let spin_until =
            (registered && !fixed.is_zero()).then(|| std::time::Instant::now() + fixed);
        let mut submitted = false;
        let cqe = loop {
            let spinning = spin_until.is_some_and(|t| std::time::Instant::now() < t);
            let r = if spinning {
                if !submitted {
                    submitted = true;
                    ring.submit().map(|_| ())
                } else {
                    // SAFETY: no argument is passed.
                    unsafe {
                        ring.submitter()
                            .enter::<libc::sigset_t>(0, 0, 1 /* IORING_ENTER_GETEVENTS */, None)
                    }
                    .map(|_| ())
                }
            } else {
                ring.submit_and_wait(1).map(|_| ())
            };
            match r {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
            if let Some(c) = ring.completion().next() {
                break c;
            }
            if spinning {
                thread::yield_now();
            }
        };
        let res = cqe.result();
        // The kernel answers EAGAIN to a REGISTER that comes before it has
        // taken the INIT reply in; try again for a while.
        if res == -libc::EAGAIN && !registered && retries < 100 {
            retries += 1;
            thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        registered = true;
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            return match -res {
                // The connection ended (unmount, abort) or the kernel refused
                // the ring; either way /dev/fuse carries on or is done.
                libc::ENOTCONN | libc::ECANCELED | libc::ENODEV | libc::ECONNABORTED => {
                    debug!("{}: ring ends: {e}", se.thread_name);
                    Ok(())
                }
                _ => Err(e),
            };
        }
        let h = &ent.header;
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let commit_id = u64::from_ne_bytes(
            h[COMMIT_ID_AT..COMMIT_ID_AT + 8]
                .try_into()
                .unwrap_or_default(),
        );
        let payload_sz = u32::from_ne_bytes(
            h[PAYLOAD_SZ_AT..PAYLOAD_SZ_AT + 4]
                .try_into()
                .unwrap_or_default(),
        ) as usize;
        let reply = match len
            .checked_sub(IN_HEADER_LEN + payload_sz)
            .filter(|op_len| *op_len <= OP_IN_LEN && payload_sz <= ent.payload.len())
        {
            Some(op_len) => {
                request.clear();
                request.extend_from_slice(&h[..IN_HEADER_LEN]);
                request.extend_from_slice(&h[OP_IN_AT..OP_IN_AT + op_len]);
                request.extend_from_slice(&ent.payload[..payload_sz]);
                let slot = Arc::new(Mutex::new(None));
                let rs = RingSender {
                    slot: slot.clone(),
                    ch: sender.clone(),
                };
                match RequestWithSender::new(ReplySender::Ring(rs), &request) {
                    Some(req) => req.dispatch(se),
                    None => error!("{}: unparsable request of {len} bytes", se.thread_name),
                }
                let r = slot.lock().take();
                r
            }
            None => {
                error!(
                    "{}: bad ring request: len {len}, payload {payload_sz}",
                    se.thread_name
                );
                None
            }
        };
        // Every request gets an answer, or its caller would wait forever.
        let (out_header, body): ([u8; OUT_HEADER_LEN], &[u8]) = match &reply {
            Some(r)
                if r.len() >= OUT_HEADER_LEN && r.len() - OUT_HEADER_LEN <= ent.payload.len() =>
            {
                let mut oh = [0u8; OUT_HEADER_LEN];
                oh.copy_from_slice(&r[..OUT_HEADER_LEN]);
                (oh, &r[OUT_HEADER_LEN..])
            }
            _ => {
                if reply.is_none() {
                    error!(
                        "{}: request {commit_id} left without a reply; answering EIO",
                        se.thread_name
                    );
                }
                let mut oh = [0u8; OUT_HEADER_LEN];
                oh[0..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_ne_bytes());
                oh[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
                oh[8..16].copy_from_slice(&commit_id.to_ne_bytes());
                (oh, &[][..])
            }
        };
        ent.header[..OUT_HEADER_LEN].copy_from_slice(&out_header);
        ent.payload[..body.len()].copy_from_slice(body);
        ent.header[PAYLOAD_SZ_AT..PAYLOAD_SZ_AT + 4]
            .copy_from_slice(&(body.len() as u32).to_ne_bytes());
        next = command(fd, CMD_COMMIT_AND_FETCH, qid, commit_id, ent.iov.as_ptr());
    }
}
