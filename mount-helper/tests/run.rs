//! End-to-end tests of unionfs-run with real containers: the host's own
//! root as the image, and (when scripts/debian-rootfs.sh has built one) a
//! Debian root. Each test checks that nothing stays mounted or created.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_unionfs-run"))
}

fn ready() -> bool {
    let unionfs = bin().with_file_name("unionfs");
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs root and /dev/fuse");
        return false;
    }
    assert!(
        unionfs.is_file(),
        "{} is missing: run the suite with `cargo test --workspace`",
        unionfs.display()
    );
    true
}

/// A per-test state directory for the launcher (UNIONFS_RUN_DIR), on tmpfs.
struct StateDir(PathBuf);

impl StateDir {
    fn new(tag: &str) -> StateDir {
        let p = PathBuf::from(format!(
            "/dev/shm/unionfs-run-test-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        StateDir(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("UNIONFS_RUN_DIR", &self.0)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Nothing mounted below the state dir, and no container state left.
    fn assert_clean(&self) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let prefix = self.0.to_string_lossy().to_string();
        assert!(!mounts.contains(&prefix), "left mounted:\n{mounts}");
        let left: Vec<_> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for l in mounts.lines() {
            if let Some(m) = l.split(' ').nth(1) {
                if m.starts_with(&*self.0.to_string_lossy()) {
                    let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn cgroup_leftovers(name: &str) -> Vec<PathBuf> {
    walk_cgroups(
        Path::new("/sys/fs/cgroup"),
        &format!("unionfs-run-{name}"),
        4,
    )
}

fn walk_cgroups(dir: &Path, name: &str, depth: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        if e.file_name() == name {
            out.push(e.path());
        } else if depth > 0 {
            out.extend(walk_cgroups(&e.path(), name, depth - 1));
        }
    }
    out
}

#[test]
fn host_root_container_is_isolated_and_cleaned_up() {
    if !ready() {
        return;
    }
    let s = StateDir::new("host");
    let o = s.run(&[
        "--rm",
        "--name",
        "t-host",
        "--hostname",
        "box",
        "--",
        "sh",
        "-c",
        "echo host=$(hostname) pid=$$; ls /proc | grep -c '^[0-9]'; echo data > /etc/from-container; cat /etc/from-container; \
         cat /sys/class/net/lo/operstate 2>/dev/null || ip -o link 2>/dev/null | wc -l; ls /sys/class/net | tr '\\n' ' '; echo; \
         touch /sys/x 2>&1 | grep -c 'Read-only'; ls /dev | sort | tr '\\n' ' '",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    let lines: Vec<&str> = out.lines().collect();
    // pid 1 is init, the shell is pid 2: a new pid namespace.
    assert_eq!(lines[0], "host=box pid=2");
    let procs: u32 = lines[1].trim().parse().unwrap();
    assert!(
        procs <= 6,
        "{procs} processes visible: not a new pid namespace"
    );
    assert_eq!(lines[2], "data");
    assert_eq!(lines[4].trim(), "lo", "only lo in a new network namespace");
    assert_eq!(lines[5].trim(), "1", "/sys is read-only");
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm",
    ] {
        assert!(
            lines[6].split(' ').any(|x| x == d),
            "/dev lacks {d}: {}",
            lines[6]
        );
    }
    // The host's /etc was not touched, and nothing is left.
    assert!(!Path::new("/etc/from-container").exists());
    s.assert_clean();
    assert!(cgroup_leftovers("t-host").is_empty());
}

#[test]
fn exit_statuses() {
    if !ready() {
        return;
    }
    let s = StateDir::new("status");
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--rm", "--", "sh", "-c", "exit 7"], 7, ""),
        (&["--rm", "--", "sh", "-c", "kill -TERM $$"], 128 + 15, ""),
        (&["--rm", "--", "no-such-command-xyz"], 127, "not found"),
        (&["--rm", "--", "/etc/hostname"], 126, "cannot be executed"),
        (&["--rm", "--memory", "abc", "--", "true"], 125, "--memory"),
        (
            &["--rm", "--image", "/no/such/image", "--", "true"],
            125,
            "/no/such/image",
        ),
        (&["--rm"], 125, "no command"),
    ];
    for (args, code, msg) in cases {
        let o = s.run(args);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        if !msg.is_empty() {
            assert!(err.contains(msg), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
        }
        s.assert_clean();
    }
}

#[test]
fn upper_is_kept_without_rm_and_shows_the_changes() {
    if !ready() {
        return;
    }
    let s = StateDir::new("keep");
    let o = s.run(&[
        "--name",
        "t-keep",
        "--",
        "sh",
        "-c",
        "echo hello > /root/note; rm -f /etc/issue.net",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let upper = s.0.join("t-keep/upper");
    assert!(
        stderr(&o).contains(&upper.display().to_string()),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("root/note")).unwrap(),
        "hello\n"
    );
    if Path::new("/etc/issue.net").exists() {
        assert!(upper.join("etc/.wh.issue.net").exists());
    }
    // Nothing mounted; the kept upper is all that is left.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&*s.0.to_string_lossy()));
    assert!(cgroup_leftovers("t-keep").is_empty());
}

#[test]
fn limits_are_enforced() {
    if !ready() {
        return;
    }
    let s = StateDir::new("limits");
    // A memory hog inside is OOM-killed; the container's shell survives it.
    let o = s.run(&[
        "--rm",
        "--memory",
        "64M",
        "--",
        "sh",
        "-c",
        "python3 -c 'b = bytearray(1 << 30); print(len(b))'; echo hog=$?",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("hog=137"), "{}", stdout(&o));
    // A fork bomb stops at the pids limit.
    let bomb = "import os, time\nn = 0\ntry:\n    for _ in range(100):\n        if os.fork() == 0:\n            time.sleep(2)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)";
    let o = s.run(&["--rm", "--pids", "16", "--", "python3", "-c", bomb]);
    let out = stdout(&o);
    let forked: u32 = out.trim().parse().unwrap_or(999);
    assert!(
        (4..16).contains(&forked),
        "forked {forked} with --pids 16: {out} {}",
        stderr(&o)
    );
    // --cpus writes the quota (checked on the host side while it runs).
    let mut child = Command::new(bin())
        .args([
            "--rm", "--name", "t-cpu", "--cpus", "0.5", "--", "sleep", "2",
        ])
        .env("UNIONFS_RUN_DIR", &s.0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let quota = loop {
        let found = cgroup_leftovers("t-cpu");
        let q = found.iter().find_map(|d| {
            std::fs::read_to_string(d.join("cpu.cfs_quota_us"))
                .ok()
                .or_else(|| std::fs::read_to_string(d.join("cpu.max")).ok())
        });
        if let Some(q) = q {
            break q;
        }
        assert!(Instant::now() < deadline, "no cpu cgroup for t-cpu");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        quota.trim() == "50000" || quota.starts_with("50000 100000"),
        "{quota}"
    );
    assert!(child.wait().unwrap().success());
    assert!(cgroup_leftovers("t-cpu").is_empty());
    s.assert_clean();
}

#[test]
fn signals_are_forwarded_and_teardown_runs() {
    if !ready() {
        return;
    }
    let s = StateDir::new("signals");
    let mut child = Command::new(bin())
        .args([
            "--rm", "--name", "t-sig", "--", "sh", "-c",
            "trap 'echo got-usr1' USR1; trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .env("UNIONFS_RUN_DIR", &s.0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut out = child.stdout.take().unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    use std::io::Read;
    let mut chunk = [0u8; 64];
    while !String::from_utf8_lossy(&buf).contains("ready") {
        assert!(Instant::now() < deadline);
        let n = out.read(&mut chunk).unwrap();
        buf.extend_from_slice(&chunk[..n]);
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    out.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.contains("got-usr1") && text.contains("got-term"),
        "{text}"
    );
    assert_eq!(status.code(), Some(3));
    s.assert_clean();
    assert!(cgroup_leftovers("t-sig").is_empty());
}

fn fake_elf_image(dir: &Path, machine: u16) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let mut h = vec![
        0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0,
    ];
    h.extend_from_slice(&machine.to_le_bytes());
    h.resize(64, 0);
    std::fs::write(dir.join("bin/sh"), &h).unwrap();
}

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

fn aarch64_handler() -> bool {
    Path::new(BINFMT).join("qemu-aarch64").exists()
}

/// Registers qemu-user-static's aarch64 handler, mounting binfmt_misc if
/// needed: (registered, whether we mounted binfmt_misc). Not registered when
/// qemu-user-static is not installed.
fn register_aarch64() -> (bool, bool) {
    let conf = Path::new("/usr/lib/binfmt.d/qemu-aarch64.conf");
    let Ok(line) = std::fs::read_to_string(conf) else {
        return (false, false);
    };
    let mut mounted = false;
    if !Path::new(BINFMT).join("register").exists() {
        mounted = Command::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc", BINFMT])
            .status()
            .is_ok_and(|s| s.success());
    }
    let ok = std::fs::write(Path::new(BINFMT).join("register"), line.trim()).is_ok()
        && aarch64_handler();
    (ok, mounted)
}

/// One test, so that registering a handler cannot race the
/// no-handler checks.
#[test]
fn foreign_architecture_and_windows_images() {
    if !ready() {
        return;
    }
    let s = StateDir::new("arch");
    let img = PathBuf::from(format!("/dev/shm/unionfs-run-img-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&img);
    fake_elf_image(&img, 183);
    let had_handler = aarch64_handler();
    if !had_handler {
        let o = s.run(&[
            "--rm",
            "--image",
            img.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "true",
        ]);
        assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("aarch64") && e.contains("x86_64") && e.contains("qemu-user-static"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        s.assert_clean();
    }
    std::fs::write(img.join("bin/sh"), b"MZ\x90\x00 a windows program").unwrap();
    let o = s.run(&["--rm", "--image", img.to_str().unwrap(), "--", "sh"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("Windows"), "{}", stderr(&o));
    s.assert_clean();
    let _ = std::fs::remove_dir_all(&img);

    // A real arm64 root (scripts/arm64-rootfs.sh) runs once a handler is registered.
    let Some(arm) = std::env::var_os("UNIONFS_TEST_ARM64_ROOTFS").map(PathBuf::from) else {
        eprintln!(
            "skipped the arm64 root: set UNIONFS_TEST_ARM64_ROOTFS (scripts/arm64-rootfs.sh)"
        );
        return;
    };
    let run_arm = || {
        s.run(&[
            "--rm",
            "--image",
            arm.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "uname -m; echo ok > /tmp/w; cat /tmp/w",
        ])
    };
    let mut mounted_binfmt = false;
    if !had_handler {
        let o = run_arm();
        assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
        let (registered, mounted) = register_aarch64();
        mounted_binfmt = mounted;
        if !registered {
            eprintln!("skipped running the arm64 root: qemu-user-static is not installed");
            if mounted_binfmt {
                let _ = nix::mount::umount2(BINFMT, nix::mount::MntFlags::MNT_DETACH);
            }
            return;
        }
    }
    let o = run_arm();
    if !had_handler {
        let _ = std::fs::write(Path::new(BINFMT).join("qemu-aarch64"), "-1");
    }
    if mounted_binfmt {
        let _ = nix::mount::umount2(BINFMT, nix::mount::MntFlags::MNT_DETACH);
    }
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "aarch64\nok\n");
    assert!(!arm.join("tmp/w").exists(), "the image changed");
    s.assert_clean();
}

fn debian_root() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("UNIONFS_TEST_ROOTFS")?);
    p.join("usr/bin/dpkg").exists().then_some(p)
}

fn tree_digest(root: &Path) -> Vec<(PathBuf, u64, u32)> {
    let mut v = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let md = e.metadata().unwrap();
            use std::os::unix::fs::MetadataExt;
            v.push((e.path(), md.size(), md.mode()));
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    v.sort();
    v
}

#[test]
fn debian_image_dpkg_works_and_the_image_stays_untouched() {
    if !ready() {
        return;
    }
    let Some(root) = debian_root() else {
        eprintln!("skipped: set UNIONFS_TEST_ROOTFS to a Debian root (scripts/debian-rootfs.sh)");
        return;
    };
    let before = tree_digest(&root.join("var/lib/dpkg"));
    let s = StateDir::new("debian");
    let script = "set -e; mkdir -p /tmp/p/DEBIAN /tmp/p/usr/share/hello-unionfs; \
        printf 'Package: hello-unionfs\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: t <t@t>\\nDescription: test\\n' > /tmp/p/DEBIAN/control; \
        echo hi > /tmp/p/usr/share/hello-unionfs/hi; dpkg-deb --build /tmp/p /tmp/h.deb >/dev/null; dpkg -i /tmp/h.deb >/dev/null; \
        dpkg -s hello-unionfs | grep Status; apt-get --version | head -1; cat /etc/debian_version";
    let o = s.run(&[
        "--name",
        "t-deb",
        "--image",
        root.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("Status: install ok installed"),
        "{}",
        stdout(&o)
    );
    let upper = s.0.join("t-deb/upper");
    assert!(upper.join("usr/share/hello-unionfs/hi").exists());
    assert!(upper.join("var/lib/dpkg/status").exists());
    assert_eq!(
        tree_digest(&root.join("var/lib/dpkg")),
        before,
        "the image changed"
    );
    assert!(!root.join("usr/share/hello-unionfs").exists());
}

#[test]
fn ten_containers_from_one_image_see_only_their_own_changes() {
    if !ready() {
        return;
    }
    let image = debian_root().unwrap_or_else(|| PathBuf::from("/"));
    let s = StateDir::new("many");
    let children: Vec<_> = (0..10)
        .map(|i| {
            let mut cmd = Command::new(bin());
            cmd.env("UNIONFS_RUN_DIR", &s.0).arg("--rm");
            if image != Path::new("/") {
                cmd.arg("--image").arg(&image);
            }
            cmd.args([
                "--",
                "sh",
                "-c",
                &format!("echo {i} > /tmp/mine-{i}; sleep 0.3; ls /tmp | grep -c '^mine-'; cat /tmp/mine-{i}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(
            stdout(&o),
            format!("1\n{i}\n"),
            "container {i} saw others' files"
        );
    }
    assert!(!image.join("tmp/mine-0").exists());
    s.assert_clean();
}

/// Restores a file's mode (or a sysctl's value) when dropped.
struct Restore(PathBuf, Vec<u8>, Option<u32>);

impl Drop for Restore {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        match self.2 {
            Some(mode) => {
                let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(mode));
            }
            None => {
                let _ = std::fs::write(&self.0, &self.1);
            }
        }
    }
}

/// Removes a directory tree when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn rootless_container_and_no_user_namespaces() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !ready() || Command::new("setpriv").arg("--version").output().is_err() {
        return;
    }
    // An unprivileged FUSE mount needs /dev/fuse open to all, as udev sets
    // it on a normal host (this machine leaves it 0600).
    let mode = std::fs::metadata("/dev/fuse").unwrap().mode() & 0o7777;
    let _fuse = Restore(PathBuf::from("/dev/fuse"), Vec::new(), Some(mode));
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    let state = PathBuf::from(format!(
        "/dev/shm/unionfs-run-test-rootless-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir(&state).unwrap();
    let _state = RemoveDir(state.clone());
    nix::unistd::chown(
        &state,
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();
    // The build directory may be unreachable for nobody (a checkout in a
    // 0700 `mktemp -d`): run copies of the two binaries from the state dir.
    let bins = PathBuf::from(format!(
        "/dev/shm/unionfs-run-test-rootless-bin-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&bins);
    std::fs::create_dir(&bins).unwrap();
    std::fs::set_permissions(&bins, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _bins = RemoveDir(bins.clone());
    for b in [bin(), bin().with_file_name("unionfs")] {
        let to = bins.join(b.file_name().unwrap());
        std::fs::copy(&b, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let launcher = bins.join(bin().file_name().unwrap());
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&launcher)
            .args(args)
            .env("UNIONFS_RUN_DIR", &state)
            .env("HOME", "/")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = as_nobody(&["--rm", "--", "sh", "-c", "id -u; echo pid=$$; ls /sys/class/net; echo x > /etc/rootless-file && cat /etc/rootless-file"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o), "0\npid=2\nlo\nx\n", "{}", stderr(&o));
    assert!(!Path::new("/etc/rootless-file").exists());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&*state.to_string_lossy()), "{mounts}");
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
    // Limits need a cgroup an unprivileged user cannot make here.
    let o = as_nobody(&["--rm", "--memory", "64M", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));

    // Without user namespaces: one clear line, exit 125, nothing left.
    let knob = PathBuf::from("/proc/sys/user/max_user_namespaces");
    let old = std::fs::read(&knob).unwrap();
    if std::fs::write(&knob, &old).is_err() {
        eprintln!(
            "{} is read-only here: the no-user-namespace case cannot be simulated",
            knob.display()
        );
    } else {
        let _restore = Restore(knob.clone(), old, None);
        std::fs::write(&knob, "0").unwrap();
        let o = as_nobody(&["--rm", "--", "true"]);
        assert_eq!(o.status.code(), Some(125));
        let e = stderr(&o);
        assert!(
            e.contains("user namespaces") && e.lines().count() == 1,
            "{e}"
        );
    }
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(&state);
}
