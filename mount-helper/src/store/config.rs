//! What an image config asks of a run: environment, entrypoint and
//! command, working directory, user, architecture; and how the command line
//! combines with it (as `docker run` does).
//!
//! Invariant: pure functions over parsed values, except `lookup_user`,
//! which only reads the container root's /etc/passwd and /etc/group through
//! `openat2(RESOLVE_IN_ROOT)`. Takes no locks.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

/// The run settings an image config carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `Env`: `KEY=VALUE` strings.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir` (empty: none).
    pub workdir: Option<String>,
    /// `User` (empty: none).
    pub user: Option<String>,
    /// `architecture` (Go names: amd64, arm64, ...).
    pub architecture: String,
}

impl Settings {
    /// Reads the settings from an image config (JSON).
    pub fn from_json(v: &serde_json::Value) -> Result<Settings, String> {
        let strings = |key: &str| -> Result<Vec<String>, String> {
            match v.get("config").and_then(|c| c.get(key)) {
                None | Some(serde_json::Value::Null) => Ok(Vec::new()),
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .map(String::from)
                            .ok_or_else(|| format!("config {key}: not a list of strings"))
                    })
                    .collect(),
                Some(_) => Err(format!("config {key}: not a list of strings")),
            }
        };
        let string = |key: &str| {
            v.get("config")
                .and_then(|c| c.get(key))
                .and_then(|s| s.as_str())
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        Ok(Settings {
            env: strings("Env")?,
            entrypoint: strings("Entrypoint")?,
            cmd: strings("Cmd")?,
            workdir: string("WorkingDir"),
            user: string("User"),
            architecture: v
                .get("architecture")
                .and_then(|a| a.as_str())
                .unwrap_or("")
                .to_string(),
        })
    }

    /// The command to run: the entrypoint, then the command line's
    /// arguments, or the image's `Cmd` when there are none.
    pub fn argv(&self, cli: &[String]) -> Vec<String> {
        let tail = if cli.is_empty() { &self.cmd } else { cli };
        self.entrypoint.iter().chain(tail).cloned().collect()
    }
}

/// The ELF machine, class (64-bit?) and byte order (big-endian?) of an
/// OCI architecture name.
pub fn arch_machine(arch: &str) -> Option<(u16, bool, bool)> {
    Some(match arch {
        "amd64" => (62, true, false),
        "386" => (3, false, false),
        "arm64" => (183, true, false),
        "arm" => (40, false, false),
        "ppc64le" => (21, true, false),
        "ppc64" => (21, true, true),
        "s390x" => (22, true, true),
        "riscv64" => (243, true, false),
        "loong64" => (258, true, false),
        "mips64le" => (8, true, false),
        "mipsle" => (8, false, false),
        "mips64" => (8, true, true),
        "mips" => (8, false, true),
        _ => return None,
    })
}

/// An ELF header of an executable for `arch`, for binfmt_misc matching.
pub fn elf_header(machine: u16, is64: bool, big: bool) -> Vec<u8> {
    let mut h = vec![
        0x7f,
        b'E',
        b'L',
        b'F',
        if is64 { 2 } else { 1 },
        if big { 2 } else { 1 },
        1,
    ];
    h.resize(16, 0);
    let two = |v: u16| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    h.extend_from_slice(&two(2));
    h.extend_from_slice(&two(machine));
    h.resize(64, 0);
    h
}

/// Checks the image's architecture against the host (and binfmt_misc
/// handlers); the error is one line for the user.
pub fn check_architecture(arch: &str, binfmt_dir: &Path) -> Result<(), String> {
    let Some((m, is64, big)) = arch_machine(arch) else {
        return Ok(());
    };
    let host = crate::image::host_machine();
    let head = elf_header(m, is64, big);
    if m == host || crate::image::binfmt_handles(binfmt_dir, &head) {
        return Ok(());
    }
    let name = crate::image::machine_name(m);
    Err(format!(
        "the image is for {name} ({arch}) but this host is {}, and no binfmt_misc handler is registered for {name} binaries; \
         enable emulation with: apt-get install qemu-user-static binfmt-support (and mount binfmt_misc at /proc/sys/fs/binfmt_misc)",
        crate::image::machine_name(host)
    ))
}

