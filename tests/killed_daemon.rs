//! A daemon killed with SIGKILL in the middle of a workload loses nothing.
//!
//! Each round mounts the same lower, upper and workdir, checks the view against what every
//! earlier round was told had happened, starts a workload (copy-up of a 64 MiB lower file by
//! a one-byte write, appends to a log, creates, renames and deletes), and kills the daemon
//! at a pseudo-random moment. Then:
//!
//! - the dead mount answers ENOTCONN, never hangs;
//! - `unionfs umount` on it succeeds (the daemon is dead, the mount is stale);
//! - the next `unionfs mount` brings the view back, with the workdir's staging area empty;
//! - every operation that returned success is in the view, byte for byte; the one that was
//!   in flight is either wholly done or not done at all: no torn, truncated or lost file.
//!
//! 6 rounds in CI; `UNIONFS_SOAK_KILL_ROUNDS` sets more (the soak setting is 50).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const BIG: usize = 64 << 20;

/// A small deterministic generator (no shared state between tests).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

fn big_content() -> Vec<u8> {
    let mut g = Lcg(42);
    (0..BIG / 8)
        .flat_map(|_| g.next().to_le_bytes())
        .collect::<Vec<u8>>()
}

/// What the view must hold: files under `w/` and the bytes patched into `big`.
#[derive(Clone, Default, Debug, PartialEq)]
struct Model {
    files: BTreeMap<String, Vec<u8>>,
    patches: BTreeMap<usize, u8>,
}

/// The operation in flight when the daemon died: done or not, never half.
#[derive(Clone, Debug)]
enum Pending {
    Patch(usize, u8),
    Append(String, Vec<u8>),
    Create(String, Vec<u8>),
    Rename(String, String),
    Delete(String),
}

impl Model {
    fn apply(&mut self, p: &Pending) {
        match p {
            Pending::Patch(off, b) => {
                self.patches.insert(*off, *b);
            }
            Pending::Append(n, rec) => self.files.entry(n.clone()).or_default().extend(rec),
            Pending::Create(n, data) => {
                self.files.insert(n.clone(), data.clone());
            }
            Pending::Rename(a, b) => {
                if let Some(d) = self.files.remove(a) {
                    self.files.insert(b.clone(), d);
                }
            }
            Pending::Delete(n) => {
                self.files.remove(n);
            }
        }
    }

    /// The states the view may be in, given the operation in flight.
    fn possible(&self, pending: &Option<Pending>) -> Vec<Model> {
        let mut v = vec![self.clone()];
        if let Some(p) = pending {
            let mut done = self.clone();
            done.apply(p);
            v.push(done);
            if let Pending::Create(n, _) = p {
                // created, its data not yet written
                let mut empty = self.clone();
                empty.files.insert(n.clone(), Vec::new());
                v.push(empty);
            }
        }
        v
    }
}

/// `m` without the patches that wrote the byte the lower already had there (they
/// cannot be seen).
fn without_no_op_patches(m: &Model, lower_big: &[u8]) -> Model {
    let mut m = m.clone();
    m.patches.retain(|off, b| lower_big[*off] != *b);
    m
}

fn view(mnt: &Path, lower_big: &[u8]) -> Result<Model, String> {
    let mut m = Model::default();
    for e in fs::read_dir(mnt.join("w")).map_err(|e| format!("readdir w: {e}"))? {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let data = fs::read(e.path()).map_err(|e| format!("read w/{name}: {e}"))?;
        m.files.insert(name, data);
    }
    let big = fs::read(mnt.join("big")).map_err(|e| format!("read big: {e}"))?;
    if big.len() != lower_big.len() {
        return Err(format!(
            "big is {} bytes, not {}",
            big.len(),
            lower_big.len()
        ));
    }
    for (i, (a, b)) in big.iter().zip(lower_big).enumerate() {
        if a != b {
            m.patches.insert(i, *a);
        }
    }
    Ok(m)
}

