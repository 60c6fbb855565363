//! FUSE over io_uring (`-o uring=`): requests reach the daemon through its
//! per-CPU ring threads instead of reads of /dev/fuse, and the answers are
//! the same. (With the fuse module parameter `enable_uring` on, every other
//! mounted test runs over the ring too: `scripts/test.sh` runs the suite a
//! second time that way.)
//!
//! Root only: `uring=on` turns the module parameter on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use common::*;

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Creates, writes, lists, reads back and renames through the mount; every
/// answer is checked. Returns how many requests it made at least.
fn workload(mnt: &Path, lower_big: &[u8]) -> u64 {
    const N: usize = 200;
    fs::create_dir(mnt.join("d")).unwrap();
    for i in 0..N {
        fs::write(mnt.join(format!("d/f{i}")), format!("file {i}\n")).unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(mnt.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("f{i}")).collect();
    want.sort();
    assert_eq!(names, want);
    for i in 0..N {
        let p = mnt.join(format!("d/f{i}"));
        assert_eq!(fs::read_to_string(&p).unwrap(), format!("file {i}\n"));
        fs::rename(&p, mnt.join(format!("d/g{i}"))).unwrap();
    }
    // Big payloads both ways through the ring (passthrough is off): a lower
    // file read whole, then copied up by an append and read again.
    let big = mnt.join("big");
    let mut got = Vec::new();
    fs::File::open(&big).unwrap().read_to_end(&mut got).unwrap();
    assert!(got == lower_big, "lower file read back wrong");
    let mut f = fs::OpenOptions::new().append(true).open(&big).unwrap();
    f.write_all(lower_big).unwrap();
    drop(f);
    let got = fs::read(&big).unwrap();
    assert_eq!(got.len(), 2 * lower_big.len());
    assert!(got[..lower_big.len()] == *lower_big && got[lower_big.len()..] == *lower_big);
    (4 * N) as u64
}

#[test]
fn requests_come_through_io_uring_when_asked() {
    if !can_mount_fuse() || !nix::unistd::geteuid().is_root() {
        return;
    }
    if !Path::new(ENABLE_URING).exists() {
        skip_or_fail("this kernel has no FUSE over io_uring");
        return;
    }
    // uring=on turns the parameter on; put it back as it was afterwards.
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = fs::write(ENABLE_URING, &self.0);
        }
    }
    let _restore = Restore(fs::read_to_string(ENABLE_URING).unwrap().trim().to_string());
    let s = Scratch::new("uring");
    let (l, u, mnt) = (s.dir("lower"), s.dir("upper"), s.dir("mnt"));
    // 5 MiB of varied bytes: several full 1 MiB payloads and a partial one.
    let big: Vec<u8> = (0..5 * (1 << 20) + 4321)
        .map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(l.join("big"), &big).unwrap();
    let mount =
        |mode: &str| Mount::unionfs_opts(&l, &u, &mnt, &format!("uring={mode},passthrough=off"));

    let m = mount("on");
    let pid = m.daemon_pids[0];
    // The daemon starts its ring threads once the mount is live (after the
    // INIT handshake), so the mount command may return a moment before.
    assert!(
        wait_for_rings(pid, &m.mnt),
        "uring=on: no ring thread answered"
    );
    let before = switches(pid);
    let requests = workload(&m.mnt, &big);
    let after = switches(pid);
    let ring = after["ring"] - before["ring"];
    let other = after["other"] - before["other"];
    eprintln!("uring=on: ring threads woke {ring}, /dev/fuse loops {other}");
    // Each request wakes a ring thread; the /dev/fuse loops are left with
    // the few FORGETs, so they must not have served the workload.
    assert!(
        ring >= requests,
        "ring threads woke {ring} times for {requests}+ requests"
    );
    assert!(
        other < requests / 4,
        "the /dev/fuse loops woke {other} times: requests did not use the ring"
    );
    m.unmount();

    // The same through /dev/fuse, so the checks above can fail.
    fs::remove_dir_all(&u).unwrap();
    fs::create_dir(&u).unwrap();
    let m = mount("off");
    let pid = m.daemon_pids[0];
    assert_eq!(ring_threads(pid), 0, "uring=off started ring threads");
    let before = switches(pid);
    let requests = workload(&m.mnt, &big);
    let other = switches(pid)["other"] - before["other"];
    eprintln!("uring=off: /dev/fuse loops woke {other}");
    assert!(other >= requests, "/dev/fuse loops woke only {other} times");
    m.unmount();
}
