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

/// Says why a test does not run; with UNIONFS_TEST_REQUIRE=1 (CI) a test
/// that cannot run is a failure instead.
fn skip(why: &str) {
    if std::env::var_os("UNIONFS_TEST_REQUIRE").is_some_and(|v| v == "1") {
        panic!("UNIONFS_TEST_REQUIRE=1 but the test cannot run: {why}");
    }
    eprintln!("skipped: {why}");
}

fn ready() -> bool {
    let unionfs = bin().with_file_name("unionfs");
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        skip("needs root and /dev/fuse");
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
        // Containers whose launcher a failed test killed: their cgroups
        // are known only to their records.
        let _ = Command::new(bin())
            .arg("--cleanup")
            .env("UNIONFS_RUN_DIR", &self.0)
            .output();
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
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.0.join("t-keep"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o700,
            "others could reach the upper's device nodes"
        );
    }
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
        skip("the arm64 root: set UNIONFS_TEST_ARM64_ROOTFS (scripts/arm64-rootfs.sh)");
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
            skip("running the arm64 root: qemu-user-static is not installed");
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
        skip("set UNIONFS_TEST_ROOTFS to a Debian root (scripts/debian-rootfs.sh)");
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
    let o = as_nobody(&["--rm", "--", "sh", "-c", "id -u; echo pid=$$; ls /sys/class/net; echo x > /etc/rootless-file && cat /etc/rootless-file; grep -E '^(CapBnd|Seccomp):' /proc/self/status | tr -d '\\t'"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    // Confined as a root container is, inside its user namespace.
    assert_eq!(
        stdout(&o),
        "0\npid=2\nlo\nx\nCapBnd:00000000a80425fb\nSeccomp:2\n",
        "{}",
        stderr(&o)
    );
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

/// Like `ready`, but with UNIONFS_TEST_REQUIRE=1 a test that cannot run
/// fails instead of skipping (CI sets it where root and /dev/fuse exist).
fn ready_or_required(what: &str) -> bool {
    let ok = ready();
    if !ok && std::env::var_os("UNIONFS_TEST_REQUIRE").is_some_and(|v| v == "1") {
        panic!("{what} cannot run here, and UNIONFS_TEST_REQUIRE=1");
    }
    ok
}

/// What a default `podman run` refuses, tried from inside: one
/// `name=ok`, `name=refused:ERRNO` or `name=absent` line each, then the
/// capability and seccomp lines of /proc/self/status. argv: the major and
/// minor of the host's root disk.
const PROBE: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def say(name, err=None):
    print(f"{name}=" + ("ok" if err is None else "refused:" + errno.errorcode.get(err, str(err))), flush=True)
def t(name, f):
    try:
        f(); say(name)
    except OSError as e:
        say(name, e.errno)
def c(name, r):
    say(name, None if r == 0 else ctypes.get_errno())
def rewrite(p):
    v = open(p, "rb").read()
    with open(p, "wb") as f:
        f.write(v)
for p in ["/proc/sys/kernel/core_pattern", "/proc/sys/vm/swappiness"]:
    t("sysctl:" + p, lambda: rewrite(p))
if os.path.exists("/proc/sysrq-trigger"):
    t("sysrq", lambda: os.close(os.open("/proc/sysrq-trigger", os.O_WRONLY)))
else:
    print("sysrq=absent")
os.makedirs("/tmp/probe-mnt", exist_ok=True)
for fs in ["tmpfs", "proc"]:
    r = libc.mount(fs.encode(), b"/tmp/probe-mnt", fs.encode(), 0, None)
    c("mount:" + fs, r)
    if r == 0:
        libc.umount2(b"/tmp/probe-mnt", 2)
pid = os.fork()
if pid == 0:
    os._exit(0 if libc.unshare(0x20000) == 0 else ctypes.get_errno())
st = os.waitpid(pid, 0)[1]
say("unshare-mount-ns", None if os.waitstatus_to_exitcode(st) == 0 else os.waitstatus_to_exitcode(st))
for p in ["/proc/keys", "/proc/timer_list", "/proc/kcore", "/proc/sched_debug", "/proc/interrupts", "/proc/latency_stats", "/proc/timer_stats"]:
    if not os.path.exists(p):
        print(f"read:{p}=absent")
        continue
    try:
        with open(p, "rb") as f:
            data = f.read(4096)
        say("read:" + p, None if data else errno.ENODATA)
    except OSError as e:
        say("read:" + p, e.errno)
major, minor = int(sys.argv[1]), int(sys.argv[2])
for where in ["/tmp", "/dev"]:
    for name, dev in [("disk", os.makedev(major, minor)), ("loop0", os.makedev(7, 0))]:
        node = f"{where}/probe-{name}"
        t(f"mknod:{where}:{name}", lambda: os.mknod(node, 0o600 | 0o60000, dev))
        t(f"open:{where}:{name}", lambda: os.close(os.open(node, os.O_RDONLY)))
t("init-exe", lambda: os.close(os.open("/proc/1/exe", os.O_PATH)))
t("init-fds", lambda: os.close(os.open("/proc/1/fd/0", os.O_PATH)))
fds = sorted(int(f) for f in os.listdir("/proc/self/fd") if int(f) > 2)
print("inherited-fds=" + ",".join(str(f) for f in fds[:-1]), flush=True)
libc.syscall.restype = ctypes.c_long
r = libc.syscall(435, None, ctypes.c_size_t(0))
print("clone3=" + errno.errorcode.get(ctypes.get_errno(), "?"), flush=True)
for l in open("/proc/self/status"):
    if l.startswith("Cap") or l.startswith("Seccomp:") or l.startswith("NoNewPrivs:"):
        print(l.strip().replace(":\t", "=").replace(": ", "="), flush=True)
"#;

fn probe(s: &StateDir, extra: &[&str]) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata("/").unwrap().dev();
    let (major, minor) = (
        nix::sys::stat::major(dev).to_string(),
        nix::sys::stat::minor(dev).to_string(),
    );
    let mut args = vec!["--rm"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "python3", "-c", PROBE, &major, &minor]);
    // The caller leaves fd 7 open on the host's / (no close-on-exec): it
    // must not reach the container.
    let o = Command::new("sh")
        .arg("-c")
        .arg("exec 7</ && exec \"$0\" \"$@\"")
        .arg(bin())
        .args(&args)
        .env("UNIONFS_RUN_DIR", &s.0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    stdout(&o)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Whether root on the host can open a block device node it makes (this
/// machine's own sandbox may refuse the disk even to root).
fn host_can_open_block(major: u64, minor: u64) -> bool {
    let p = PathBuf::from(format!(
        "/var/tmp/unionfs-run-probe-{major}-{minor}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&p);
    let made = nix::sys::stat::mknod(
        &p,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(major, minor),
    )
    .is_ok();
    let ok = made && std::fs::File::open(&p).is_ok();
    let _ = std::fs::remove_file(&p);
    ok
}

fn host_reads(p: &str) -> bool {
    use std::io::Read;
    let mut b = [0u8; 64];
    std::fs::File::open(p)
        .and_then(|mut f| f.read(&mut b))
        .is_ok_and(|n| n > 0)
}

#[test]
fn default_container_refuses_what_docker_refuses_and_privileged_allows_it() {
    use std::os::unix::fs::MetadataExt;
    if !ready_or_required("the confinement test") {
        return;
    }
    let s = StateDir::new("confine");
    let d = probe(&s, &[]);
    let get = |m: &std::collections::BTreeMap<String, String>, k: &str| {
        m.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("no {k} in {m:?}"))
    };
    let refused = |m: &std::collections::BTreeMap<String, String>, k: &str| {
        let v = get(m, k);
        assert!(v.starts_with("refused:"), "{k}={v} in a default container");
    };
    for k in [
        "sysctl:/proc/sys/kernel/core_pattern",
        "sysctl:/proc/sys/vm/swappiness",
        "mount:tmpfs",
        "mount:proc",
        "unshare-mount-ns",
    ] {
        refused(&d, k);
    }
    assert_eq!(
        get(&d, "sysctl:/proc/sys/kernel/core_pattern"),
        "refused:EROFS"
    );
    assert_eq!(get(&d, "mount:tmpfs"), "refused:EPERM");
    assert_eq!(get(&d, "unshare-mount-ns"), "refused:EPERM");
    if Path::new("/proc/sysrq-trigger").exists() {
        refused(&d, "sysrq");
    }
    let masked = [
        "/proc/keys",
        "/proc/timer_list",
        "/proc/kcore",
        "/proc/sched_debug",
        "/proc/interrupts",
        "/proc/latency_stats",
        "/proc/timer_stats",
    ];
    let mut checked = 0;
    for p in masked {
        if host_reads(p) {
            checked += 1;
            refused(&d, &format!("read:{p}"));
        }
    }
    assert!(
        checked > 0,
        "no masked file is readable on this host to check"
    );
    // MKNOD is a default capability, as in docker: the node is made, and
    // cannot be opened (nodev mounts, and the devices cgroup on v1).
    for where_ in ["/tmp", "/dev"] {
        for name in ["disk", "loop0"] {
            assert_eq!(get(&d, &format!("mknod:{where_}:{name}")), "ok");
            let o = get(&d, &format!("open:{where_}:{name}"));
            assert!(
                o == "refused:EACCES" || o == "refused:EPERM",
                "open:{where_}:{name}={o}"
            );
        }
    }
    assert_eq!(get(&d, "clone3"), "ENOSYS", "glibc must fall back to clone");
    // Init runs the launcher's host binary: /proc/1 is closed to the
    // container (runc's CVE-2019-5736), and no fd of the caller leaks in.
    assert_eq!(get(&d, "init-exe"), "refused:EACCES");
    assert_eq!(get(&d, "init-fds"), "refused:EACCES");
    assert_eq!(get(&d, "inherited-fds"), "");
    for set in ["CapBnd", "CapEff", "CapPrm", "CapInh"] {
        assert_eq!(get(&d, set), "00000000a80425fb", "{set}: docker's 14");
    }
    assert_eq!(get(&d, "CapAmb"), "0000000000000000");
    assert_eq!(get(&d, "Seccomp"), "2");
    assert_eq!(get(&d, "NoNewPrivs"), "0", "set-uid programs keep working");
    s.assert_clean();

    // --privileged: all of it allowed (what the host itself allows).
    let p = probe(&s, &["--privileged"]);
    for k in [
        "sysctl:/proc/sys/kernel/core_pattern",
        "sysctl:/proc/sys/vm/swappiness",
        "mount:tmpfs",
        "mount:proc",
        "unshare-mount-ns",
    ] {
        assert_eq!(get(&p, k), "ok", "{k} with --privileged");
    }
    if Path::new("/proc/sysrq-trigger").exists() {
        assert_eq!(get(&p, "sysrq"), "ok");
    }
    for m in masked {
        if host_reads(m) {
            assert_eq!(get(&p, &format!("read:{m}")), "ok", "{m} with --privileged");
        }
    }
    let dev = std::fs::metadata("/").unwrap().dev();
    let disk = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    for where_ in ["/tmp", "/dev"] {
        for (name, (maj, min)) in [("disk", disk), ("loop0", (7, 0))] {
            assert_eq!(get(&p, &format!("mknod:{where_}:{name}")), "ok");
            if host_can_open_block(maj, min) {
                assert_eq!(
                    get(&p, &format!("open:{where_}:{name}")),
                    "ok",
                    "{name} with --privileged"
                );
            }
        }
    }
    assert_ne!(get(&p, "clone3"), "ENOSYS");
    assert_eq!(get(&p, "inherited-fds"), "");
    assert_eq!(get(&p, "Seccomp"), "0");
    let host_bnd = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        .unwrap();
    assert_eq!(get(&p, "CapEff"), host_bnd);
    s.assert_clean();
}

#[test]
fn cap_add_drop_and_security_opts_change_the_defaults() {
    if !ready_or_required("the capability options test") {
        return;
    }
    let s = StateDir::new("capopts");
    let status = |extra: &[&str]| {
        let mut a = vec!["--rm"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&[
            "--",
            "sh",
            "-c",
            "grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status | tr -d '\\t'; unshare -m true 2>/dev/null && echo unshare=ok || echo unshare=refused; \
             mount -t tmpfs t /mnt 2>/dev/null && mknod /mnt/l b 7 0 && { head -c 0 /mnt/l 2>/dev/null && echo dev-on-own-tmpfs=ok || echo dev-on-own-tmpfs=refused; }; true",
        ]);
        let o = s.run(&a);
        assert_eq!(o.status.code(), Some(0), "{extra:?}: {}", stderr(&o));
        stdout(&o)
    };
    // SYS_ADMIN opens mount namespaces (capability and seccomp both).
    let o = status(&["--cap-add", "sys_admin"]);
    assert!(o.contains("CapEff:00000000a82425fb"), "{o}");
    assert!(o.contains("unshare=ok"), "{o}");
    // It can mount a tmpfs without nodev; the device list still holds.
    assert!(o.contains("dev-on-own-tmpfs=refused"), "{o}");
    let o = status(&["--cap-drop", "ALL", "--cap-add", "CAP_CHOWN"]);
    assert!(o.contains("CapEff:0000000000000001"), "{o}");
    let o = status(&["--security-opt", "seccomp=unconfined"]);
    assert!(
        o.contains("Seccomp:0") && o.contains("unshare=refused"),
        "{o}"
    );
    let o = status(&["--security-opt", "no-new-privileges"]);
    assert!(o.contains("NoNewPrivs:1") && o.contains("Seccomp:2"), "{o}");
    for bad in [
        &["--cap-add", "CAP_NOPE"][..],
        &["--cap-drop", "net admin"][..],
        &["--security-opt", "apparmor=unconfined"][..],
        &["--hugetlb", "2M"][..],
    ] {
        let mut a = vec!["--rm"];
        a.extend_from_slice(bad);
        a.extend_from_slice(&["--", "true"]);
        let o = s.run(&a);
        assert_eq!(o.status.code(), Some(125), "{bad:?}");
        assert_eq!(stderr(&o).lines().count(), 1, "{bad:?}: {}", stderr(&o));
    }
    s.assert_clean();
}

#[test]
fn v1_devices_cgroup_holds_dockers_allow_list() {
    if !ready_or_required("the devices cgroup test") {
        return;
    }
    let devices = Path::new("/sys/fs/cgroup/devices");
    if !devices.join("devices.list").exists() {
        eprintln!("no v1 devices hierarchy here: the nodev mounts are what holds (SECURITY.md)");
        return;
    }
    let s = StateDir::new("devcg");
    let mut child = Command::new(bin())
        .args(["--rm", "--name", "t-dev", "--", "sleep", "2"])
        .env("UNIONFS_RUN_DIR", &s.0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Read once init is in: the list is complete before it may join.
    let list = loop {
        let found = cgroup_leftovers("t-dev");
        if let Some(l) = found.iter().find_map(|d| {
            let joined =
                std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty());
            joined
                .then(|| std::fs::read_to_string(d.join("devices.list")).ok())
                .flatten()
        }) {
            break l;
        }
        assert!(Instant::now() < deadline, "no devices cgroup for t-dev");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(child.wait().unwrap().success());
    let mut got: Vec<&str> = list.lines().collect();
    got.sort_unstable();
    let mut want = unionfs_run::cgroup::devices::ALLOW.to_vec();
    want.sort_unstable();
    assert_eq!(
        got, want,
        "not 'a *:* rwm': the container could open any device"
    );
    assert!(cgroup_leftovers("t-dev").is_empty());
    s.assert_clean();
}

#[test]
fn debian_workload_runs_under_the_default_confinement() {
    if !ready_or_required("the Debian workload test") {
        return;
    }
    let Some(root) = debian_root() else {
        skip("set UNIONFS_TEST_ROOTFS to a Debian root (scripts/debian-rootfs.sh)");
        return;
    };
    let s = StateDir::new("debconf");
    // apt's own sandbox user, dpkg, a set-uid su, chroot, bash: what a
    // Dockerfile's RUN lines do, all offline.
    let script = "set -e; apt-get check >/dev/null; dpkg -l | grep -c '^ii' >/dev/null; \
        dpkg --configure -a; apt-get install -y --no-download dpkg 2>&1 | tail -1; \
        useradd -m tester; su tester -c 'id -un'; chroot / true; \
        bash -c 'echo bash-ok'; grep Seccomp: /proc/self/status | tr -d '\\t'";
    let o = s.run(&[
        "--rm",
        "--image",
        root.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("0 upgraded, 0 newly installed"), "{out}");
    assert!(out.contains("tester\nbash-ok\nSeccomp:2"), "{out}");
    s.assert_clean();
}

/// Kills and reaps a child when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Restores the v2 root's cgroup.subtree_control and removes a test
/// cgroup when dropped.
struct V2Restore {
    root: PathBuf,
    had_hugetlb: bool,
    test_cgroup: PathBuf,
}

impl Drop for V2Restore {
    fn drop(&mut self) {
        // The launcher's FUSE daemon started in the test cgroup and may
        // still be exiting after the unmount.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.test_cgroup)
            .is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !self.had_hugetlb {
            // Containers of other tests may still be in the shared parent:
            // take hugetlb back there first, so the root can let it go.
            let parent = self.root.join("unionfs-run");
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "-hugetlb");
            let _ = std::fs::remove_dir(parent);
            let _ = std::fs::write(self.root.join("cgroup.subtree_control"), "-hugetlb");
        }
    }
}

/// The real v2 path: the launcher itself sits in a non-root v2 cgroup
/// that holds a process (a systemd session scope, in effect), where
/// enabling `+hugetlb` fails with EBUSY; the container's cgroup must go
/// under `<root>/unionfs-run/` instead, with the limit in place.
#[test]
fn v2_hugetlb_limit_under_a_populated_launcher_cgroup() {
    if !ready_or_required("the cgroup v2 hugetlb test") {
        return;
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(root) = mi.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        post.starts_with("cgroup2 ")
            .then(|| PathBuf::from(pre.split(' ').nth(4).unwrap_or("")))
    }) else {
        skip("no cgroup v2 hierarchy");
        return;
    };
    let offered = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let v1_hugetlb = mi
        .lines()
        .any(|l| l.contains(" - cgroup ") && l.contains("hugetlb"));
    if !offered.split_whitespace().any(|c| c == "hugetlb")
        || v1_hugetlb
        || !Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists()
    {
        skip("hugetlb (2MB pages) is not a v2 controller here");
        return;
    }
    let had_hugetlb = std::fs::read_to_string(root.join("cgroup.subtree_control"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == "hugetlb");
    let test_cgroup = root.join(format!("unionfs-run-test-launcher-{}", std::process::id()));
    std::fs::create_dir(&test_cgroup).unwrap();
    let restore = V2Restore {
        root: root.clone(),
        had_hugetlb,
        test_cgroup: test_cgroup.clone(),
    };
    // The EBUSY the old launcher hit: a populated non-root cgroup.
    let holder = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec sleep 30",
            test_cgroup.display()
        ))
        .spawn()
        .unwrap();
    // Dropped before `restore`, so the test cgroup is empty when removed.
    let holder_guard = KillOnDrop(holder);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(test_cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "holder did not join");
        std::thread::sleep(Duration::from_millis(10));
    }
    // With hugetlb enabled in the root (as the launcher does), the
    // populated child still refuses it for its own children.
    std::fs::write(root.join("cgroup.subtree_control"), "+hugetlb").unwrap();
    let e = std::fs::write(test_cgroup.join("cgroup.subtree_control"), "+hugetlb");
    assert_eq!(
        e.as_ref().err().and_then(std::io::Error::raw_os_error),
        Some(libc::EBUSY),
        "a populated cgroup should refuse +hugetlb: {e:?}"
    );
    // The launcher runs from inside that cgroup, as from a session scope.
    let s = StateDir::new("v2huge");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$0\" --rm --name t-huge --hugetlb 2MB=4M -- sleep 2",
            test_cgroup.display()
        ))
        .arg(bin())
        .env("UNIONFS_RUN_DIR", &s.0)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dir = root.join("unionfs-run/unionfs-run-t-huge");
    let deadline = Instant::now() + Duration::from_secs(10);
    let max = loop {
        if let Ok(v) = std::fs::read_to_string(dir.join("hugetlb.2MB.max")) {
            break v;
        }
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("launcher exited {st}: {err}");
        }
        assert!(
            Instant::now() < deadline,
            "no v2 cgroup at {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(max.trim(), (4u64 << 20).to_string());
    // The limit is written before init joins: wait for it to be there.
    let deadline = Instant::now() + Duration::from_secs(5);
    let procs = loop {
        let p = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if !p.trim().is_empty() || Instant::now() > deadline {
            break p;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
    assert!(
        !procs.trim().is_empty(),
        "the container ran in its v2 cgroup"
    );
    assert!(!dir.exists(), "container cgroup left behind");
    s.assert_clean();
    drop(holder_guard);
    drop(restore);
    assert!(!test_cgroup.exists(), "test cgroup left behind");
}

/// The BPF device program alone (v1 devices of the test process allow
/// everything): a process in a v2 cgroup with it attached may use
/// /dev/null but not open a block device the host itself can open.
#[test]
fn v2_device_program_refuses_devices_off_the_list() {
    if !ready_or_required("the v2 device program test") {
        return;
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(root) = mi.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        post.starts_with("cgroup2 ")
            .then(|| PathBuf::from(pre.split(' ').nth(4).unwrap_or("")))
    }) else {
        skip("no cgroup v2 hierarchy");
        return;
    };
    if !host_can_open_block(7, 0) {
        skip("root on this host cannot open a loop device to compare");
        return;
    }
    let cg = root.join(format!("unionfs-run-test-devprog-{}", std::process::id()));
    std::fs::create_dir(&cg).unwrap();
    let _rm = V2Restore {
        root: root.clone(),
        had_hugetlb: true,
        test_cgroup: cg.clone(),
    };
    unionfs_run::cgroup::devices::attach_v2(&cg).unwrap();
    let node = format!("/var/tmp/unionfs-run-devprog-{}", std::process::id());
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs || exit 9; \
             mknod {node} b 7 0 && echo mknod=ok; \
             head -c 0 {node} 2>&1 && echo open=ok; rm -f {node}; \
             echo x > /dev/null && echo null=ok",
            cg.display()
        ))
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(out.contains("mknod=ok"), "{out}");
    assert!(!out.contains("open=ok"), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.contains("null=ok"), "{out}");
}

