//! The container's capability sets: docker's default 14, changed by
//! `--cap-add` / `--cap-drop`, all of them with `--privileged`.
//!
//! Invariant: `resolve` is the only place that decides which capabilities a
//! container keeps, and `apply` leaves the bounding, inheritable, permitted
//! and effective sets equal to exactly that set and the ambient set empty,
//! so nothing the command execs (even as root, even set-uid) can get a
//! capability back. Pure apart from `apply`, which goes through `Syscall`.
//! Takes no locks.

use std::str::FromStr;

pub use caps::Capability;

use crate::sys::{SysResult, Syscall};

/// docker's default set (podman's is these less AUDIT_WRITE, MKNOD and NET_RAW):
/// what `docker run` without options grants root inside.
pub const DEFAULT: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// One `--cap-add` / `--cap-drop` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapName {
    /// `ALL`.
    All,
    /// One capability.
    One(Capability),
}

/// Parses `ALL`, `CAP_NET_ADMIN`, `net_admin`, `Net_Admin`...
pub fn parse(name: &str) -> Option<CapName> {
    let n = name.trim();
    if n.eq_ignore_ascii_case("all") {
        return Some(CapName::All);
    }
    if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Capability::from_str(&caps::to_canonical(n))
        .ok()
        .map(CapName::One)
}

/// Every capability this launcher knows, sorted by number.
pub fn all() -> Vec<Capability> {
    sorted(caps::all())
}

/// A set as a vector sorted by capability number, without duplicates.
pub fn sorted(set: impl IntoIterator<Item = Capability>) -> Vec<Capability> {
    let mut v: Vec<Capability> = set.into_iter().collect();
    v.sort_by_key(|c| c.index());
    v.dedup();
    v
}

/// The kept set, as docker computes it: start from the default (all with
/// `--cap-add ALL`), remove the drops (everything with `--cap-drop ALL`),
/// then add the adds. Unknown names are returned as the error.
pub fn resolve(add: &[String], drop: &[String]) -> Result<Vec<Capability>, String> {
    let parse_all = |names: &[String]| -> Result<Vec<CapName>, String> {
        names
            .iter()
            .map(|n| parse(n).ok_or_else(|| n.clone()))
            .collect()
    };
    let add = parse_all(add)?;
    let drop = parse_all(drop)?;
    let mut keep: Vec<Capability> = if add.contains(&CapName::All) {
        all()
    } else {
        DEFAULT.to_vec()
    };
    if drop.contains(&CapName::All) {
        keep.clear();
    } else {
        keep.retain(|c| !drop.contains(&CapName::One(*c)));
    }
    for a in add {
        if let CapName::One(c) = a {
            keep.push(c);
        }
    }
    Ok(sorted(keep))
}

/// The `CapBnd:` mask of /proc/self/status for a set.
pub fn mask(set: &[Capability]) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

/// Reduces this process's sets to `keep`: bounding first (needs
/// CAP_SETPCAP, which is still held), then inheritable, effective and
/// permitted in one step, then ambient cleared.
pub fn apply(sys: &dyn Syscall, keep: &[Capability]) -> SysResult<()> {
    for c in all() {
        if !keep.contains(&c) {
            sys.drop_bounding(c)?;
        }
    }
    sys.set_caps(keep)?;
    sys.clear_ambient()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, Recorder};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn names_with_or_without_prefix_any_case() {
        for n in ["CAP_NET_ADMIN", "net_admin", "Net_Admin", "cap_net_admin"] {
            assert_eq!(
                parse(n),
                Some(CapName::One(Capability::CAP_NET_ADMIN)),
                "{n}"
            );
        }
        assert_eq!(parse("all"), Some(CapName::All));
        assert_eq!(parse("ALL"), Some(CapName::All));
        for bad in ["", "NET ADMIN", "CAP_NOPE", "cap_", "../x"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn default_is_dockers_fourteen() {
        let d = resolve(&[], &[]).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(d.len(), 14);
        // docker's CapBnd for a default container.
        assert_eq!(mask(&d), 0xa804_25fb);
        assert!(!d.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!d.contains(&Capability::CAP_SYS_PTRACE));
        assert!(!d.contains(&Capability::CAP_NET_ADMIN));
    }

    #[test]
    fn add_and_drop_follow_docker() {
        let r = |a: &[&str], d: &[&str]| resolve(&s(a), &s(d));
        let k = r(&["sys_admin"], &["MKNOD", "cap_net_raw"]).unwrap_or_default();
        assert!(k.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!k.contains(&Capability::CAP_MKNOD));
        assert!(!k.contains(&Capability::CAP_NET_RAW));
        assert_eq!(k.len(), 13);
        assert_eq!(
            r(&["chown"], &["ALL"]),
            Ok(vec![Capability::CAP_CHOWN]),
            "drop ALL then add"
        );
        assert_eq!(r(&["ALL"], &[]), Ok(all()));
        let most = r(&["all"], &["sys_admin"]).unwrap_or_default();
        assert_eq!(most.len(), all().len() - 1);
        assert_eq!(r(&["CAP_BOGUS"], &[]), Err("CAP_BOGUS".to_string()));
        assert_eq!(r(&[], &["x y"]), Err("x y".to_string()));
    }

    #[test]
    fn apply_drops_the_bounding_set_then_sets_the_rest() {
        let rec = Recorder::default();
        apply(&rec, &DEFAULT).unwrap_or_else(|e| unreachable!("{e}"));
        let calls = rec.calls.into_inner();
        let n = calls.len();
        assert_eq!(n, all().len() - DEFAULT.len() + 2);
        assert!(calls[..n - 2]
            .iter()
            .all(|c| matches!(c, Call::DropBounding(c) if !DEFAULT.contains(c))));
        assert!(calls.contains(&Call::DropBounding(Capability::CAP_SYS_ADMIN)));
        assert_eq!(calls[n - 2], Call::SetCaps(DEFAULT.to_vec()));
        assert_eq!(calls[n - 1], Call::ClearAmbient);
    }
}