fn read_in_root(root: &Path, rel: &str) -> Option<String> {
    let rootfd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = nix::fcntl::openat2(rootfd.as_fd(), rel, how).ok()?;
    let mut s = String::new();
    std::fs::File::from(fd)
        .take(16 << 20)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// Resolves `USER[:GROUP]` (names or numbers) against passwd and group
/// file contents: a user name gives its uid and primary gid; a uid alone
/// takes the gid of its passwd entry, else 0.
pub fn parse_image_user(spec: &str, passwd: &str, group: &str) -> Result<(u32, u32), String> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entries = |text: &str| -> Vec<(String, u32, Option<u32>)> {
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                let id = f.get(2)?.parse().ok()?;
                Some((
                    f.first()?.to_string(),
                    id,
                    f.get(3).and_then(|g| g.parse().ok()),
                ))
            })
            .collect()
    };
    let users = entries(passwd);
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => (uid, users.iter().find(|e| e.1 == uid).and_then(|e| e.2)),
        Err(_) => {
            let e = users
                .iter()
                .find(|e| e.0 == u)
                .ok_or_else(|| format!("image user '{u}' is not in the image's /etc/passwd"))?;
            (e.1, e.2)
        }
    };
    let gid = match g {
        None => primary.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => entries(group)
                .iter()
                .find(|e| e.0 == g)
                .map(|e| e.1)
                .ok_or_else(|| format!("image group '{g}' is not in the image's /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

/// Resolves the image's `User` inside the container root `root`.
pub fn lookup_user(root: &Path, spec: &str) -> Result<(u32, u32), String> {
    let passwd = read_in_root(root, "etc/passwd").unwrap_or_default();
    let group = read_in_root(root, "etc/group").unwrap_or_default();
    parse_image_user(spec, &passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn config_settings_and_argv() {
        let v: serde_json::Value = ok(serde_json::from_str(
            r#"{"architecture":"arm64","os":"linux","config":{"Env":["A=1","PATH=/x"],
                "Entrypoint":["/bin/ep","-v"],"Cmd":["default"],"WorkingDir":"/w","User":"app"},
                "rootfs":{"type":"layers","diff_ids":[]}}"#,
        ));
        let s = ok(Settings::from_json(&v));
        assert_eq!(s.env, vec!["A=1", "PATH=/x"]);
        assert_eq!(s.workdir.as_deref(), Some("/w"));
        assert_eq!(s.user.as_deref(), Some("app"));
        assert_eq!(s.architecture, "arm64");
        assert_eq!(s.argv(&[]), vec!["/bin/ep", "-v", "default"]);
        assert_eq!(s.argv(&["x".into()]), vec!["/bin/ep", "-v", "x"]);
        let no_ep = Settings {
            cmd: vec!["sh".into()],
            ..Settings::default()
        };
        assert_eq!(no_ep.argv(&[]), vec!["sh"]);
        assert_eq!(no_ep.argv(&["ls".into()]), vec!["ls"]);
        let empty: serde_json::Value =
            ok(serde_json::from_str(r#"{"config":{"Cmd":null,"User":""}}"#));
        assert_eq!(ok(Settings::from_json(&empty)), Settings::default());
        let bad: serde_json::Value = ok(serde_json::from_str(r#"{"config":{"Cmd":"sh"}}"#));
        assert!(Settings::from_json(&bad).is_err());
    }

    #[test]
    fn users_resolve_by_name_and_number() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\napp:x:1001:\n";
        assert_eq!(parse_image_user("app", passwd, group), Ok((1000, 1001)));
        assert_eq!(parse_image_user("app:staff", passwd, group), Ok((1000, 50)));
        assert_eq!(parse_image_user("1000", passwd, group), Ok((1000, 1001)));
        assert_eq!(parse_image_user("4242", passwd, group), Ok((4242, 0)));
        assert_eq!(parse_image_user("4242:7", passwd, group), Ok((4242, 7)));
        assert!(parse_image_user("nobody", passwd, group).is_err_and(|e| e.contains("nobody")));
        assert!(parse_image_user("app:nogroup", passwd, group).is_err());
    }

    #[test]
    fn architectures() {
        let none = Path::new("/nonexistent-binfmt");
        let host = match crate::image::host_machine() {
            183 => "arm64",
            _ => "amd64",
        };
        assert_eq!(check_architecture(host, none), Ok(()));
        let foreign = if host == "arm64" { "amd64" } else { "arm64" };
        let e = check_architecture(foreign, none).err().unwrap_or_default();
        assert!(e.contains(foreign) && e.contains("qemu-user-static"), "{e}");
        // The qemu-aarch64 entry as qemu-user-static registers it matches our header.
        let entry = "enabled\noffset 0\nmagic 7f454c460201010000000000000000000200b700\n\
                     mask ffffffffffffff00fffffffffffffffffeffffff\n";
        assert!(crate::image::binfmt_matches(
            entry,
            &elf_header(183, true, false)
        ));
    }
}