/// The command shares the caller's terminal: TIOCSTI would type into the
/// caller's shell (a command run as the caller once the container exits).
/// `script` gives the launcher a terminal of its own to try it on.
#[test]
fn terminal_input_cannot_be_injected() {
    if !ready_or_required("the terminal injection test") {
        return;
    }
    if Command::new("script").arg("--version").output().is_err() {
        skip("no script(1)");
        return;
    }
    let s = StateDir::new("tty");
    let inject = "import fcntl, termios\ntry:\n    fcntl.ioctl(1, termios.TIOCSTI, b'#')\n    print('TIOCSTI=ok')\nexcept OSError as e:\n    print('TIOCSTI=refused', e.errno)";
    let run = |extra: &str| {
        let o = Command::new("script")
            .arg("-qec")
            .arg(format!(
                "{} --rm {extra} -- python3 -c \"{inject}\"",
                bin().display()
            ))
            .arg("/dev/null")
            .env("UNIONFS_RUN_DIR", &s.0)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        stdout(&o)
    };
    let out = run("");
    assert!(
        out.contains(&format!("TIOCSTI=refused {}", libc::EPERM)),
        "{out}"
    );
    // The check is real: unconfined, the same ioctl goes through here
    // (where the kernel still allows TIOCSTI to a process on its tty).
    if std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").is_ok_and(|v| v.trim() == "1") {
        let out = run("--security-opt seccomp=unconfined");
        assert!(out.contains("TIOCSTI=ok"), "{out}");
    }
    s.assert_clean();
}

