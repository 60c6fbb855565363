//! The validated description of one container run.
//!
//! Invariant: a `ContainerSpec` only holds values the launcher can apply
//! (sizes parsed, image directories existing, a command given); parsing is
//! pure apart from checking that image directories exist. Takes no locks.

use std::path::PathBuf;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// Maximum number of tasks.
    pub pids: Option<u64>,
    /// CPU quota in millionths of a CPU (0.5 CPU = 500_000).
    pub cpu_micros: Option<u64>,
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
    /// The command and its arguments.
    pub argv: Vec<String>,
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
    /// The command.
    pub argv: Vec<String>,
}

impl RawSpec {
    /// Validates everything; `default_name` is used without `--name`.
    pub fn validate(self, default_name: String) -> Result<ContainerSpec, SpecError> {
        if self.argv.is_empty() {
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
        let env = self
            .env
            .into_iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(SpecError::Env(e)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let user = self
            .user
            .map(|u| parse_user(&u).ok_or(SpecError::User(u)))
            .transpose()?;
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
            },
            hostname,
            net,
            env,
            workdir: self.workdir,
            user,
            name,
            argv: self.argv,
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
    }
}
