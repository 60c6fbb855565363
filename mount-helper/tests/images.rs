//! End-to-end tests of `--image oci:DIR` / `docker-archive:FILE`, the layer
//! store, `images` and `rmi`: images saved by podman, and layouts made here
//! by hand (including tampered and hostile ones). Each test has its own
//! store and state directory and checks that nothing is left behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest as _, Sha256};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_unionfs-run"))
}

/// Says why a test does not run; with UNIONFS_TEST_REQUIRE=1 (CI) a test
/// that cannot run is a failure instead.
fn skip(why: &str) {
    if std::env::var_os("UNIONFS_TEST_REQUIRE").is_some_and(|v| v == "1") {
        panic!("UNIONFS_TEST_REQUIRE=1 but the test cannot run: {why}");
    }
    eprintln!("skipped: {why}");
}

fn ready() -> bool {
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        skip("needs root and /dev/fuse");
        return false;
    }
    assert!(
        bin().with_file_name("unionfs").is_file(),
        "unionfs is missing: run the suite with `cargo test --workspace`"
    );
    true
}

fn debian_root() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("UNIONFS_TEST_ROOTFS")?);
    p.join("usr/bin/dpkg").exists().then_some(p)
}

/// A store and a launcher state dir of one test; removed on drop.
struct Env {
    dir: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Env {
        let dir = PathBuf::from(format!(
            "/var/tmp/unionfs-run-imgtest-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state")).unwrap();
        Env { dir }
    }

    fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("UNIONFS_RUN_DIR", self.dir.join("state"))
            .env("UNIONFS_RUN_STORE", self.store())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn layers(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.store().join("layers/sha256"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// No staging left, nothing mounted, no container state.
    fn assert_clean(&self) {
        let tmp: Vec<_> = std::fs::read_dir(self.store().join("tmp"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(tmp.is_empty(), "staging left: {tmp:?}");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.contains(&*self.dir.to_string_lossy()),
            "left mounted:\n{mounts}"
        );
        let state: Vec<_> = std::fs::read_dir(self.dir.join("state"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(state.is_empty(), "container state left: {state:?}");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for l in mounts.lines() {
            if let Some(m) = l.split(' ').nth(1) {
                if m.starts_with(&*self.dir.to_string_lossy()) {
                    let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---- layer tars and layouts made by hand ----

#[derive(Clone)]
enum E {
    Dir(&'static str, u32),
    File(&'static str, &'static str, u32),
    /// A file with owner, mode, mtime and xattrs (PAX).
    Rich(&'static str, &'static str, u32, u32, u32, u64, &'static str),
    Sym(&'static str, &'static str),
    Hard(&'static str, &'static str),
    Fifo(&'static str),
    Char(&'static str, u32, u32),
    /// A regular file whose name is written raw (may hold `..` or a leading `/`).
    Raw(&'static str),
    /// A hard link whose target is written raw.
    RawHard(&'static str, &'static str),
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h
}

fn raw_name(h: &mut tar::Header, field: &str, v: &str) {
    let gnu = h.as_gnu_mut().unwrap();
    let f = if field == "name" {
        &mut gnu.name
    } else {
        &mut gnu.linkname
    };
    *f = [0; 100];
    f[..v.len()].copy_from_slice(v.as_bytes());
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p, m) => {
                let mut h = header(T::Directory, 0, *m);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, data, m) => {
                let mut h = header(T::Regular, data.len() as u64, *m);
                b.append_data(&mut h, p, data.as_bytes()).unwrap();
            }
            E::Rich(p, data, uid, gid, m, mtime, xattr) => {
                let (k, v) = xattr.split_once('=').unwrap();
                b.append_pax_extensions([(format!("SCHILY.xattr.{k}").as_str(), v.as_bytes())])
                    .unwrap();
                let mut h = header(T::Regular, data.len() as u64, *m);
                h.set_uid(u64::from(*uid));
                h.set_gid(u64::from(*gid));
                h.set_mtime(*mtime);
                b.append_data(&mut h, p, data.as_bytes()).unwrap();
            }
            E::Sym(p, t) => {
                let mut h = header(T::Symlink, 0, 0o777);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Hard(p, t) => {
                let mut h = header(T::Link, 0, 0o644);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Fifo(p) => {
                let mut h = header(T::Fifo, 0, 0o640);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::Char(p, maj, min) => {
                let mut h = header(T::Char, 0, 0o666);
                h.set_device_major(*maj).unwrap();
                h.set_device_minor(*min).unwrap();
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::Raw(p) => {
                let mut h = header(T::Regular, 5, 0o644);
                raw_name(&mut h, "name", p);
                h.set_cksum();
                b.append(&h, &b"pwned"[..]).unwrap();
            }
            E::RawHard(p, t) => {
                let mut h = header(T::Link, 0, 0o644);
                raw_name(&mut h, "name", p);
                raw_name(&mut h, "link", t);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

#[derive(Clone, Copy, PartialEq)]
enum Comp {
    None,
    Gzip,
    Zstd,
}

fn compress(tar: &[u8], c: Comp) -> (Vec<u8>, &'static str) {
    match c {
        Comp::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Comp::Gzip => {
            let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            g.write_all(tar).unwrap();
            (
                g.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Comp::Zstd => (
            zstd::encode_all(tar, 1).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

fn host_arch() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    }
}

/// What to break in a layout.
#[derive(Clone, Copy, PartialEq)]
enum Tamper {
    Nothing,
    MissingBlob,
    BlobDigest,
    DiffId,
    MediaType,
}

/// Writes an OCI layout at `dir` with these layers (bottom first) and this
/// `config` object; the image is tagged `name`.
fn layout(
    dir: &Path,
    layers: &[(Vec<u8>, Comp)],
    config: serde_json::Value,
    name: &str,
    tamper: Tamper,
) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |b: &[u8]| -> String {
        let h = sha(b);
        std::fs::write(blobs.join(&h), b).unwrap();
        h
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, (tar, c)) in layers.iter().enumerate() {
        let (blob, mut media) = compress(tar, *c);
        let h = put(&blob);
        let last = i + 1 == layers.len();
        if last && tamper == Tamper::MissingBlob {
            std::fs::remove_file(blobs.join(&h)).unwrap();
        }
        if last && tamper == Tamper::BlobDigest {
            let mut bad = blob.clone();
            let n = bad.len();
            bad[n - 1] ^= 0xff;
            std::fs::write(blobs.join(&h), bad).unwrap();
        }
        if last && tamper == Tamper::MediaType {
            media = "application/vnd.example.layer.v1.tar+lz4";
        }
        let mut diff = sha(tar);
        if last && tamper == Tamper::DiffId {
            diff = sha(b"something else");
        }
        diff_ids.push(format!("sha256:{diff}"));
        descs.push(serde_json::json!({"mediaType": media, "digest": format!("sha256:{h}"), "size": blob.len()}));
    }
    let config = serde_json::json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let cbytes = serde_json::to_vec(&config).unwrap();
    let ch = put(&cbytes);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{ch}"), "size": cbytes.len()},
        "layers": descs,
    });
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let mh = put(&mbytes);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{mh}"), "size": mbytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": name}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn hand_made_layers_are_stacked_as_they_are_and_config_applies() {
    if !ready() {
        return;
    }
    let Some(deb) = debian_root() else {
        skip("set UNIONFS_TEST_ROOTFS to a Debian root (scripts/debian-rootfs.sh)");
        return;
    };
    let env = Env::new("hand");
    let lower = tar_of(&[
        E::Dir("./", 0o755),
        E::Dir("opt/", 0o755),
        E::File("opt/keep", "lower keep\n", 0o644),
        E::File("opt/gone", "lower gone\n", 0o644),
        E::Dir("opt/opq/", 0o755),
        E::File("opt/opq/old", "old\n", 0o644),
    ]);
    let upper = tar_of(&[
        E::Dir("opt/", 0o755),
        E::File("opt/.wh.gone", "", 0o644),
        E::Dir("opt/opq/", 0o755),
        E::File("opt/opq/.wh..wh..opq", "", 0o644),
        E::File("opt/opq/new", "new\n", 0o644),
        E::Rich(
            "opt/suid",
            "#!/bin/sh\n",
            1,
            2,
            0o4755,
            1_234_567_890,
            "user.test=v1",
        ),
        E::Hard("opt/suid-link", "opt/suid"),
        E::Sym("opt/etc-link", "/etc"),
        E::Fifo("opt/fifo"),
        E::Char("opt/null", 1, 3),
        E::Dir("work/", 0o755),
    ]);
    let img = env.dir.join("oci");
    let config = serde_json::json!({
        "Env": ["FROM_IMAGE=yes", "PATH=/usr/local/bin:/usr/bin:/bin"],
        "Entrypoint": ["sh", "-c"],
        "Cmd": ["echo default; id -u; id -g; pwd; echo $FROM_IMAGE"],
        "WorkingDir": "/work",
        "User": "daemon",
    });
    layout(
        &img,
        &[(lower.clone(), Comp::Gzip), (upper.clone(), Comp::Zstd)],
        config,
        "localhost/hand:v1",
        Tamper::Nothing,
    );
    let image = format!("oci:{}:v1", img.display());
    let debs = deb.to_str().unwrap();
    // Cmd, Entrypoint, Env, WorkingDir and User (a name, looked up in the image).
    let o = env.run(&["--rm", "--image", &image, "--image", debs]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "default\n1\n1\n/work\nyes\n");
    // Arguments replace Cmd (the entrypoint stays); -u, -w and -e win.
    let o = env.run(&[
        "--rm",
        "--image",
        &image,
        "--image",
        debs,
        "-u",
        "0:0",
        "-w",
        "/opt",
        "-e",
        "FROM_IMAGE=cli",
        "--",
        "ls; cat opq/* keep; echo $FROM_IMAGE; id -u; stat -c '%u:%g %a %h %F' suid fifo null; readlink etc-link",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(
        out(&o),
        "etc-link\nfifo\nkeep\nnull\nopq\nsuid\nsuid-link\nnew\nlower keep\ncli\n0\n\
         1:2 4755 2 regular file\n0:0 640 1 fifo\n0:0 666 1 character special file\n/etc\n"
    );
    // Each layer is stored once, as it is: whiteouts are plain files there.
    let layers = env.layers();
    assert_eq!(layers, {
        let mut v = vec![sha(&lower), sha(&upper)];
        v.sort();
        v
    });
    let up = env.store().join("layers/sha256").join(sha(&upper));
    assert!(up.join("opt/.wh.gone").is_file());
    assert!(up.join("opt/opq/.wh..wh..opq").is_file());
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(up.join("opt/suid")).unwrap();
    assert_eq!(
        (
            md.uid(),
            md.gid(),
            md.mode() & 0o7777,
            md.mtime(),
            md.nlink()
        ),
        (1, 2, 0o4755, 1_234_567_890, 2)
    );
    let x = Command::new("getfattr")
        .args(["--only-values", "-n", "user.test"])
        .arg(up.join("opt/suid"))
        .output()
        .unwrap();
    assert_eq!(out(&x), "v1", "{}", err(&x));
    assert_eq!(
        std::fs::metadata(up.join("opt")).unwrap().mtime(),
        1_600_000_000
    );
    // The same layers under a second name are not unpacked again.
    let img2 = env.dir.join("oci2");
    let mut moved = lower.clone();
    moved.extend_from_slice(&[0u8; 1024]); // other bytes: another layer
    layout(
        &img2,
        &[(lower.clone(), Comp::None), (moved.clone(), Comp::Gzip)],
        serde_json::json!({"Cmd": ["true"]}),
        "localhost/hand:v2",
        Tamper::Nothing,
    );
    let o = env.run(&[
        "--rm",
        "--image",
        &format!("oci:{}", img2.display()),
        "--image",
        debs,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(env.layers().len(), 3, "the shared layer is stored once");
    let o = env.run(&["images"]);
    let listing = out(&o);
    assert!(
        listing.contains("localhost/hand:v1") && listing.contains("localhost/hand:v2"),
        "{listing}"
    );
    assert_eq!(listing.lines().count(), 3, "{listing}");
    // An image a container runs cannot be removed under it.
    let mut running = Command::new(bin())
        .args([
            "--rm",
            "--image",
            &format!("oci:{}", img2.display()),
            "--image",
            debs,
            "--",
            "sleep",
            "20",
        ])
        .env("UNIONFS_RUN_DIR", env.dir.join("state"))
        .env("UNIONFS_RUN_STORE", env.store())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::read_dir(env.dir.join("state"))
        .unwrap()
        .next()
        .is_none()
    {
        assert!(t0.elapsed().as_secs() < 30, "the container did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = env.run(&["rmi", "localhost/hand:v2"]);
    assert_eq!(o.status.code(), Some(125), "{}", err(&o));
    assert!(err(&o).contains("in use"), "{}", err(&o));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(running.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let st = running.wait().unwrap();
    assert_eq!(st.code(), Some(143), "{st:?}");
    assert_eq!(env.layers().len(), 3);
    // rmi keeps what the other image uses.
    let o = env.run(&["rmi", "localhost/hand:v1"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(env.layers(), vec![sha(&lower), sha(&moved)].tap_sort());
    let o = env.run(&["rmi", "localhost/hand:v1"]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));
    let id = out(&env.run(&["images", "--no-trunc"]))
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1).map(String::from))
        .unwrap();
    let o = env.run(&["rmi", &id]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(env.layers().is_empty());
    assert_eq!(out(&env.run(&["images"])).lines().count(), 1);
    env.assert_clean();
}

trait TapSort {
    fn tap_sort(self) -> Self;
}

impl TapSort for Vec<String> {
    fn tap_sort(mut self) -> Self {
        self.sort();
        self
    }
}

#[test]
fn bad_images_fail_with_one_line_and_leave_no_layer() {
    if !ready() {
        return;
    }
    let env = Env::new("bad");
    let victim = env.dir.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    let victim_s: &'static str = Box::leak(victim.to_string_lossy().into_owned().into_boxed_str());
    let ok_layer = tar_of(&[E::File("hello", "hi\n", 0o644)]);
    let cases: Vec<(&str, Vec<u8>, Tamper, &str)> = vec![
        ("missing", ok_layer.clone(), Tamper::MissingBlob, "missing"),
        (
            "blobdigest",
            ok_layer.clone(),
            Tamper::BlobDigest,
            "blob digest mismatch",
        ),
        (
            "diffid",
            ok_layer.clone(),
            Tamper::DiffId,
            "diff_id mismatch",
        ),
        (
            "media",
            ok_layer.clone(),
            Tamper::MediaType,
            "unknown media type",
        ),
        (
            "dotdot",
            tar_of(&[E::File("a", "x", 0o644), E::Raw("../../escaped")]),
            Tamper::Nothing,
            "'..'",
        ),
        (
            "absolute",
            tar_of(&[E::Raw("/tmp/escaped-abs")]),
            Tamper::Nothing,
            "absolute",
        ),
        (
            "hardlink",
            tar_of(&[E::RawHard("h", "../../../etc/passwd")]),
            Tamper::Nothing,
            "hard link",
        ),
        (
            "symlink",
            tar_of(&[E::Sym("a", victim_s), E::File("a/pwned", "x", 0o644)]),
            Tamper::Nothing,
            "never follows",
        ),
    ];
    for (name, tar, tamper, want) in cases {
        let dir = env.dir.join(format!("img-{name}"));
        layout(
            &dir,
            &[(tar, Comp::Gzip)],
            serde_json::json!({"Cmd": ["true"]}),
            name,
            tamper,
        );
        let o = env.run(&[
            "--rm",
            "--image",
            &format!("oci:{}", dir.display()),
            "--",
            "true",
        ]);
        let e = err(&o);
        assert_eq!(o.status.code(), Some(125), "{name}: {e}");
        assert_eq!(e.lines().count(), 1, "{name}: {e}");
        assert!(e.contains(want), "{name}: {e}");
        assert!(env.layers().is_empty(), "{name}: a layer was stored");
        env.assert_clean();
    }
    assert!(
        std::fs::read_dir(&victim).unwrap().next().is_none(),
        "written through a symlink"
    );
    assert!(!Path::new("/tmp/escaped-abs").exists());
    assert!(!env.dir.join("escaped").exists());
    // A good image still imports after all of that.
    let dir = env.dir.join("img-good");
    layout(
        &dir,
        &[(ok_layer, Comp::Gzip)],
        serde_json::json!({}),
        "good",
        Tamper::Nothing,
    );
    let o = env.run(&[
        "--rm",
        "--image",
        &format!("oci:{}", dir.display()),
        "--",
        "true",
    ]);
    assert_eq!(o.status.code(), Some(127), "no 'true' in it: {}", err(&o));
    assert_eq!(
        env.layers(),
        vec![sha(&tar_of(&[E::File("hello", "hi\n", 0o644)]))]
    );
    let o = env.run(&["images"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(out(&o).lines().count(), 2, "{}", out(&o));
    // docker archives: a layer member that is not what its name says, and
    // one that is missing.
    for (name, tamper, want) in [
        ("darch-digest", Tamper::BlobDigest, "blob digest mismatch"),
        ("darch-missing", Tamper::MissingBlob, "missing"),
    ] {
        let file = env.dir.join(format!("{name}.tar"));
        // (Not the layer stored above: a stored layer is not read again.)
        docker_archive(&file, &tar_of(&[E::File("other", "hi\n", 0o644)]), tamper);
        let o = env.run(&[
            "--rm",
            "--image",
            &format!("docker-archive:{}", file.display()),
            "--",
            "true",
        ]);
        let e = err(&o);
        assert_eq!(o.status.code(), Some(125), "{name}: {e}");
        assert_eq!(e.lines().count(), 1, "{name}: {e}");
        assert!(e.contains(want), "{name}: {e}");
        assert_eq!(env.layers().len(), 1, "{name}: a layer was stored");
        env.assert_clean();
    }
    // Not an image at all.
    let o = env.run(&["--rm", "--image", "oci:/nonexistent-layout", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));
    env.assert_clean();
}

/// Writes a one-layer docker archive as podman does (`<diff_id>.tar`,
/// `<config digest>.json`, manifest.json).
fn docker_archive(file: &Path, layer: &[u8], tamper: Tamper) {
    let diff = sha(layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": host_arch(), "os": "linux", "config": {"Cmd": ["true"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff}")]},
    }))
    .unwrap();
    let ch = sha(&config);
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{ch}.json"), "RepoTags": ["localhost/darch:1"], "Layers": [format!("{diff}.tar")],
    }]))
    .unwrap();
    let mut b = tar::Builder::new(std::fs::File::create(file).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o444);
        b.append_data(&mut h, name, data).unwrap();
    };
    match tamper {
        Tamper::BlobDigest => {
            let mut other = layer.to_vec();
            other.extend_from_slice(&[0u8; 512]);
            add(&format!("{diff}.tar"), &other);
        }
        Tamper::MissingBlob => {}
        _ => add(&format!("{diff}.tar"), layer),
    }
    add(&format!("{ch}.json"), &config);
    add("manifest.json", &manifest);
    b.finish().unwrap();
}

// ---- images made by podman ----

/// podman with all its config and storage in one temp dir.
struct Podman {
    dir: PathBuf,
    /// Whether root's blob-info cache and network run dir (which podman
    /// 4.3 cannot be told to keep elsewhere) were there before: if not,
    /// they are removed afterwards.
    had_cache: bool,
    had_run: bool,
}

const BLOB_CACHE: &str = "/var/lib/containers/cache/blob-info-cache-v1.boltdb";

impl Podman {
    fn new(tag: &str) -> Option<Podman> {
        if Command::new("podman").arg("--version").output().is_err() {
            return None;
        }
        let dir = PathBuf::from(format!(
            "/var/tmp/unionfs-run-podman-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            format!("[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\nnetns = \"none\"\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\nevents_logger = \"file\"\n\
             [network]\nnetwork_config_dir = \"{}/net\"\n",
            dir.display()),
        )
        .unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n",
                dir.display()
            ),
        )
        .unwrap();
        Some(Podman {
            dir,
            had_cache: Path::new(BLOB_CACHE).exists(),
            had_run: Path::new("/run/containers").exists(),
        })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("TMPDIR", &self.dir);
        c
    }

    fn ok(&self, args: &[&str]) {
        let o = self.cmd().args(args).stdin(Stdio::null()).output().unwrap();
        assert!(o.status.success(), "podman {args:?}: {}", err(&o));
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["system", "reset", "--force"])
            .stdin(Stdio::null())
            .output();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for l in mounts.lines() {
            if let Some(m) = l.split(' ').nth(1) {
                if m.starts_with(&*self.dir.to_string_lossy()) {
                    let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if !self.had_cache {
            let _ = std::fs::remove_file(BLOB_CACHE);
            let _ = std::fs::remove_dir("/var/lib/containers/cache");
            let _ = std::fs::remove_dir("/var/lib/containers");
        }
        if !self.had_run {
            let _ = std::fs::remove_dir("/run/containers/networks");
            let _ = std::fs::remove_dir("/run/containers");
        }
    }
}

#[test]
fn podman_saved_images_run_with_their_config() {
    if !ready() {
        return;
    }
    let Some(deb) = debian_root() else {
        skip("set UNIONFS_TEST_ROOTFS to a Debian root (scripts/debian-rootfs.sh)");
        return;
    };
    let Some(p) = Podman::new("save") else {
        skip("podman is not installed (apt-get install podman skopeo runc)");
        return;
    };
    // The Debian root as a one-layer image, and a second layer on it.
    let tarball = p.dir.join("root.tar");
    let st = Command::new("tar")
        .args([
            "-C",
            deb.to_str().unwrap(),
            "-cf",
            tarball.to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    p.ok(&[
        "import",
        "-q",
        tarball.to_str().unwrap(),
        "localhost/deb:base",
    ]);
    std::fs::remove_file(&tarball).unwrap();
    let ctx = p.dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Containerfile"),
        "FROM localhost/deb:base\n\
         RUN rm /etc/issue && mkdir /data && echo layer2 > /data/f && useradd -u 1234 app\n\
         ENV GREETING=hello\nWORKDIR /data\nUSER app\n\
         CMD [\"sh\", \"-c\", \"echo $GREETING; pwd; id -u; cat f; ls /etc/issue 2>&1 | grep -c 'No such'\"]\n",
    )
    .unwrap();
    p.ok(&[
        "build",
        "-q",
        "--network",
        "none",
        "-t",
        "localhost/deb:two",
        ctx.to_str().unwrap(),
    ]);
    let oci = p.dir.join("two-oci");
    let arch = p.dir.join("two.tar");
    let base = p.dir.join("base-oci");
    p.ok(&[
        "save",
        "-q",
        "--format",
        "oci-dir",
        "-o",
        oci.to_str().unwrap(),
        "localhost/deb:two",
    ]);
    p.ok(&[
        "save",
        "-q",
        "--format",
        "docker-archive",
        "-o",
        arch.to_str().unwrap(),
        "localhost/deb:two",
    ]);
    p.ok(&[
        "save",
        "-q",
        "--format",
        "oci-dir",
        "-o",
        base.to_str().unwrap(),
        "localhost/deb:base",
    ]);

    let env = Env::new("podman");
    let want = "hello\n/data\n1234\nlayer2\n1\n";
    let o = env.run(&["--rm", "--image", &format!("oci:{}:two", oci.display())]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), want);
    assert_eq!(env.layers().len(), 2);
    let o = env.run(&[
        "--rm",
        "--image",
        &format!("docker-archive:{}", arch.display()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), want);
    assert_eq!(
        env.layers().len(),
        2,
        "the archive's layers were stored again"
    );
    let o = env.run(&[
        "--rm",
        "--image",
        &format!("oci:{}", base.display()),
        "--",
        "cat",
        "/etc/issue",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).contains("Debian"), "{}", out(&o));
    assert_eq!(env.layers().len(), 2, "the base layer is shared");
    let listing = out(&env.run(&["images"]));
    assert!(
        listing.contains("localhost/deb:two") && listing.contains("localhost/deb:base"),
        "{listing}"
    );
    let o = env.run(&["rmi", "localhost/deb:two"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(env.layers().len(), 1, "the base layer is still used");
    let o = env.run(&["rmi", "localhost/deb:base"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(env.layers().is_empty());
    env.assert_clean();
}

/// Issue 16 item 2's round trip: run -> change -> `unionfs-run commit` ->
/// the committed layout runs with `--image oci:` and, loaded into podman,
/// with `podman run`.
#[test]
fn committed_container_runs_here_and_in_podman() {
    if !ready() {
        return;
    }
    let Some(deb) = debian_root() else {
        skip("set UNIONFS_TEST_ROOTFS to a Debian root (scripts/debian-rootfs.sh)");
        return;
    };
    let env = Env::new("commit");
    // The Debian root as a one-layer image.
    let tarball = env.dir.join("root.tar");
    let st = Command::new("tar")
        .args([
            "-C",
            deb.to_str().unwrap(),
            "-cf",
            tarball.to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let base = env.dir.join("base");
    layout(
        &base,
        &[(std::fs::read(&tarball).unwrap(), Comp::None)],
        serde_json::json!({"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["cat", "/etc/motd-c"]}),
        "v1",
        Tamper::Nothing,
    );
    std::fs::remove_file(&tarball).unwrap();
    let o = env.run(&[
        "--name",
        "t-commit",
        "--image",
        &format!("oci:{}:v1", base.display()),
        "--",
        "sh",
        "-c",
        "echo committed > /etc/motd-c; rm /etc/issue; mkdir /opt/new && echo x > /opt/new/f",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    // Refusals: one line, 125.
    let out_dir = env.dir.join("out");
    for (args, msg) in [
        (
            vec!["commit", "t-none", "oci:/nonexistent/x"],
            "no container",
        ),
        (
            vec!["commit", "t-commit", "docker-archive:/x.tar"],
            "oci:DIR",
        ),
    ] {
        let o = env.run(&args);
        assert_eq!(o.status.code(), Some(125), "{args:?}");
        assert!(
            err(&o).contains(msg) && err(&o).lines().count() == 1,
            "{}",
            err(&o)
        );
    }
    let target = format!("oci:{}:t1", out_dir.display());
    let o = env.run(&["commit", "t-commit", &target]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).contains(&target), "{}", out(&o));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "t1"
    );
    // Here: the image's Cmd, and the change, whiteout included.
    let o = env.run(&["--rm", "--image", &target]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "committed\n");
    let probe = "cat /etc/motd-c /opt/new/f; ls /etc/issue 2>&1 | grep -c 'No such'";
    let o = env.run(&["--rm", "--image", &target, "--", "sh", "-c", probe]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "committed\nx\n1\n");
    let o = env.run(&["rm", "t-commit"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    env.assert_clean();

    // podman: pull the layout, run the change.
    let Some(p) = Podman::new("commit") else {
        skip("podman is not installed (apt-get install podman runc)");
        return;
    };
    let o = p
        .cmd()
        .args(["pull", "-q", &target])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "podman pull: {}", err(&o));
    let id = out(&o).trim().to_string();
    let o = p
        .cmd()
        .args(["run", "--rm", "--network=none", &id, "sh", "-c", probe])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "podman run: {}", err(&o));
    assert_eq!(out(&o), "committed\nx\n1\n");
    let o = p
        .cmd()
        .args(["run", "--rm", "--network=none", &id])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out(&o), "committed\n", "{}", err(&o));
}
