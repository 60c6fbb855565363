//! The validated description of one container run.
//!
//! Invariant: a `ContainerSpec` only holds values the launcher can apply
//! (sizes parsed, image directories existing, a command given); parsing is
//! pure apart from checking that image directories exist. Takes no locks.

use std::path::PathBuf;

use crate::capabilities::{self, Capability};

/// A launcher configuration error (exit status 125).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// `--memory` that does not parse.
    #[error("bad --memory value '{0}' (use e.g. 256M, 1G, 1048576)")]
    Memory(String),
    /// `--pids` that does not parse.
    #[error("bad --pids value '{0}' (a positive number)")]
    Pids(String),
    /// `--cpus` that does not parse.
    #[error("bad --cpus value '{0}' (a positive number of CPUs, e.g. 0.5)")]
    Cpus(String),
    /// `-e` without `=`.
    #[error("bad -e value '{0}' (use KEY=VALUE)")]
    Env(String),
    /// `--user` that does not parse.
    #[error("bad --user value '{0}' (use UID or UID:GID)")]
    User(String),
    /// `--net` value.
    #[error("bad --net value '{0}' (none or host)")]
    Net(String),
    /// Hostname too long or empty.
    #[error("bad --hostname '{0}' (1 to 64 characters)")]
    Hostname(String),
    /// Container name with odd characters.
    #[error("bad --name '{0}' (letters, digits, '-', '_', '.')")]
    Name(String),
    /// An image directory is missing.
    #[error("image directory {0}: no such directory")]
    Image(String),
    /// No command.
    #[error("no command given (usage: unionfs-run [OPTIONS] -- CMD [ARGS...])")]
    NoCommand,
    /// `--cap-add` / `--cap-drop` with an unknown capability.
    #[error("bad capability '{0}' (a name such as NET_ADMIN or CAP_NET_ADMIN, or ALL)")]
    Cap(String),
    /// `--security-opt` value.
    #[error("bad --security-opt '{0}' (seccomp=unconfined or no-new-privileges[=true|false])")]
    SecurityOpt(String),
    /// `--hugetlb` value.
    #[error("bad --hugetlb '{0}' (use PAGESIZE=LIMIT, e.g. 2MB=64M)")]
    Hugetlb(String),
}

/// Network setup of the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// A new network namespace with only `lo`, up.
    None,
    /// The host's network namespace.
    Host,
}

/// Resource limits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// Maximum number of tasks.
    pub pids: Option<u64>,
    /// CPU quota in millionths of a CPU (0.5 CPU = 500_000).
    pub cpu_micros: Option<u64>,
    /// A hugetlb limit: page size as the kernel names it ("2MB") and bytes.
    pub hugetlb: Option<(String, u64)>,
}

/// How the container is confined (docs/SECURITY.md): docker's defaults
/// unless changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// `--privileged`: every capability, no seccomp filter, no masked or
    /// read-only paths, every device.
    pub privileged: bool,
    /// The capabilities kept (sorted by number).
    pub caps: Vec<Capability>,
    /// Load the seccomp filter.
    pub seccomp: bool,
    /// Set no_new_privs.
    pub no_new_privs: bool,
}

impl Default for Security {
    fn default() -> Security {
        Security {
            privileged: false,
            caps: capabilities::sorted(capabilities::DEFAULT),
            seccomp: true,
            no_new_privs: false,
        }
    }
}

impl Security {
    /// Whether /proc and /sys paths are masked and made read-only.
    pub fn masks(&self) -> bool {
        !self.privileged
    }

    /// Whether device nodes are limited to the allow-list (devices cgroup,
    /// nodev mounts).
    pub fn devices(&self) -> bool {
        !self.privileged
    }
}

/// One container run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Image branches, topmost first; empty = the host's `/`.
    pub layers: Vec<PathBuf>,
    /// The writable branch; `None` = a fresh one.
    pub upper: Option<PathBuf>,
    /// Remove the upper afterwards.
    pub remove: bool,
    /// Limits.
    pub limits: Limits,
    /// Hostname inside.
    pub hostname: String,
    /// Network.
    pub net: Net,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside.
    pub workdir: Option<PathBuf>,
    /// uid and gid to run as.
    pub user: Option<(u32, u32)>,
    /// Name (cgroup and state directory).
    pub name: String,
    /// Confinement.
    pub security: Security,
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// The image config's `User` when it is not numeric (resolved in the
    /// container root's /etc/passwd once it is mounted); `user` wins.
    pub image_user: Option<String>,
    /// The image config's `architecture`, checked against the host.
    pub image_arch: Option<String>,
}