/// The container's record, as the launcher wrote it.
fn record(s: &StateDir, name: &str) -> Option<serde_json::Value> {
    let text = std::fs::read(s.0.join(name).join("container.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Waits until the container `name` has its init recorded; returns its pid.
fn wait_for_init(s: &StateDir, name: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = record(s, name).and_then(|r| r["init"]["pid"].as_i64()) {
            // And running its command (a child of init).
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if !kids.trim().is_empty() {
                return pid as i32;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not start: {:?}",
            record(s, name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Running (not gone, not a zombie).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|st| st != "Z" && st != "X")
}

fn mounted_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&*dir.to_string_lossy()))
        .collect()
}

/// Issue 14 item 4 (launcher half): a launcher killed with SIGKILL takes
/// its container with it (parent-death signal), and what it leaves —
/// mount, cgroups, state, the --rm upper — is undone by `--cleanup` or by
/// the next run, while a kept upper stays and another running container is
/// not touched.
#[test]
fn killed_launcher_is_cleaned_up_and_others_are_untouched() {
    if !ready() {
        return;
    }
    let s = StateDir::new("killed");
    let spawn = |args: &[&str]| {
        KillOnDrop(
            Command::new(bin())
                .args(args)
                .env("UNIONFS_RUN_DIR", &s.0)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    // Killed: one kept (no --rm), one --rm with a memory cgroup.
    let mut kept = spawn(&[
        "--name",
        "t-kill-keep",
        "--",
        "sh",
        "-c",
        "echo mine > /kept; sleep 30",
    ]);
    let mut gone = spawn(&[
        "--rm",
        "--name",
        "t-kill-rm",
        "--memory",
        "64M",
        "--",
        "sleep",
        "30",
    ]);
    // Not killed: must come through every cleanup untouched.
    let mut other = spawn(&[
        "--rm",
        "--name",
        "t-kill-other",
        "--memory",
        "64M",
        "--",
        "sleep",
        "30",
    ]);
    let init_keep = wait_for_init(&s, "t-kill-keep");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.0.join("t-kill-keep/upper/kept").exists() {
        assert!(Instant::now() < deadline, "t-kill-keep wrote nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let init_rm = wait_for_init(&s, "t-kill-rm");
    let init_other = wait_for_init(&s, "t-kill-other");
    assert!(!cgroup_leftovers("t-kill-rm").is_empty());
    kept.0.kill().unwrap();
    gone.0.kill().unwrap();
    kept.0.wait().unwrap();
    gone.0.wait().unwrap();
    // The containers die with their launcher.
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(init_keep) || running(init_rm) {
        assert!(
            Instant::now() < deadline,
            "the container outlived its launcher"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // What they leave behind: mounts, cgroups, state.
    let m = mounted_under(&s.0);
    assert!(
        m.iter().any(|x| x.contains("t-kill-rm")) && m.iter().any(|x| x.contains("t-kill-keep")),
        "{m:?}"
    );
    let ps = stdout(&s.run(&["ps"]));
    assert!(
        ps.lines()
            .any(|l| l.starts_with("t-kill-rm ") && l.contains("Dead")),
        "{ps}"
    );
    assert!(
        ps.lines()
            .any(|l| l.starts_with("t-kill-other ") && l.contains("Running")),
        "{ps}"
    );

    let o = s.run(&["--cleanup"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 2, "{out}");
    let m = mounted_under(&s.0);
    assert!(
        !m.iter()
            .any(|x| x.contains("t-kill-rm") || x.contains("t-kill-keep")),
        "{m:?}"
    );
    assert!(cgroup_leftovers("t-kill-rm").is_empty());
    assert!(cgroup_leftovers("t-kill-keep").is_empty());
    assert!(!s.0.join("t-kill-rm").exists(), "--rm state and upper stay");
    // The kept upper is kept, with what the container wrote.
    assert_eq!(
        std::fs::read_to_string(s.0.join("t-kill-keep/upper/kept")).unwrap(),
        "mine\n"
    );
    assert!(!s.0.join("t-kill-keep/root").exists());
    let r = record(&s, "t-kill-keep").unwrap();
    assert_eq!(r["exit"], 137);
    // The other container runs on, all of it in place.
    assert!(running(init_other));
    assert!(m.iter().any(|x| x.contains("t-kill-other")), "{m:?}");
    assert!(!cgroup_leftovers("t-kill-other").is_empty());
    assert!(other.0.try_wait().unwrap().is_none());
    // A second cleanup finds nothing to do.
    assert_eq!(stdout(&s.run(&["--cleanup"])), "");

    // Automatic on start: a launcher killed again, then a new run under
    // the same name works, and nothing of the first stays.
    let mut again = spawn(&[
        "--rm",
        "--name",
        "t-kill-rm",
        "--memory",
        "64M",
        "--",
        "sleep",
        "30",
    ]);
    wait_for_init(&s, "t-kill-rm");
    again.0.kill().unwrap();
    again.0.wait().unwrap();
    let o = s.run(&[
        "--rm",
        "--name",
        "t-kill-rm",
        "--memory",
        "64M",
        "--",
        "cat",
        "/proc/self/cgroup",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("t-kill-rm: removed"), "{}", stderr(&o));
    assert!(!s.0.join("t-kill-rm").exists());
    assert!(cgroup_leftovers("t-kill-rm").is_empty());
    assert!(running(init_other), "the other container was touched");

    // The kept one goes with `rm`; the other ends normally.
    let o = s.run(&["rm", "t-kill-keep"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = s.run(&["stop", "-t", "1", "t-kill-other"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(other.0.wait().unwrap().code() == Some(128 + 15));
    s.assert_clean();
    assert!(cgroup_leftovers("t-kill-other").is_empty());
}

/// `ps` lists running and kept containers; `stop` sends SIGTERM, then
/// SIGKILL after `-t`, and the launcher in the other terminal tears down.
#[test]
fn ps_and_stop_for_containers_of_other_terminals() {
    if !ready() {
        return;
    }
    let s = StateDir::new("ps");
    let spawn = |args: &[&str]| {
        KillOnDrop(
            Command::new(bin())
                .args(args)
                .env("UNIONFS_RUN_DIR", &s.0)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    // Ignores SIGTERM: only the SIGKILL after -t ends it.
    let mut stubborn = spawn(&[
        "--name",
        "t-ps-stubborn",
        "--",
        "sh",
        "-c",
        "trap '' TERM; echo x > /made; while :; do sleep 0.1; done",
    ]);
    let mut polite = spawn(&["--name", "t-ps-polite", "--", "sleep", "30"]);
    let init = wait_for_init(&s, "t-ps-stubborn");
    wait_for_init(&s, "t-ps-polite");
    // The trap is set once /made exists.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.0.join("t-ps-stubborn/upper/made").exists() {
        assert!(Instant::now() < deadline, "t-ps-stubborn did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ps = stdout(&s.run(&["ps"]));
    let line = |name: &str| {
        ps.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not in ps:\n{ps}"))
            .to_string()
    };
    let l = line("t-ps-stubborn");
    assert!(
        l.contains("Running") && l.contains(&init.to_string()),
        "{l}"
    );
    assert!(
        l.contains(&s.0.join("t-ps-stubborn/upper").display().to_string()),
        "{l}"
    );
    assert!(line("t-ps-polite").contains("sleep 30"), "{ps}");

    let o = s.run(&["stop", "t-ps-polite"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(polite.0.wait().unwrap().code(), Some(128 + 15));
    let t0 = Instant::now();
    let o = s.run(&["stop", "-t", "1", "t-ps-stubborn"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(t0.elapsed() >= Duration::from_secs(1), "SIGKILL before -t");
    assert_eq!(stubborn.0.wait().unwrap().code(), Some(128 + 9));
    // Both stopped, kept (no --rm), torn down.
    let ps = stdout(&s.run(&["ps"]));
    assert!(
        ps.contains("Exited (143)") && ps.contains("Exited (137)"),
        "{ps}"
    );
    assert!(s.0.join("t-ps-stubborn/upper/made").exists());
    assert!(mounted_under(&s.0).is_empty());
    assert!(cgroup_leftovers("t-ps-stubborn").is_empty());
    // Stopping a stopped one is no error; an unknown one is, in one line.
    let o = s.run(&["stop", "t-ps-polite"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = s.run(&["stop", "t-ps-none"]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    let o = s.run(&["rm", "t-ps-polite", "t-ps-stubborn"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    s.assert_clean();
}

/// `-d`: the name once started, exit 0; the container runs on in the
/// background, its output discarded; an error is still one line, 125.
#[test]
fn detached_container_runs_in_the_background() {
    if !ready() {
        return;
    }
    let s = StateDir::new("detach");
    let t0 = Instant::now();
    let o = s.run(&[
        "-d",
        "--name",
        "t-det",
        "--",
        "sh",
        "-c",
        "echo to-null; echo hi > /x; sleep 30",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "t-det\n");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "-d waited for the container"
    );
    let init = record(&s, "t-det").unwrap()["init"]["pid"]
        .as_i64()
        .unwrap() as i32;
    assert!(running(init));
    let ps = stdout(&s.run(&["ps"]));
    assert!(
        ps.lines().any(|l| l.starts_with("t-det ")
            && l.contains("Running")
            && l.contains(&init.to_string())),
        "{ps}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.0.join("t-det/upper/x").exists() {
        assert!(
            Instant::now() < deadline,
            "the detached container did nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = s.run(&["stop", "t-det"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!running(init));
    assert!(stdout(&s.run(&["ps"])).contains("Exited (143)"));
    assert!(mounted_under(&s.0).is_empty());
    assert!(cgroup_leftovers("t-det").is_empty());
    // Errors before the start still reach the caller.
    let o = s.run(&["-d", "--name", "t-det", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("t-det exists"), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1);
    let o = s.run(&["rm", "t-det"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    s.assert_clean();
}
