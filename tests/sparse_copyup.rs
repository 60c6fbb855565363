//! Sparse copy-up (src/sparse.rs): a write into a big lower file copies
//! only what it writes, reads merge the upper's written ranges with the
//! lower's, and the extent map keeps that true across a killed daemon and
//! (simulated) reboot, and in overlay format the file is whole once the
//! mount ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use common::*;

const SIZE: usize = 4 << 20;

fn content(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

fn setup(
    tag: &str,
) -> Option<(
    Scratch,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
)> {
    if !can_mount_fuse() && skip_or_fail("sparse copy-up needs FUSE") {
        return None;
    }
    let s = Scratch::new(tag);
    let (l, u, m) = (s.dir("l"), s.dir("u"), s.dir("m"));
    fs::write(l.join("big"), content(1, SIZE)).unwrap();
    Some((s, l, u, m))
}

fn opts(s: &Scratch, extra: &str) -> String {
    format!("workdir={}{extra}", s.dir("w").display())
}

fn kill_daemon(m: Mount) {
    let pid = *m.daemon_pids.first().expect("a daemon");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let dead = wait_until(Duration::from_secs(10), || {
        fs::metadata(m.mnt.join("probe"))
            .err()
            .and_then(|e| e.raw_os_error())
            == Some(libc::ENOTCONN)
    });
    assert!(dead, "the killed daemon's mount never answered ENOTCONN");
    m.unmount_with(&[bin().as_os_str(), "umount".as_ref()]);
}

fn writes(model: &mut [u8], f: &fs::File, at: &[(usize, usize, u64)]) {
    for &(off, len, seed) in at {
        let d = content(seed, len);
        f.write_all_at(&d, off as u64).unwrap();
        model[off..off + len].copy_from_slice(&d);
    }
}

fn check(path: &Path, model: &[u8], what: &str) {
    let got = fs::read(path).unwrap();
    assert_eq!(got.len(), model.len(), "{what}: size");
    if let Some(i) = got.iter().zip(model).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
    // Unaligned reads across range borders, through the mount.
    let f = fs::File::open(path).unwrap();
    for (off, len) in [
        (4095usize, 3usize),
        (1, 70_000),
        (SIZE / 2 - 7, 9000),
        (SIZE - 10, 10),
    ] {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off as u64).unwrap();
        assert_eq!(buf, model[off..off + len], "{what}: read of {len} at {off}");
    }
}

#[test]
fn writes_copy_only_what_they_write_and_reads_merge() {
    let Some((s, l, u, m)) = setup("sparse-rw") else {
        return;
    };
    let mount = Mount::unionfs_opts(&l, &u, &m, &opts(&s, ""));
    let mut model = content(1, SIZE);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("big"))
        .unwrap();
    writes(
        &mut model,
        &f,
        &[
            (1, 1, 7),
            (4090, 20, 8),
            (SIZE / 2, 100_000, 9),
            (SIZE - 3, 3, 10),
        ],
    );
    // The upper holds the written blocks only.
    let blocks = fs::metadata(u.join("big")).unwrap().blocks() * 512;
    assert!(
        blocks < 1 << 20,
        "upper allocates {blocks} bytes for 100 KiB written"
    );
    check(&m.join("big"), &model, "after writes");
    // Concurrent writers on disjoint ranges.
    std::thread::scope(|sc| {
        for t in 0..4u64 {
            let p = m.join("big");
            sc.spawn(move || {
                let f = fs::OpenOptions::new().write(true).open(p).unwrap();
                for i in 0..16u64 {
                    let off = (t * 16 + i) * 16_384 + 100;
                    f.write_all_at(&content(t * 100 + i, 5000), off).unwrap();
                }
            });
        }
    });
    for t in 0..4u64 {
        for i in 0..16u64 {
            let off = ((t * 16 + i) * 16_384 + 100) as usize;
            model[off..off + 5000].copy_from_slice(&content(t * 100 + i, 5000));
        }
    }
    check(&m.join("big"), &model, "after concurrent writes");
    // Append, then truncate down and up: the cut-off tail is zeros, not
    // the lower's bytes.
    let mut a = fs::OpenOptions::new()
        .append(true)
        .open(m.join("big"))
        .unwrap();
    std::io::Write::write_all(&mut a, b"tail").unwrap();
    drop(a);
    model.extend_from_slice(b"tail");
    check(&m.join("big"), &model, "after append");
    let f2 = fs::OpenOptions::new()
        .write(true)
        .open(m.join("big"))
        .unwrap();
    f2.set_len((SIZE - 65_536) as u64).unwrap();
    f2.set_len(SIZE as u64).unwrap();
    model.truncate(SIZE - 65_536);
    model.resize(SIZE, 0);
    check(&m.join("big"), &model, "after truncate down and up");
    f2.sync_all().unwrap();
    drop((f, f2));
    mount.unmount();
    // The upper is still partial (native format: filled never) and reads
    // back the same after a remount.
    let blocks = fs::metadata(u.join("big")).unwrap().blocks() * 512;
    assert!(blocks < 2 << 20, "upper allocates {blocks} bytes");
    let mount = Mount::unionfs_opts(&l, &u, &m, &opts(&s, ""));
    check(&m.join("big"), &model, "after remount");
    // A rename completes it (its data is found by path below).
    fs::rename(m.join("big"), m.join("big2")).unwrap();
    check(&m.join("big2"), &model, "after rename");
    mount.unmount();
    assert_eq!(
        fs::read(u.join("big2")).unwrap(),
        model,
        "the upper alone is whole"
    );
}