/// Parses `256M`, `1G`, `1048576`, `512k` (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_lowercase() {
                'b' => 1,
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1u64 << 40,
                _ => return None,
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().ok()?;
    let v = n.checked_mul(mult)?;
    (v > 0).then_some(v)
}

/// Parses a CPU count (`0.5`, `2`) into millionths of a CPU.
pub fn parse_cpus(s: &str) -> Option<u64> {
    let v: f64 = s.trim().parse().ok()?;
    if !(v.is_finite() && v > 0.0 && v <= 1024.0) {
        return None;
    }
    let micros = (v * 1_000_000.0).round() as u64;
    (micros >= 1000).then_some(micros)
}

/// Parses `UID` or `UID:GID` (gid defaults to uid).
pub fn parse_user(s: &str) -> Option<(u32, u32)> {
    match s.split_once(':') {
        Some((u, g)) => Some((u.parse().ok()?, g.parse().ok()?)),
        None => {
            let u = s.parse().ok()?;
            Some((u, u))
        }
    }
}

/// Raw values from the command line.
#[derive(Debug, Clone, Default)]
pub struct RawSpec {
    /// `--image`, colon-separated lists, in order.
    pub image: Vec<String>,
    /// `--upper`.
    pub upper: Option<PathBuf>,
    /// `--rm`.
    pub remove: bool,
    /// `--memory`.
    pub memory: Option<String>,
    /// `--pids`.
    pub pids: Option<String>,
    /// `--cpus`.
    pub cpus: Option<String>,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--net`.
    pub net: Option<String>,
    /// `-e`.
    pub env: Vec<String>,
    /// `--workdir`.
    pub workdir: Option<PathBuf>,
    /// `--user`.
    pub user: Option<String>,
    /// `--name`.
    pub name: Option<String>,
    /// `--privileged`.
    pub privileged: bool,
    /// `--cap-add`.
    pub cap_add: Vec<String>,
    /// `--cap-drop`.
    pub cap_drop: Vec<String>,
    /// `--security-opt`.
    pub security_opt: Vec<String>,
    /// `--hugetlb` (hidden).
    pub hugetlb: Option<String>,
    /// The command.
    pub argv: Vec<String>,
    /// Settings from an image config (`--image oci:...`), below the command line's.
    pub image_config: Option<crate::store::config::Settings>,
}

/// Parses `2MB=64M`: a page size as the kernel's hugetlb files name it,
/// and a limit.
pub fn parse_hugetlb(s: &str) -> Option<(String, u64)> {
    let (page, limit) = s.split_once('=')?;
    let digits = page.trim_end_matches('B').trim_end_matches(['K', 'M', 'G']);
    let unit = page.strip_prefix(digits)?;
    if digits.is_empty()
        || !digits.chars().all(|c| c.is_ascii_digit())
        || !["KB", "MB", "GB"].contains(&unit)
    {
        return None;
    }
    Some((page.to_string(), parse_size(limit)?))
}

/// Applies `--privileged`, `--cap-add`, `--cap-drop`, `--security-opt`.
pub fn parse_security(
    privileged: bool,
    add: &[String],
    drop: &[String],
    opts: &[String],
) -> Result<Security, SpecError> {
    let mut sec = Security {
        caps: capabilities::resolve(add, drop).map_err(SpecError::Cap)?,
        ..Security::default()
    };
    for o in opts {
        let (k, v) = o
            .split_once(['=', ':'])
            .map_or((o.as_str(), None), |(k, v)| (k, Some(v)));
        match (k, v) {
            ("seccomp", Some("unconfined")) => sec.seccomp = false,
            ("no-new-privileges", None | Some("true")) => sec.no_new_privs = true,
            ("no-new-privileges", Some("false")) => sec.no_new_privs = false,
            _ => return Err(SpecError::SecurityOpt(o.clone())),
        }
    }
    if privileged {
        sec.privileged = true;
        sec.caps = capabilities::all();
        sec.seccomp = false;
    }
    Ok(sec)
}

impl RawSpec {
    /// Validates everything; `default_name` is used without `--name`.
    pub fn validate(self, default_name: String) -> Result<ContainerSpec, SpecError> {
        let settings = self.image_config.clone().unwrap_or_default();
        let argv = settings.argv(&self.argv);
        if argv.is_empty() {
            return Err(SpecError::NoCommand);
        }
        let memory = self
            .memory
            .map(|m| parse_size(&m).ok_or(SpecError::Memory(m)))
            .transpose()?;
        let pids = self
            .pids
            .map(|p| match p.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(SpecError::Pids(p)),
            })
            .transpose()?;
        let cpu_micros = self
            .cpus
            .map(|c| parse_cpus(&c).ok_or(SpecError::Cpus(c)))
            .transpose()?;
        let net = match self.net.as_deref() {
            None | Some("none") => Net::None,
            Some("host") => Net::Host,
            Some(o) => return Err(SpecError::Net(o.to_string())),
        };
        let env = settings
            .env
            .iter()
            .cloned()
            .chain(self.env)
            .map(|e| match e.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(SpecError::Env(e)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let security = parse_security(
            self.privileged,
            &self.cap_add,
            &self.cap_drop,
            &self.security_opt,
        )?;
        let hugetlb = self
            .hugetlb
            .map(|h| parse_hugetlb(&h).ok_or(SpecError::Hugetlb(h)))
            .transpose()?;
        let mut user = self
            .user
            .map(|u| parse_user(&u).ok_or(SpecError::User(u)))
            .transpose()?;
        let mut image_user = None;
        if user.is_none() {
            if let Some(u) = &settings.user {
                // Numbers need no lookup; names wait for the mounted root.
                // (a uid alone takes the gid of its passwd entry, so it waits too).
                match u.split_once(':') {
                    Some((a, b)) if a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok() => {
                        user = parse_user(u);
                    }
                    _ => image_user = Some(u.clone()),
                }
            }
        }
        let name = self.name.unwrap_or(default_name);
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || name.starts_with('.')
        {
            return Err(SpecError::Name(name));
        }
        let hostname = self.hostname.unwrap_or_else(|| name.clone());
        if hostname.is_empty() || hostname.len() > 64 {
            return Err(SpecError::Hostname(hostname));
        }
        let mut layers = Vec::new();
        for list in &self.image {
            for l in list.split(':').filter(|l| !l.is_empty()) {
                let p = PathBuf::from(l);
                if !p.is_dir() {
                    return Err(SpecError::Image(l.to_string()));
                }
                layers.push(p);
            }
        }
        Ok(ContainerSpec {
            layers,
            upper: self.upper,
            remove: self.remove,
            limits: Limits {
                memory,
                pids,
                cpu_micros,
                hugetlb,
            },
            hostname,
            net,
            env,
            workdir: self.workdir.or_else(|| settings.workdir.map(PathBuf::from)),
            user,
            name,
            security,
            argv,
            image_user,
            image_arch: self
                .image_config
                .as_ref()
                .map(|s| s.architecture.clone())
                .filter(|a| !a.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Some(256 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        for bad in ["abc", "", "0", "12Q", "-1M", "M"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn cpus_and_users() {
        assert_eq!(parse_cpus("0.5"), Some(500_000));
        assert_eq!(parse_cpus("2"), Some(2_000_000));
        assert_eq!(parse_cpus("0"), None);
        assert_eq!(parse_cpus("x"), None);
        assert_eq!(parse_user("1000"), Some((1000, 1000)));
        assert_eq!(parse_user("1000:50"), Some((1000, 50)));
        assert_eq!(parse_user("me"), None);
    }

    fn raw(argv: &[&str]) -> RawSpec {
        RawSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..RawSpec::default()
        }
    }

    #[test]
    fn validation_errors_name_the_value() {
        let mut r = raw(&["true"]);
        r.memory = Some("abc".into());
        assert_eq!(r.validate("c".into()), Err(SpecError::Memory("abc".into())));
        assert_eq!(raw(&[]).validate("c".into()), Err(SpecError::NoCommand));
        let mut r = raw(&["true"]);
        r.image = vec!["/nonexistent-image-dir".into()];
        assert!(matches!(r.validate("c".into()), Err(SpecError::Image(_))));
        let mut r = raw(&["true"]);
        r.env = vec!["NOEQUALS".into()];
        assert!(matches!(r.validate("c".into()), Err(SpecError::Env(_))));
        let mut r = raw(&["true"]);
        r.name = Some("../x".into());
        assert!(matches!(r.validate("c".into()), Err(SpecError::Name(_))));
    }

    #[test]
    fn defaults() {
        let s = raw(&["sh", "-c", "true"]).validate("box1".into());
        let Ok(s) = s else { unreachable!("{s:?}") };
        assert_eq!(s.hostname, "box1");
        assert_eq!(s.net, Net::None);
        assert!(s.layers.is_empty());
        assert_eq!(s.limits, Limits::default());
        assert_eq!(s.security, Security::default());
        assert!(s.security.seccomp && !s.security.no_new_privs && s.security.masks());
        assert_eq!(s.security.caps.len(), 14);
    }

    #[test]
    fn security_options() {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let sec = parse_security(false, &[], &[], &v(&["seccomp=unconfined"]));
        assert!(matches!(sec, Ok(s) if !s.seccomp && !s.privileged && s.masks()));
        for nnp in [
            "no-new-privileges",
            "no-new-privileges=true",
            "no-new-privileges:true",
        ] {
            let sec = parse_security(false, &[], &[], &v(&[nnp]));
            assert!(matches!(sec, Ok(s) if s.no_new_privs && s.seccomp), "{nnp}");
        }
        for bad in [
            "seccomp=/etc/profile.json",
            "apparmor=x",
            "no-new-privileges=maybe",
            "",
        ] {
            assert_eq!(
                parse_security(false, &[], &[], &v(&[bad])),
                Err(SpecError::SecurityOpt(bad.into()))
            );
        }
        let p = parse_security(true, &[], &v(&["ALL"]), &[]);
        assert!(
            matches!(p, Ok(s) if s.privileged && !s.seccomp && !s.masks() && !s.devices()
            && s.caps == capabilities::all())
        );
        assert_eq!(
            parse_security(false, &v(&["SYS_BOGUS"]), &[], &[]),
            Err(SpecError::Cap("SYS_BOGUS".into()))
        );
        let mut r = raw(&["true"]);
        r.cap_drop = vec!["nope".into()];
        assert_eq!(r.validate("c".into()), Err(SpecError::Cap("nope".into())));
    }

    #[test]
    fn image_config_is_under_the_command_line() {
        let settings = crate::store::config::Settings {
            env: vec!["A=image".into(), "B=image".into()],
            entrypoint: vec!["/ep".into()],
            cmd: vec!["default".into()],
            workdir: Some("/w".into()),
            user: Some("app".into()),
            architecture: "amd64".into(),
        };
        let mut r = raw(&[]);
        r.image_config = Some(settings.clone());
        let Ok(s) = r.validate("c".into()) else {
            unreachable!()
        };
        assert_eq!(s.argv, vec!["/ep", "default"]);
        assert_eq!(
            s.env,
            vec![("A".into(), "image".into()), ("B".into(), "image".into())]
        );
        assert_eq!(s.workdir, Some(PathBuf::from("/w")));
        assert_eq!((s.user, s.image_user.as_deref()), (None, Some("app")));
        assert_eq!(s.image_arch.as_deref(), Some("amd64"));
        let mut r = raw(&["x"]);
        r.image_config = Some(crate::store::config::Settings {
            user: Some("5:6".into()),
            ..settings.clone()
        });
        r.env = vec!["B=cli".into()];
        r.workdir = Some("/cli".into());
        let Ok(s) = r.validate("c".into()) else {
            unreachable!()
        };
        assert_eq!(s.argv, vec!["/ep", "x"]);
        // command_env lets the later (command line) value win.
        assert_eq!(s.env.last(), Some(&("B".into(), "cli".into())));
        assert_eq!(s.workdir, Some(PathBuf::from("/cli")));
        assert_eq!((s.user, s.image_user), (Some((5, 6)), None));
        let mut r = raw(&[]);
        r.user = Some("7".into());
        r.image_config = Some(settings);
        let Ok(s) = r.validate("c".into()) else {
            unreachable!()
        };
        assert_eq!((s.user, s.image_user), (Some((7, 7)), None));
        let mut r = raw(&[]);
        r.image_config = Some(crate::store::config::Settings::default());
        assert_eq!(r.validate("c".into()), Err(SpecError::NoCommand));
    }

    #[test]
    fn hugetlb_values() {
        assert_eq!(parse_hugetlb("2MB=64M"), Some(("2MB".into(), 64 << 20)));
        assert_eq!(parse_hugetlb("1GB=2G"), Some(("1GB".into(), 2 << 30)));
        for bad in ["2MB", "2M=1M", "MB=1M", "2MB=x", "x2MB=1M", "=1M"] {
            assert_eq!(parse_hugetlb(bad), None, "{bad}");
        }
    }
}
