//! Busy-polling (`-o spin=auto|USEC`): after answering a request an event
//! loop keeps looking for the next one instead of sleeping — for USEC, or
//! (the default, `auto`) for up to 30 µs while requests keep coming — on
//! /dev/fuse and on the io_uring rings alike; answers are the same.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// CPU time (user + system) of the daemon `pid`'s threads: its io_uring
/// threads ("fuser-ring-*") when `ring`, else the others.
fn cpu_time(pid: i32, ring: bool) -> Duration {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    let mut ticks = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.starts_with("fuser-ring") != ring {
            continue;
        }
        let Ok(stat) = fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // After the command name (which may hold spaces) come the state (3rd
        // field of the line) ... utime and stime (14th and 15th).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    Duration::from_millis(ticks * 1000 / hz)
}

/// `n` isolated requests (a `stat` of an uncached name, 40 ms apart), the
/// answers checked; returns the CPU time of the daemon's ring threads
/// (`ring`) or of its /dev/fuse loops over them.
fn isolated_requests(pid: i32, mnt: &Path, n: usize, ring: bool) -> Duration {
    let before = cpu_time(pid, ring);
    for i in 0..n {
        let md = fs::metadata(mnt.join(format!("f{i}"))).unwrap();
        assert_eq!(md.len(), i as u64, "f{i} has the wrong size");
        std::thread::sleep(Duration::from_millis(40));
    }
    cpu_time(pid, ring) - before
}

/// With spin=20000 each isolated request is followed by ~20 ms of polling
/// (CPU time of the threads that answer: the /dev/fuse loops, or the ring
/// threads once the rings are in use), without it by none, and under the
/// default `spin=auto` by little (its window is 30 µs at most, and shrinks
/// to none between isolated requests); the answers are right either way.
#[test]
fn event_loops_poll_for_the_next_request_when_asked() {
    if !can_mount_fuse() {
        return;
    }
    const N: usize = 25;
    let s = Scratch::new("spin");
    let (l, mnt) = (s.dir("lower"), s.dir("mnt"));
    for i in 0..N {
        fs::write(l.join(format!("f{i}")), vec![b'x'; i]).unwrap();
    }
    let mut transports = vec!["uring=off"];
    let root = nix::unistd::geteuid().is_root();
    if root && Path::new(ENABLE_URING).exists() {
        transports.push("uring=on");
    }
    // uring=on turns the parameter on; put it back as it was afterwards.
    struct Restore(Option<String>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(v) = &self.0 {
                let _ = fs::write(ENABLE_URING, v);
            }
        }
    }
    let _restore = Restore(
        fs::read_to_string(ENABLE_URING)
            .ok()
            .map(|v| v.trim().to_string()),
    );
    for (k, transport) in transports.iter().enumerate() {
        let mut cpu = Vec::new();
        for spin in ["spin=0", "spin=20000", "spin=auto"] {
            let u = s.dir(&format!("upper-{k}-{spin}"));
            let m = Mount::unionfs_opts(&l, &u, &mnt, &format!("{transport},{spin}"));
            let pid = m.daemon_pids[0];
            let ring = *transport == "uring=on";
            if ring {
                assert!(wait_for_rings(pid, &m.mnt), "no ring thread answered");
            }
            let t = Instant::now();
            cpu.push(isolated_requests(pid, &m.mnt, N, ring));
            eprintln!(
                "{transport},{spin}: daemon CPU {:?} over {N} isolated requests in {:?}",
                cpu.last().unwrap(),
                t.elapsed()
            );
            // A burst still gets right answers while the loops poll.
            for i in 0..N {
                fs::write(m.mnt.join(format!("n{i}")), format!("{i}")).unwrap();
                assert_eq!(
                    fs::read_to_string(m.mnt.join(format!("n{i}"))).unwrap(),
                    format!("{i}")
                );
            }
            m.unmount();
        }
        // 25 × 20 ms of polling is 500 ms; ask for a fifth of it, against a
        // daemon that sleeps at once and spends a few ms.
        assert!(
            cpu[1] >= Duration::from_millis(100),
            "{transport},spin=20000: the daemon spent only {:?}: it did not poll",
            cpu[1]
        );
        assert!(
            cpu[0] < cpu[1] / 4,
            "{transport}: without spin the daemon spent {:?}, with it {:?}",
            cpu[0],
            cpu[1]
        );
        // The default polls for at most 30 µs, and not at all once requests
        // stop coming: isolated requests cost it what they cost without.
        assert!(
            cpu[2] < cpu[1] / 4,
            "{transport},spin=auto: the daemon spent {:?} over isolated requests \
             (spin=0: {:?}, spin=20000: {:?})",
            cpu[2],
            cpu[0],
            cpu[1]
        );
    }
}