#[test]
fn killed_daemon_and_reboot_show_old_or_new_never_zeros() {
    let Some((s, l, u, m)) = setup("sparse-kill") else {
        return;
    };
    let o = opts(&s, "");
    let mut model = content(1, SIZE);
    let old = model.clone();
    let mount = Mount::unionfs_opts(&l, &u, &m, &o);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("big"))
        .unwrap();
    writes(&mut model, &f, &[(10, 5000, 3)]);
    f.sync_all().unwrap();
    let synced = model.clone();
    writes(&mut model, &f, &[(SIZE / 2, 4096, 4), (SIZE - 100, 50, 5)]);
    drop(f);
    // Killed: the page cache survives, the map (same boot) says where the
    // unsynced writes are.
    kill_daemon(mount);
    let mount = Mount::unionfs_opts(&l, &u, &m, &o);
    check(&m.join("big"), &model, "after a killed daemon");
    mount.unmount_with(&[bin().as_os_str(), "umount".as_ref()]);
    // A crash of the machine: what was not synced may be lost on disk, so
    // after a reboot the map's durable list is read. Simulated: write
    // without a sync, kill the daemon, and make the map's boot another.
    let mount = Mount::unionfs_opts(&l, &u, &m, &o);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("big"))
        .unwrap();
    let mut unsynced = model.clone();
    writes(&mut unsynced, &f, &[(2 * SIZE / 3, 7000, 6)]);
    drop(f);
    kill_daemon(mount);
    let name = ["trusted.unionfs.partial", "user.unionfs.partial"]
        .into_iter()
        .find(|n| xattr::get(u.join("big"), n).ok().flatten().is_some())
        .expect("a partial map on the upper");
    let mut v = xattr::get(u.join("big"), name).unwrap().unwrap();
    v[4..40].copy_from_slice(&[b'x'; 36]);
    xattr::set(u.join("big"), name, &v).unwrap();
    let mount = Mount::unionfs_opts(&l, &u, &m, &o);
    let got = fs::read(m.join("big")).unwrap();
    assert_eq!(got.len(), SIZE);
    for (i, (&g, &n)) in got.iter().zip(&unsynced).enumerate() {
        // Every byte is the old (lower) or a written one, never a zero of a
        // lost write; the range synced with fsync is new.
        assert!(
            g == n || g == old[i] || g == model[i],
            "byte {i} is neither old nor new"
        );
    }
    assert_eq!(
        got[10..5010],
        synced[10..5010],
        "the fsynced range survives a reboot"
    );
    assert_eq!(
        got[2 * SIZE / 3..2 * SIZE / 3 + 7000],
        old[2 * SIZE / 3..2 * SIZE / 3 + 7000],
        "a write never synced reads as before after a reboot"
    );
    mount.unmount();
}

#[test]
fn overlay_format_is_whole_when_the_mount_ends() {
    let Some((s, l, u, m)) = setup("sparse-ovl") else {
        return;
    };
    let mount = Mount::unionfs_opts(&l, &u, &m, &opts(&s, ",whiteout=overlay,sparse=on"));
    let mut model = content(1, SIZE);
    let f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(0)
        .open(m.join("big"))
        .unwrap();
    writes(&mut model, &f, &[(12_345, 10, 11), (SIZE - 1, 1, 12)]);
    drop(f);
    check(&m.join("big"), &model, "overlay format, partial");
    mount.unmount();
    assert_eq!(
        fs::read(u.join("big")).unwrap(),
        model,
        "the upper alone is whole"
    );
    for n in [
        "trusted.unionfs.partial",
        "trusted.unionfs.metacopy",
        "user.unionfs.partial",
    ] {
        assert!(
            xattr::get(u.join("big"), n).ok().flatten().is_none(),
            "{n} left on a filled file"
        );
    }
}

