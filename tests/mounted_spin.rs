//! Busy-polling (`-o spin=USEC`): after answering a request an event loop
//! keeps looking for the next one for that long instead of sleeping, on
//! /dev/fuse and on the io_uring rings alike; answers are the same.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// CPU time (user + system) of process `pid`.
fn cpu_time(pid: i32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name (which may hold spaces) come the state (3rd
    // field of the line) ... utime and stime (14th and 15th).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// `n` isolated requests (a `stat` of an uncached name, 40 ms apart), the
/// answers checked; returns the daemon's CPU time over them.
fn isolated_requests(pid: i32, mnt: &Path, n: usize) -> Duration {
    let before = cpu_time(pid);
    for i in 0..n {
        let md = fs::metadata(mnt.join(format!("f{i}"))).unwrap();
        assert_eq!(md.len(), i as u64, "f{i} has the wrong size");
        std::thread::sleep(Duration::from_millis(40));
    }
    cpu_time(pid) - before
}

/// With spin=20000 each isolated request is followed by ~20 ms of polling
/// (CPU time of the daemon), without it by none; the answers are right on
/// both, and on the io_uring rings too where the kernel has them.
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
        for spin in ["spin=0", "spin=20000"] {
            let u = s.dir(&format!("upper-{k}-{spin}"));
            let m = Mount::unionfs_opts(&l, &u, &mnt, &format!("{transport},{spin}"));
            let pid = m.daemon_pids[0];
            let t = Instant::now();
            cpu.push(isolated_requests(pid, &m.mnt, N));
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
    }
}