/// One round's workload, until the mount dies under it. Records every acknowledged
/// operation in `model` and the one in flight in `pending`.
fn workload(mnt: PathBuf, round: usize, state: Arc<Mutex<(Model, Option<Pending>)>>) {
    let mut g = Lcg(round as u64 + 1);
    let step = |p: Pending, f: &mut dyn FnMut() -> std::io::Result<()>| -> bool {
        state.lock().unwrap().1 = Some(p.clone());
        if f().is_err() {
            return false;
        }
        let mut s = state.lock().unwrap();
        s.0.apply(&p);
        s.1 = None;
        true
    };
    for k in 0.. {
        let ok = match (g.next() % 5, k) {
            // the first operation of a round often is the big copy-up
            (0, _) | (_, 0) => {
                let off = (g.next() as usize % (BIG / 4096)) * 4096 + round % 4096;
                let b = b'A' + (round % 26) as u8;
                step(Pending::Patch(off, b), &mut || {
                    let f = fs::OpenOptions::new().write(true).open(mnt.join("big"))?;
                    f.write_all_at(&[b], off as u64)
                })
            }
            (1, _) => {
                let rec = format!("round {round} record {k}\n").into_bytes();
                step(Pending::Append("log".into(), rec.clone()), &mut || {
                    fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .mode(0o644)
                        .open(mnt.join("w/log"))?
                        .write_all(&rec)
                })
            }
            (2, _) => {
                let n = format!("f-{round}-{k}");
                let data = format!("{n} ").repeat(1 + k % 300).into_bytes();
                step(Pending::Create(n.clone(), data.clone()), &mut || {
                    fs::write(mnt.join("w").join(&n), &data)
                })
            }
            (3, _) => {
                let names: Vec<String> = state.lock().unwrap().0.files.keys().cloned().collect();
                let Some(a) = names.iter().find(|n| n.starts_with("f-")).cloned() else {
                    continue;
                };
                let b = a.replacen("f-", "g-", 1);
                step(Pending::Rename(a.clone(), b.clone()), &mut || {
                    fs::rename(mnt.join("w").join(&a), mnt.join("w").join(&b))
                })
            }
            _ => {
                let names: Vec<String> = state.lock().unwrap().0.files.keys().cloned().collect();
                let Some(a) = names.iter().find(|n| n.starts_with("g-")).cloned() else {
                    continue;
                };
                step(Pending::Delete(a.clone()), &mut || {
                    fs::remove_file(mnt.join("w").join(&a))
                })
            }
        };
        if !ok || k > 100_000 {
            return;
        }
    }
}

#[test]
fn sigkill_of_the_daemon_mid_workload_loses_nothing() {
    if !can_mount_fuse() {
        return;
    }
    let rounds: usize = std::env::var("UNIONFS_SOAK_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let s = Scratch::new("killed");
    let lower = s.dir("lower");
    let lower_big = big_content();
    fs::write(lower.join("big"), &lower_big).unwrap();
    mkdir(&lower, "w", 0o755);
    let before = snapshot_all(&[&lower]);
    let upper = s.dir("upper");
    let work = s.dir("work");
    let mnt = s.dir("mnt");
    let opts = format!("workdir={}", work.display());
    let mut model = Model::default();
    let mut pending: Option<Pending> = None;
    let mut g = Lcg(7);
    for round in 0..rounds {
        let m = Mount::unionfs_opts(&lower, &upper, &mnt, &opts);
        let staged: Vec<_> = fs::read_dir(work.join("unionfs-work"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            staged.is_empty(),
            "round {round}: leftovers in the workdir: {staged:?}"
        );
        let seen = view(&m.mnt, &lower_big).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let possible = model.possible(&pending);
        let Some(now) = possible
            .iter()
            .find(|p| without_no_op_patches(p, &lower_big) == seen)
        else {
            panic!(
                "round {round}: the view matches no possible state\n pending: {pending:?}\n \
                 view files: {:?}\n model files: {:?}\n view patches: {:?}\n model patches: {:?}",
                seen.files.keys().collect::<Vec<_>>(),
                model.files.keys().collect::<Vec<_>>(),
                seen.patches,
                model.patches
            )
        };
        model = now.clone();
        let state = Arc::new(Mutex::new((model.clone(), None)));
        let worker = {
            let (mnt, state) = (m.mnt.clone(), Arc::clone(&state));
            std::thread::spawn(move || workload(mnt, round, state))
        };
        std::thread::sleep(Duration::from_millis(20 + g.next() % 400));
        let pid = *m.daemon_pids.first().expect("a daemon");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
        worker.join().unwrap();
        // (a stat could be answered from the kernel's attribute cache: a create
        // must reach the daemon). While the kernel tears the connection down a
        // request may be aborted (ECONNABORTED); once it is down: ENOTCONN.
        let dead = wait_until(Duration::from_secs(10), || {
            let err = fs::write(m.mnt.join(format!("w/probe-{round}")), b"").unwrap_err();
            let e = err.raw_os_error();
            assert!(
                e == Some(libc::ENOTCONN) || e == Some(libc::ECONNABORTED),
                "round {round}: the dead mount answers {err}"
            );
            e == Some(libc::ENOTCONN)
        });
        assert!(
            dead,
            "round {round}: the dead mount never answered ENOTCONN"
        );
        (model, pending) = {
            let s = state.lock().unwrap();
            (s.0.clone(), s.1.clone())
        };
        eprintln!(
            "round {round}: {} files, {} patches of big, in flight: {:?}",
            model.files.len(),
            model.patches.len(),
            pending.as_ref().map(|p| match p {
                Pending::Patch(..) => "copy-up/patch of big",
                Pending::Append(..) => "append",
                Pending::Create(..) => "create",
                Pending::Rename(..) => "rename",
                Pending::Delete(..) => "delete",
            })
        );
        m.unmount_with(&[bin().as_os_str(), "umount".as_ref()]);
    }
    // the last round's survivors, once more
    let m = Mount::unionfs_opts(&lower, &upper, &mnt, &opts);
    let seen = view(&m.mnt, &lower_big).unwrap();
    assert!(
        model
            .possible(&pending)
            .iter()
            .any(|p| without_no_op_patches(p, &lower_big) == seen),
        "after the last round"
    );
    m.unmount();
    assert_unchanged(&before);
}