#[test]
fn export_writes_a_partial_file_whole() {
    let Some((s, l, u, m)) = setup("sparse-export") else {
        return;
    };
    let mount = Mount::unionfs_opts(&l, &u, &m, &opts(&s, ""));
    let mut model = content(1, SIZE);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("big"))
        .unwrap();
    writes(&mut model, &f, &[(77, 5, 21), (SIZE / 3, 9000, 22)]);
    drop(f);
    mount.unmount();
    assert!(
        fs::metadata(u.join("big")).unwrap().blocks() * 512 < 1 << 20,
        "still partial after the unmount"
    );
    let tar = s.path("layer.tar");
    let out = run_bin(&[
        "export".as_ref(),
        u.as_os_str(),
        tar.as_os_str(),
        "--lowers".as_ref(),
        l.as_os_str(),
    ]);
    assert!(out.ok(), "export failed:\n{out}");
    let x = s.dir("x");
    let untar = run(
        "tar",
        &[
            "-xf".as_ref(),
            tar.as_os_str(),
            "-C".as_ref(),
            x.as_os_str(),
        ],
    );
    assert!(untar.ok(), "tar -x failed:\n{untar}");
    assert!(
        fs::read(x.join("big")).unwrap() == model,
        "the exported file is not the merged one"
    );
    // Without the lowers it is refused, as for any metadata-only file.
    let out = run_bin(&[
        "export".as_ref(),
        u.as_os_str(),
        s.path("l2.tar").as_os_str(),
    ]);
    assert!(
        !out.ok(),
        "an export of a partial file without --lowers succeeded"
    );
}

#[test]
fn truncate_and_o_trunc_of_big_files_copy_nothing_or_nothing_stale() {
    let Some((s, l, u, m)) = setup("sparse-trunc") else {
        return;
    };
    fs::write(l.join("big2"), content(2, SIZE)).unwrap();
    let mount = Mount::unionfs_opts(&l, &u, &m, &opts(&s, ""));
    // truncate(2) of a lower file: partial, the tail cut, no data copied.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("big"))
        .unwrap();
    drop(f);
    let before = content(1, SIZE);
    nix::unistd::truncate(&m.join("big"), (SIZE / 2) as i64).unwrap();
    nix::unistd::truncate(&m.join("big"), SIZE as i64).unwrap();
    let mut model = before[..SIZE / 2].to_vec();
    model.resize(SIZE, 0);
    check(&m.join("big"), &model, "truncated down and up by path");
    let blocks = fs::metadata(u.join("big")).unwrap().blocks() * 512;
    assert!(blocks < 1 << 20, "truncate copied data: {blocks} bytes");
    // A lower file truncated by path before any open.
    nix::unistd::truncate(&m.join("big2"), (SIZE - 1000) as i64).unwrap();
    let model2 = content(2, SIZE)[..SIZE - 1000].to_vec();
    assert!(
        fs::read(m.join("big2")).unwrap() == model2,
        "big2 after truncate"
    );
    assert!(fs::metadata(u.join("big2")).unwrap().blocks() * 512 < 1 << 20);
    // O_TRUNC of a partial file: empty, then new content only.
    let f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.join("big"))
        .unwrap();
    f.write_all_at(b"fresh", 3).unwrap();
    drop(f);
    assert_eq!(fs::read(m.join("big")).unwrap(), b"\0\0\0fresh");
    mount.unmount();
    let mount = Mount::unionfs_opts(&l, &u, &m, &opts(&s, ""));
    assert_eq!(fs::read(m.join("big")).unwrap(), b"\0\0\0fresh");
    assert!(
        fs::read(m.join("big2")).unwrap() == model2,
        "big2 after remount"
    );
    mount.unmount();
}

#[test]
fn a_deleted_partial_file_leaves_nothing_to_a_new_one() {
    let Some((s, l, u, m)) = setup("sparse-reuse") else {
        return;
    };
    let mount = Mount::unionfs_opts(&l, &u, &m, &opts(&s, ""));
    for round in 0..5u64 {
        let name = if round == 0 {
            "big".to_string()
        } else {
            format!("big{round}")
        };
        if round > 0 {
            fs::write(l.join(&name), content(round, SIZE)).unwrap();
        }
        let f = fs::OpenOptions::new().write(true).open(m.join(&name));
        let Ok(f) = f else { continue };
        f.write_all_at(b"partial", 100).unwrap();
        drop(f);
        fs::remove_file(m.join(&name)).unwrap();
        // New files (the upper may give them the deleted file's inode).
        for i in 0..8 {
            let p = m.join(format!("new-{round}-{i}"));
            fs::write(&p, b"new content").unwrap();
            assert_eq!(
                fs::read(&p).unwrap(),
                b"new content",
                "round {round}, file {i}"
            );
        }
    }
    mount.unmount();
}
